"""pddpm-monai: patched diffusion models (pDDPM, Behrendt et al., MIDL 2023) for unsupervised
anomaly detection in brain MRI, built on MONAI."""

__version__ = "0.1.0"
