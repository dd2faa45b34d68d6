"""Inference backends behind one small contract (see base.py); each imports its library on first use."""
