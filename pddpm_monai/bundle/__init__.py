"""What the MONAI bundle ``bundles/pddpm_brain_uad`` wires beyond training, and its override checker.

- :mod:`~pddpm_monai.bundle.components`: inference items, the checkpoint's ``network_def`` and
  inferer, the threshold reader, preprocessing and evaluation runs;
- :mod:`~pddpm_monai.bundle.check`: ``python -m pddpm_monai.bundle.check run training ...``:
  ``monai.bundle run`` that refuses unknown override keys and turns errors into one line.

Training wires :mod:`pddpm_monai.engines` directly (the objects ``pddpm train`` builds).
"""
