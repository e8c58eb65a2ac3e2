"""Training with MONAI engines: one trainer for every method, as the bundle wires it.

- :mod:`~pddpm_monai.engines.trainer`: ``TrainConfig`` (every training default), ``build_trainer``
  (the objects of the bundle's ``train.json``), ``train``;
- :mod:`~pddpm_monai.engines.steps`: the engines' ``iteration_update`` and small handler helpers;
- :mod:`~pddpm_monai.engines.handlers`: epoch setter, checkpoints, image grid, progress bar;
- :mod:`~pddpm_monai.engines.distributed`: multi-GPU (torchrun + DDP) pieces;
- :mod:`~pddpm_monai.engines.commands`: ``pddpm train`` and ``pddpm reconstruct``.
"""
