"""The model: backbones, the pure-PyTorch teacher/student network, the anomaly map, the loss, tiling, the Lightning
wrapper that trains and calibrates it, and checkpoint loading."""
