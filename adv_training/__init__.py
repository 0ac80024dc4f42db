"""Adversarial training with IKL (IKL-AT) and its baselines (TRADES, TRADES+AWP, PGD-AT, AT-AWP, MART, standard training)."""
