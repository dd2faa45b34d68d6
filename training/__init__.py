"""Training stage: the dual-head IBN-Net-A model, data sets, samplers, losses and trainer (needs torch)."""
