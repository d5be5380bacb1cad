"""The one engine that runs the model: Lightning's ``Trainer`` on the requested devices and precision.

train.py, test.py and predict.py build their Trainer here from :class:`DeviceSettings`, so one device or precision
fix reaches all of them, and a user learns one vocabulary (Lightning's: ``--accelerator``, ``--devices``,
``--precision``, ``--strategy``, ``--num-nodes``). Under several processes (DDP), each process scores its own share of
the images, exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from stfpm.core.errors import ConfigError, STFPMError, one_line
from stfpm.inference.settings import DeviceSettings, resolve_precision
from stfpm.model.lightning_model import STFPM

TRAINING_DEVICES = "auto"
"""train.py takes every device unless told otherwise; evaluation takes one (``INFERENCE_DEVICES``)."""
INFERENCE_DEVICES = 1


def build_trainer(devices: DeviceSettings, default_devices: str | int, **kwargs: Any) -> pl.Trainer:
    """A Trainer on the requested accelerator/devices/strategy/precision; a device that does not exist, or a setting
    Lightning refuses, is a one-line error instead of a traceback."""
    count = default_devices if devices.devices is None else devices.devices
    precision = resolve_precision(devices.precision, devices.accelerator)
    if precision == "int8":
        raise ConfigError("--precision int8 is OpenVINO's quantised network: test.py, predict.py and stfpm-serve run "
                          "it with --runtime openvino; train.py trains at 32-true, bf16-mixed, ...")
    try:
        return pl.Trainer(
            accelerator=devices.accelerator,
            devices=count,
            strategy=devices.strategy,
            num_nodes=devices.num_nodes,
            precision=precision,  # type: ignore[arg-type]
            **kwargs,
        )
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as exc:
        raise STFPMError(
            f"cannot run with --accelerator {devices.accelerator} --devices {count} --strategy {devices.strategy} "
            f"--precision {precision}: {one_line(exc)}"
        ) from exc


def run_inference(model: STFPM, loader: DataLoader, devices: DeviceSettings, callbacks: Sequence[Callback]) -> pl.Trainer:
    """Score every batch of ``loader``; the callbacks (prediction writers) receive the model's outputs."""
    trainer = build_trainer(devices, INFERENCE_DEVICES, logger=False, callbacks=list(callbacks),
                            enable_model_summary=False)
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return trainer
