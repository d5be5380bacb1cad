"""Optional checks on real material found at ../shared (skipped where it is absent)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_dequant.pth"
BATTERY = SHARED / "data" / "battery_weld"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no offline ImageNet MobileNetV2 at ../shared")
def test_offline_mobilenet_teacher_loads_exactly() -> None:
    from stfpm.model.settings import ModelSettings
    from stfpm.model.torch_model import STFPMModel

    model = STFPMModel(ModelSettings.of(backbone="mobilenet_v2", teacher_weights=str(WEIGHTS)))
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    reference.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.features[:14](images)
        got = model.teacher(images)[-1]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.skipif(not BATTERY.is_dir(), reason="no battery_weld dataset at ../shared")
def test_battery_weld_quirks_are_handled(caplog) -> None:
    from stfpm.data import scan_category

    caplog.set_level(logging.WARNING)
    index = scan_category(BATTERY, require_test=True)
    assert len(index.train) == 37
    labels = [s.label for s in index.test]
    assert labels.count(0) == 35 and labels.count(1) == 93
    assert all(s.mask_path is not None for s in index.test if s.label == 1)  # same-name masks are matched
    assert "40 masks" in caplog.text  # masks without an image are reported once
