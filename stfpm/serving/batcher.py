"""Concurrent requests scored together: requests queue their preprocessed images; one thread takes up to
``max_batch_size`` of them (waiting at most ``max_wait`` seconds after the first) and runs the network once."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from torch import Tensor

from stfpm.inference.predictor import Predictor


@dataclass
class _Job:
    image: Tensor  # [3, H, W], preprocessed
    result: Future  # -> (anomaly map [h, w], score)


class Batcher:
    """The one thread that runs the network; :meth:`submit` is safe from any thread."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_wait: float) -> None:
        self.predictor, self.max_batch_size, self.max_wait = predictor, max_batch_size, max_wait
        self.batches = self.images = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stfpm-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: Tensor) -> Future:
        job = _Job(image, Future())
        self._jobs.put(job)
        return job.result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch_size:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            try:
                maps, scores = self.predictor.anomaly_maps(torch.stack([j.image for j in jobs]))
            except Exception as exc:  # the requests get the error; the service keeps serving
                for job in jobs:
                    job.result.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(jobs)
            for job, anomaly_map, score in zip(jobs, maps, scores.tolist()):
                job.result.set_result((anomaly_map, score))
