"""MONAI inferers: patched denoising, plain DDPM and autoencoder reconstruction."""
