"""The Lightning wrapper: training, validation loss, threshold calibration and batched inference."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from stfpm.data.augment import light_augment
from stfpm.data.io import ImageTransform
from stfpm.model import checkpoint_format
from stfpm.model.anomaly_map import layer_anomaly_maps
from stfpm.model.calibrate import calibrate, few_images_warning
from stfpm.model.loss import stfpm_loss
from stfpm.model.reference import MIN_REFERENCE_IMAGES
from stfpm.model.settings import ModelSettings
from stfpm.model.torch_model import STFPMModel

log = logging.getLogger(__name__)


class STFPM(pl.LightningModule):
    """STFPM with the options of :class:`~stfpm.model.settings.ModelSettings` (the paper's networks, loss and SGD; by
    default the recipe study's learning-rate decay, map normalization and image score).

    Every validation epoch also computes the anomaly maps of the held-out normal images (from the same
    features as the validation loss) and calibrates the thresholds on them, so each checkpoint carries
    thresholds that match its own weights. ``load_teacher`` False: see :class:`STFPMModel`.
    """

    def __init__(self, settings: ModelSettings, load_teacher: bool = True) -> None:
        super().__init__()
        self.model = STFPMModel(settings, load_teacher)
        self.settings = self.model.settings  # resolved: `coarser` -> [1, 2], the student's backbone and layers
        self.save_hyperparameters(self.settings.as_dict())
        self.run_info: dict[str, Any] = {}  # category, data root, the images it was calibrated on: in checkpoints
        # what predict_step runs: None for the PyTorch model itself, else an exported network in another runtime
        # (:func:`stfpm.inference.runtime.attach`), normalised images [B,3,H,W] -> (maps [B,1,H,W], scores [B])
        self.network: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
        self.calibration_scores: list[float] = []  # the out-of-sample good scores the image threshold rests on
        self.validation_levels: list[Tensor] | None = None  # the last validation's level maps (every process's)
        # per validation batch: the per-level maps at their own resolution, and the images' dataset indices
        self._val_levels: list[tuple[list[Tensor], Tensor]] = []
        self.warned_few = False  # the few-validation-images warning was given
        self.warned_dominated = False  # the warning that a few validation images dominate the reference was given
        self.validated_step = -1  # the optimizer step whose weights the stored thresholds were calibrated on

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        source = self.settings.input
        if source.augment == "light":
            # the draws depend on (seed, step, rank) only, so --resume continues them exactly
            seed = (torch.initial_seed() * 1_000_003 + self.global_step) * 64 + self.global_rank
            generator = torch.Generator(device=images.device).manual_seed(seed % 2**63)
            images = light_augment(images, source.mean, source.std, generator)
        teacher, student = self.model(images)
        loss = stfpm_loss(teacher, student, self.settings.optimizer.hard_fraction)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        teacher, student = self.model(images)
        self.log("val_loss", stfpm_loss(teacher, student, 1.0), prog_bar=True, batch_size=len(images), sync_dist=True)
        levels = [m.float() for m in layer_anomaly_maps(teacher, student)]
        index = batch.get("index")
        self._val_levels.append((levels, index if index is not None else torch.full((len(images),), -1)))

    def on_validation_epoch_end(self) -> None:
        levels = self._collect_validation()
        self._val_levels.clear()
        if levels is None or self.trainer.sanity_checking:
            return
        self.validation_levels = [level.cpu() for level in levels]
        image_thr, pixel_thr, map_mean = self.calibrate_on(levels)
        self.validated_step = self.global_step
        # val_map_mean: the official code's model-selection criterion (lowest mean validation anomaly map)
        self.log_dict(
            {"image_threshold": image_thr, "pixel_threshold": pixel_thr, "val_map_mean": map_mean}, sync_dist=True
        )

    @torch.no_grad()
    def calibrate_on(self, levels: list[Tensor], chunk: int = 64, source: str = "validation images"
                     ) -> tuple[float, float, float]:
        """The calibration step on the level maps of out-of-sample good images (``source`` names them), with its
        warnings (once each); returns the image and pixel thresholds and the mean of their maps."""
        result = calibrate(self.model, levels, chunk)
        self.calibration_scores = result.scores
        if result.dominated and not self.warned_dominated:
            self.warned_dominated = True
            log.warning(
                "the %d validation maps average only %.1f images' worth (a few of them dominate their mean): the "
                "reference normalization needs %d, so the map is left as it is (--map-normalization none)",
                result.images, result.reference_image_count, MIN_REFERENCE_IMAGES,
            )
        warning = self.few_validation_warning(result.images, source)
        if warning and not self.warned_few:
            self.warned_few = True
            log.warning("%s", warning)
        return result.image.value, result.pixel_threshold, result.map_mean

    def few_validation_warning(self, count: int, source: str = "validation images") -> str | None:
        """What ``count`` out-of-sample good images are too few for, or None."""
        return few_images_warning(count, self.model, source)

    def _collect_validation(self) -> list[Tensor] | None:
        """This epoch's per-level validation maps [N,1,h,w], gathered from every process under DDP.

        A distributed sampler pads the validation set with repeated images so that every process gets as many;
        each image enters the thresholds once (by its dataset index, the first copy kept).
        """
        if not self._val_levels:
            return None
        levels = [torch.cat(level) for level in zip(*(lv for lv, _ in self._val_levels))]
        index = torch.cat([torch.as_tensor(i, device=levels[0].device) for _, i in self._val_levels])
        if self.trainer.world_size > 1:
            levels = [_gathered(self.all_gather(level)).reshape(-1, *level.shape[1:]) for level in levels]
            index = _gathered(self.all_gather(index)).reshape(-1)
            rows = self.model.anomaly_map.rows_per_image
            keep = _first_occurrences(index)
            if rows > 1:  # with tiling, each image owns `rows` consecutive rows of the level maps
                keep = (keep[:, None] * rows + torch.arange(rows, device=keep.device)).reshape(-1)
            if len(keep) * rows < len(levels[0]):
                levels = [level[keep] for level in levels]
        return levels

    def prepare_for_inference(self) -> None:
        """Eval mode and channels-last weights, which run convolutions faster on CPUs and GPUs alike (measured in
        scripts/benchmark_predict.py); the figures are those of the default layout up to float rounding."""
        self.eval()
        self.model.to(memory_format=torch.channels_last)

    def on_predict_start(self) -> None:
        self.prepare_for_inference()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Anomaly maps and scores of a batch, on the CPU, with the batch's other fields passed through.

        A batch whose ``image`` is None (every file of it unreadable) passes through without maps.
        """
        out = {key: value for key, value in batch.items() if key != "image"}
        if batch["image"] is None:
            return out
        images = batch["image"]
        if self.network is not None:
            maps, scores = self.network(images)
        else:
            maps, scores = self.model.predict(images.contiguous(memory_format=torch.channels_last))
        out["anomaly_map"] = maps[:, 0].float().cpu()
        out["score"] = scores.float().cpu()
        return out

    def configure_optimizers(self) -> Any:
        settings = self.settings.optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
        if settings.lr_schedule == "constant":
            return optimizer
        # cosine: from lr down to 0 at the last step of this run (--epochs, or --max-steps when it comes first), in
        # closed form of the step: a run resumed with the same length follows it exactly, one resumed with a
        # larger --epochs follows the schedule of its new length, and the lr stays at 0 past the end
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("--lr-schedule cosine needs a run length: --epochs or --max-steps")
        steps = max(int(total), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # a run resumed with another length restores the lr of its old schedule: take the new one's at this step
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                    group["lr"] = base * factor(scheduler.last_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_format.stamp(checkpoint, self.run_info, self.calibration_scores)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Upgrade a checkpoint of an earlier format in place (Lightning calls this before loading its weights, so
        --resume takes them too) and read its run record."""
        checkpoint_format.upgrade(checkpoint)
        self.run_info = checkpoint_format.run_info(checkpoint)
        self.calibration_scores = checkpoint_format.calibration_scores(checkpoint)

    def preprocessing(self) -> ImageTransform:
        """The preprocessing this model was trained with (the data module's, predict.py's and the export's)."""
        return self.settings.input.transform()

    @property
    def thresholds(self) -> tuple[float, float]:
        """(image threshold, pixel threshold); NaN when the model was trained without validation images."""
        return self.model.thresholds


def _gathered(value: Any) -> Tensor:
    """``all_gather`` of one tensor is one tensor."""
    assert isinstance(value, Tensor)
    return value


def _first_occurrences(index: Tensor) -> Tensor:
    """Positions of the first copy of every distinct value of ``index`` (all positions when it holds -1s)."""
    if (index < 0).any():
        return torch.arange(len(index), device=index.device)
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return torch.sort(order[first]).values
