"""Exported networks give the same maps and scores as the Python model."""

from __future__ import annotations

import json

import pytest
import torch

from stfpm.inference.export import deployable, export
from stfpm.model.checkpoint import load_checkpoint


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_export_matches_eager_model(trained_run, tmp_path, fmt) -> None:
    model = load_checkpoint(trained_run["checkpoint"])
    path = export(model, tmp_path / f"model.{fmt}", fmt)
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["settings"]["input"]["image_size"] == 64 and meta["image_threshold"] == pytest.approx(model.thresholds[0])
    images = torch.rand(3, 3, 64, 64)  # a batch size other than the one used for export
    loaded = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    with torch.no_grad():
        maps, scores = loaded(images)
        expected_maps, expected_scores = deployable(model)(images)
    torch.testing.assert_close(maps, expected_maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-6)
    # normalisation is built in: same result as the Predictor's preprocessing path
    mean = torch.tensor(model.settings.input.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.settings.input.std).view(1, 3, 1, 1)
    with torch.no_grad():
        direct, _ = model.model.predict((images - mean) / std)
    torch.testing.assert_close(maps, direct, rtol=1e-5, atol=1e-6)


def test_export_script_records_the_threshold_policy(trained_run, tmp_path) -> None:
    """scripts/export.py takes predict.py's threshold flags; the metadata holds the policy and its source."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "m.pt2"
    done = subprocess.run([sys.executable, str(repo / "scripts" / "export.py"), "--checkpoint",
                           str(trained_run["checkpoint"]), "--output", str(out), "--threshold", "0.25"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(out.with_name("m.pt2.json").read_text())
    model = load_checkpoint(trained_run["checkpoint"])
    assert meta["pixel_threshold"] == 0.25 and meta["image_threshold"] == pytest.approx(model.thresholds[0])
    assert "explicit" in meta["threshold_source"] and "calibrated" in meta["threshold_source"]
    assert "bilinear" in meta["resize"] and "64" in meta["resize"]
