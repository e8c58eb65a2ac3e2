"""A seeded, offline synthetic brain MRI cohort (IXI/BraTS21/MSLUB stand-ins) built from nilearn's MNI152 maps.

Public API:

- :func:`make_synthetic_raw`: raw dataset layouts (what the preprocessing adapters read).
- :func:`make_synthetic_root`: a preprocessed data root (DESIGN.md layout) with split CSVs.
- :func:`synthetic_atlas`: the cohort's T2-like atlas template and mask.
- :class:`SynthConfig`: every default of the generator.
"""

from pddpm_monai.data.synthetic.cohort import (
    brats_id,
    ixi_id,
    make_synthetic_raw,
    make_synthetic_root,
    mslub_id,
    synthetic_atlas,
    write_root_splits,
)
from pddpm_monai.data.synthetic.config import SynthConfig

__all__ = [
    "SynthConfig",
    "brats_id",
    "ixi_id",
    "make_synthetic_raw",
    "make_synthetic_root",
    "mslub_id",
    "synthetic_atlas",
    "write_root_splits",
]
