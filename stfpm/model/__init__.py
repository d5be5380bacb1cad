"""The model: its settings, backbones, the pure-PyTorch teacher/student network, the anomaly map, the fitted
reference, the calibration step, the loss, tiling, the Lightning wrapper that trains and calibrates it, and the
checkpoint format."""
