"""MONAI dictionary transforms: preprocessing (paper §4.1) and loading for the model.

The preprocessing chain, one module per step: :mod:`~pddpm_monai.transforms.sitk_convert`
(array/SimpleITK/MetaTensor conversion and the record), :mod:`~pddpm_monai.transforms.spatial`
(1 mm resampling, crop to the brain), :mod:`~pddpm_monai.transforms.skull_strip` (HD-BET),
:mod:`~pddpm_monai.transforms.registration` (affine to the atlas of
:mod:`~pddpm_monai.transforms.atlas`), :mod:`~pddpm_monai.transforms.bias` (N4),
:mod:`~pddpm_monai.transforms.chain` (the ``Compose``, settings in
:mod:`~pddpm_monai.transforms.config`) and :mod:`~pddpm_monai.transforms.native` (back to the
native scan). Loading onto the model grid: :mod:`~pddpm_monai.transforms.loading`; single-scan
inference: :mod:`~pddpm_monai.transforms.inference`, :mod:`~pddpm_monai.transforms.scan_io`.
"""
