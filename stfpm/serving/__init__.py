"""The HTTP service (`stfpm-serve`): one model, loaded once, answering "good or bad, and where" for uploaded photos,
with the preprocessing, thresholds and postprocessing of predict.py."""
