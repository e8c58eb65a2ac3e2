"""Networks: the diffusion UNet and the baseline networks."""

from pddpm_monai.networks.diffusion_unet import DiffusionUNet  # noqa: F401
