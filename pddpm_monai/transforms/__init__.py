"""MONAI dictionary transforms: preprocessing (paper §4.1) and loading for the model."""
