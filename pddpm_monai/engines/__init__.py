"""Training with MONAI engines: methods' training steps, trainer/evaluator set-up, checkpoints."""
