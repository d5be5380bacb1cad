"""STFPM: Student-Teacher Feature Pyramid Matching for unsupervised anomaly detection."""

__version__ = "0.1.0"
