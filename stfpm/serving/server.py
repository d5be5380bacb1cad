"""stfpm-serve's work: load the model once, warm it up, and serve it with uvicorn on one socket.

FastAPI with uvicorn rather than LitServe: the service is one process holding one model, its network calls
batched by one thread, so a scheduler's SIGKILL leaves nothing behind and memory is the model's once; decoding and
postprocessing run in the server's thread pool. LitServe would run the model in worker processes of its own.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch

from stfpm.core.errors import STFPMError
from stfpm.core.layout import Runs
from stfpm.inference.predictor import Predictor
from stfpm.inference.settings import DeviceSettings, PostprocessSettings, RuntimeSettings, ThresholdSettings
from stfpm.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def load(settings: ServeSettings, devices: DeviceSettings, thresholds: ThresholdSettings,
         postprocess: PostprocessSettings, runtime: RuntimeSettings) -> tuple[Predictor, Path]:
    """The checkpoint's model as a :class:`Predictor`, warmed up with a batch of one, one of the largest size and one
    between (OpenVINO compiles its network for other sizes there), so no request waits for a first run."""
    thresholds.check_paths()
    checkpoint = Runs(Path(settings.runs_dir)).resolve(settings.checkpoint, settings.category)
    predictor = Predictor.from_checkpoint(
        checkpoint, device=devices.one_device(), precision=devices.precision, image_threshold=thresholds.image_threshold,
        pixel_threshold=thresholds.threshold, thresholds_from=thresholds.thresholds_from,
        min_defect_area=postprocess.min_defect_area, runtime=runtime.runtime, runtime_model=runtime.runtime_model,
        batch_sizes=sorted({1, settings.max_batch_size}))
    height, width = predictor.transform.size
    for size in sorted({1, min(2, settings.max_batch_size), settings.max_batch_size}):
        predictor.anomaly_maps(torch.zeros(size, 3, height, width))
    return predictor, checkpoint


def serve(settings: ServeSettings, devices: DeviceSettings, thresholds: ThresholdSettings,
          postprocess: PostprocessSettings, runtime: RuntimeSettings) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM)."""
    try:
        import uvicorn

        from stfpm.serving.app import create_app
    except ImportError as exc:
        raise STFPMError(f"stfpm-serve needs the serving extras: pip install 'stfpm[serve]' ({exc})") from exc
    predictor, checkpoint = load(settings, devices, thresholds, postprocess, runtime)
    model = {"checkpoint": str(checkpoint), "category": predictor.model.run_info.get("category"),
             "device": str(predictor.device), "network": predictor.network,
             "min_defect_area": predictor.postprocessor.min_defect_area}
    app = create_app(predictor, settings, model)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
        listener.listen(2048)  # connections wait from here on, before the line below tells clients where to go
    except OSError as exc:
        raise STFPMError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    host, port = listener.getsockname()[:2]
    print(f"serving {checkpoint} on http://{host}:{port} (POST /predict, GET /health)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        app.state.batcher.close()
        listener.close()
