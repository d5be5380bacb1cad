"""Training: ``fit(settings)`` trains one category (or every one) and writes its run folder."""

from stfpm.training.fitting import FitResult, TrainSettings, fit

__all__ = ["FitResult", "TrainSettings", "fit"]
