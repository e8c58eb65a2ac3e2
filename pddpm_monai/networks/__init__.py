"""Networks: the diffusion UNet and the baseline networks."""
