"""Training with MONAI engines: methods' training steps, trainer/evaluator set-up, checkpoints.

Modules (imported explicitly, so that ``pddpm --help`` does not load torch/MONAI engines):

- :mod:`~pddpm_monai.engines.methods`: the :class:`~pddpm_monai.engines.methods.Method` base class,
  the registry ``METHODS`` (``"pddpm"``, ``"ddpm"``; baselines register more) and their configs.
- :mod:`~pddpm_monai.engines.trainer`: ``TrainConfig`` (every training default), ``build_trainer``
  (a MONAI ``SupervisedTrainer`` with validation, checkpoints, TensorBoard), ``train``.
- :mod:`~pddpm_monai.engines.checkpoint`: self-describing checkpoints, ``load_method`` and
  ``load_scorer`` (the volume scorer that ``pddpm evaluate`` and ``pddpm reconstruct`` use).
- :mod:`~pddpm_monai.engines.config`: plain-dict round trips of the config dataclasses.
- :mod:`~pddpm_monai.engines.commands`: ``pddpm train`` and ``pddpm reconstruct``.
"""
