"""Knowledge distillation with IKL (IKL-KD) and its baselines (KD, DKD)."""
