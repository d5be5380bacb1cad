"""Evaluation: exact metrics (AUROC, AUPRO, F1, operating point) and the figures of a test split."""
