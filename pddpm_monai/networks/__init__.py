"""Networks: the diffusion UNet and the baseline networks."""

from pddpm_monai.networks.autoencoders import DAENetConfig, DenseVAENetConfig  # noqa: F401
from pddpm_monai.networks.diffusion_unet import DiffusionUNet  # noqa: F401
from pddpm_monai.networks.fanogan import Critic, Encoder, FAnoGANNetConfig, Generator  # noqa: F401
