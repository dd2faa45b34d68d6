"""Training stage: the dual-head model (IBN-Net-A ResNet-18 or MobileOne backbone), data sets, samplers, losses and
trainer (needs torch)."""
