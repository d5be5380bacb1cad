"""The HTTP application: ``POST /predict`` (the image as the body, or as the multipart field ``image``) and
``GET /health``. Every decision is the :class:`~stfpm.inference.predictor.Predictor`'s: its preprocessing, its
network call (batched across concurrent requests by :class:`~stfpm.serving.batcher.Batcher`), its
``Postprocessor`` and ``ThresholdPolicy``, so the service decides as predict.py does. Bad input is a 4xx with a
one-line reason; the service keeps serving."""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import sys
from typing import Any

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from stfpm.data.io import ImageTooLarge, decode_image
from stfpm.inference.predictor import Predictor
from stfpm.serving.batcher import Batcher
from stfpm.serving.settings import ServeSettings

IMAGE_TYPES = ("application/octet-stream",)  # besides image/* and multipart/form-data


class Refused(Exception):
    """A request answered with a 4xx and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def memory_bytes() -> int:
    """This process's resident memory (Linux /proc; elsewhere its peak, from getrusage)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"upload over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _multipart_image(content_type: str, body: bytes) -> bytes:
    """The bytes of the multipart field ``image``."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise Refused(400, "malformed multipart upload")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "image":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise Refused(400, "multipart upload without an 'image' field")


async def _image_bytes(request: Request, settings: ServeSettings) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in IMAGE_TYPES or kind == "multipart/form-data"):
        raise Refused(415, f"content type {kind or 'none'!r} is not an image: send the image file as the body "
                      "(image/*, application/octet-stream) or as the multipart field 'image'")
    body = await _body(request, int(settings.max_body_mb * 1_000_000))
    return _multipart_image(content_type, body) if kind == "multipart/form-data" else body


def create_app(predictor: Predictor, settings: ServeSettings, model: dict[str, Any]) -> FastAPI:
    """The application around one loaded model; ``model`` describes it for ``/health``."""
    app = FastAPI(title="STFPM inspection service", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = Batcher(predictor, settings.max_batch_size, settings.max_wait_ms / 1000)
    policy = predictor.postprocessor.policy
    app.state.batcher = batcher

    def prepare(data: bytes) -> tuple[Any, tuple[int, int]]:
        try:
            image = decode_image(data, settings.max_image_pixels)
        except ImageTooLarge as exc:
            raise Refused(413, str(exc)) from exc
        except Exception as exc:  # any decoding problem of an upload is the client's
            raise Refused(400, str(exc).splitlines()[0] if str(exc) else "not a readable image") from exc
        return predictor.transform(image), (image.height, image.width)

    def answer(anomaly_map: Any, score: float, size: tuple[int, int], with_mask: bool) -> dict[str, Any]:
        prediction = predictor.postprocessor(anomaly_map, score, size)
        out: dict[str, Any] = {
            "score": prediction.score, "is_anomalous": prediction.is_anomalous, "image_threshold": policy.image,
            "pixel_threshold": policy.pixel, "threshold_source": policy.source,
            "defect_area_fraction": prediction.defect_area_fraction, "height": size[0], "width": size[1],
        }
        if with_mask:
            ok, png = cv2.imencode(".png", prediction.mask)
            out["mask_png"] = base64.b64encode(png.tobytes()).decode("ascii")
        return out

    @app.post("/predict")
    async def predict(request: Request, mask: bool = False) -> JSONResponse:
        try:
            data = await _image_bytes(request, settings)
            tensor, size = await run_in_threadpool(prepare, data)
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        anomaly_map, score = await asyncio.wrap_future(batcher.submit(tensor))
        return JSONResponse(await run_in_threadpool(answer, anomaly_map, score, size, mask))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **model, "image_threshold": policy.image, "pixel_threshold": policy.pixel,
                "threshold_source": policy.source, "batches": batcher.batches, "images": batcher.images,
                "memory_bytes": memory_bytes()}

    return app
