"""Metric math (pure numpy/torch, no fairseq): calibration (ECE, Brier, NLL) and detection
(ROC-AUC, retention curves, PRR)."""
