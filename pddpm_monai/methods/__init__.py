"""The anomaly-detection methods: what is trained, how it reconstructs, how it is stored and scored.

- :mod:`~pddpm_monai.methods.base`: the :class:`~pddpm_monai.methods.base.Method` base class, the
  registry ``METHODS`` and ``build_method``;
- :mod:`~pddpm_monai.methods.diffusion`: pDDPM and DDPM and their configs;
- :mod:`~pddpm_monai.methods.baselines`: AE, VAE, SVAE, DAE, f-AnoGAN (Table 1);
- :mod:`~pddpm_monai.methods.scorers`: the evaluator's seam (``AnomalyScorer``) and Thresh;
- :mod:`~pddpm_monai.methods.checkpoint`: self-describing checkpoints, ``load_method``, ``load_scorer``;
- :mod:`~pddpm_monai.methods.config`: plain-dict round trips of the config dataclasses.

Importing the package registers every method (the method modules are imported here, explicitly).
"""

from pddpm_monai.methods import baselines, diffusion  # noqa: F401  (registers the methods)
from pddpm_monai.methods.base import METHODS, Method, StepOutput, build_method, known_options, register_method
from pddpm_monai.methods.diffusion import DDPMConfig, DDPMMethod, PDDPMConfig, PDDPMMethod, UNetConfig

__all__ = [
    "METHODS",
    "Method",
    "StepOutput",
    "build_method",
    "known_options",
    "register_method",
    "UNetConfig",
    "PDDPMConfig",
    "DDPMConfig",
    "PDDPMMethod",
    "DDPMMethod",
]
