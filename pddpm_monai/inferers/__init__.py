"""MONAI inferers: patched denoising, plain DDPM and autoencoder reconstruction."""

from pddpm_monai.inferers.autoencoder import AutoEncoderInferer, autoencoder_reconstruction, slice_context  # noqa: F401
from pddpm_monai.inferers.patched import PatchedDiffusionInferer, patched_reconstruction  # noqa: F401
from pddpm_monai.inferers.reconstruction import (  # noqa: F401
    DiffusionReconstructionInferer,
    SliceDiffusionInferer,
    diffusion_reconstruction,
    reconstruct_volume,
)
