"""The Lightning wrapper: training, validation loss, threshold calibration and batched inference."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from stfpm import __version__
from stfpm.data.augment import AUGMENTATIONS, light_augment
from stfpm.data.io import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, as_hw, size_record
from stfpm.inference.thresholding import CALIBRATIONS, calibrate, few_images_warning
from stfpm.model.anomaly_map import MIN_REFERENCE_IMAGES, layer_anomaly_maps
from stfpm.model.loss import stfpm_loss
from stfpm.model.torch_model import STFPMModel

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "stfpm"
LR_SCHEDULES = ("constant", "cosine")
PAPER_VALUES = {
    "map_fusion": "product", "map_sigma": 0.0, "map_normalization": "none", "score_fraction": 0.0,
    "calibration": "empirical", "hard_fraction": 1.0, "lr_schedule": "constant", "augment": "none",
    "student_init": "random", "score_levels": "all",
}
"""Options beyond the paper, at the paper's values. A checkpoint whose hyperparameters lack one of them was written
before the option existed, so it was trained and calibrated with this value, whatever today's default is."""


class STFPM(pl.LightningModule):
    """STFPM: the paper's networks, loss and SGD settings (lr 0.4, momentum 0.9, weight decay 1e-4); by default the
    learning rate decays along a cosine, the map is normalized position by position by the validation normals'
    mean map, and the image score is the mean of the top 1% of the map of every level but the finest (the recipe
    study's choices; ``configs/official.yaml`` and :data:`PAPER_VALUES` give the paper's).

    Every validation epoch also computes the anomaly maps of the held-out normal images (from the same
    features as the validation loss) and stores the calibrated thresholds as buffers, so each checkpoint
    carries thresholds that match its own weights.
    """

    def __init__(
        self,
        backbone: str = "resnet152",
        student_backbone: str | None = None,
        layers: list[str] | None = None,
        teacher_weights: str | None = "imagenet",
        image_size: int | list[int] = 256,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        image_threshold_quantile: float = 0.99,
        pixel_threshold_quantile: float = 0.999,
        calibration: str = "empirical",
        map_fusion: str = "product",
        map_sigma: float = 0.0,
        tile_size: int | list[int] | None = None,
        tile_overlap: float = 0.25,
        hard_fraction: float = 1.0,
        map_normalization: str = "reference",
        lr_schedule: str = "cosine",
        augment: str = "none",
        score_fraction: float = 0.01,
        student_init: str = "random",
        score_levels: str | list[int] = "coarser",
    ) -> None:
        super().__init__()
        for name, value, choices in (
            ("calibration", calibration, CALIBRATIONS), ("lr_schedule", lr_schedule, LR_SCHEDULES),
            ("augment", augment, AUGMENTATIONS),
        ):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        self.model = STFPMModel(
            backbone, student_backbone, layers, teacher_weights, map_fusion, map_sigma, image_size, tile_size,
            tile_overlap, map_normalization, score_fraction, student_init, score_levels,
        )
        self.save_hyperparameters()
        self.hparams["student_backbone"] = student_backbone or backbone
        self.hparams["layers"] = list(self.model.layers)
        self.hparams["score_levels"] = list(self.model.anomaly_map.score_levels)  # resolved: `coarser` -> [1, 2]
        self.hparams["image_size"] = size_record(as_hw(image_size))
        self.hparams["tile_size"] = None if tile_size is None else size_record(as_hw(tile_size))
        self.image_threshold: Tensor
        self.pixel_threshold: Tensor
        self.register_buffer("image_threshold", torch.tensor(math.nan))
        self.register_buffer("pixel_threshold", torch.tensor(math.nan))
        self.run_info: dict[str, str] = {}  # category and data root, recorded in checkpoints
        # per validation batch: the per-level maps at their own resolution, and the images' dataset indices
        self._val_levels: list[tuple[list[Tensor], Tensor]] = []
        self.warned_few = False  # the few-validation-images warning was given
        self.warned_dominated = False  # the warning that a few validation images dominate the reference was given
        self._val_map_mean = math.nan
        self.validated_step = -1  # the optimizer step whose weights the stored thresholds were calibrated on

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> STFPM:
        """The model recorded in a checkpoint's hyperparameters (options it predates at the paper's values)."""
        return cls(**{**PAPER_VALUES, **hparams})

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        if self.hparams["augment"] == "light":
            # the draws depend on (seed, step, rank) only, so --resume continues them exactly
            seed = (torch.initial_seed() * 1_000_003 + self.global_step) * 64 + self.global_rank
            generator = torch.Generator(device=images.device).manual_seed(seed % 2**63)
            images = light_augment(images, self.hparams["mean"], self.hparams["std"], generator)
        teacher, student = self.model(images)
        loss = stfpm_loss(teacher, student, self.hparams["hard_fraction"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        teacher, student = self.model(images)
        self.log("val_loss", stfpm_loss(teacher, student), prog_bar=True, batch_size=len(images), sync_dist=True)
        levels = [m.float() for m in layer_anomaly_maps(teacher, student)]
        index = batch.get("index")
        self._val_levels.append((levels, index if index is not None else torch.full((len(images),), -1)))

    def on_validation_epoch_end(self) -> None:
        levels = self._collect_validation()
        self._val_levels.clear()
        if levels is None or self.trainer.sanity_checking:
            return
        image_thr, pixel_thr = self.calibrate_on(levels, as_hw(self.hparams["image_size"]))
        self.validated_step = self.global_step
        # val_map_mean: the official code's model-selection criterion (lowest mean validation anomaly map)
        self.log_dict(
            {"image_threshold": image_thr, "pixel_threshold": pixel_thr, "val_map_mean": self._val_map_mean},
            sync_dist=True,
        )

    @torch.no_grad()
    def calibrate_on(self, levels: list[Tensor], size: tuple[int, int], chunk: int = 64) -> tuple[float, float]:
        """Fit the map's per-level statistics and the thresholds to the level maps of normal validation images.

        Everything decided from the validation normals is decided here, and stored in buffers that every
        checkpoint carries: the per-level factors of the fusion and the reference maps, then the image threshold
        (from the scores of ``score_levels``) and the pixel threshold (from the maps of every level).
        """
        generator = self.model.anomaly_map
        maps, scores = generator.fit(levels, size, chunk)
        if (generator.normalization == "reference" and not generator.reference_in_use
                and len(maps) >= MIN_REFERENCE_IMAGES and not self.warned_dominated):
            self.warned_dominated = True
            log.warning(
                "the %d validation maps average only %.1f images' worth (a few of them dominate their mean): the "
                "reference normalization needs %d, so the map is left as it is (--map-normalization none)",
                len(maps), generator.reference_image_count, MIN_REFERENCE_IMAGES,
            )
        scores = scores.cpu()
        maps = maps[:, 0].cpu()
        self._val_map_mean = float(maps.double().mean())
        quantile, method = self.hparams["image_threshold_quantile"], self.hparams["calibration"]
        warning = self.few_validation_warning(len(scores))
        if warning and not self.warned_few:
            self.warned_few = True
            log.warning("%s", warning)
        image_thr, pixel_thr = calibrate(
            scores, maps, quantile, self.hparams["pixel_threshold_quantile"], method
        )
        self.image_threshold.fill_(image_thr)
        self.pixel_threshold.fill_(pixel_thr)
        return image_thr, pixel_thr

    def few_validation_warning(self, count: int) -> str | None:
        """What ``count`` validation images are too few for (the image-threshold quantile, the reference
        normalization), or None."""
        quantile, method = self.hparams["image_threshold_quantile"], self.hparams["calibration"]
        problems = [few_images_warning(count, quantile, method)]
        if self.model.anomaly_map.normalization == "reference" and count < MIN_REFERENCE_IMAGES:
            problems.append(f"only {count} validation images: the reference normalization needs at least "
                            f"{MIN_REFERENCE_IMAGES}, so the map is left as it is (--map-normalization none)")
        return "; ".join(p for p in problems if p) or None

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
        maps, scores = self.model.predict(batch["image"].contiguous(memory_format=torch.channels_last))
        out["anomaly_map"] = maps[:, 0].float().cpu()
        out["score"] = scores.float().cpu()
        return out

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params,
            lr=self.hparams["lr"],
            momentum=self.hparams["momentum"],
            weight_decay=self.hparams["weight_decay"],
        )
        if self.hparams["lr_schedule"] == "constant":
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
        checkpoint[CHECKPOINT_KEY] = {"format_version": 1, "package_version": __version__, **self.run_info}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get(CHECKPOINT_KEY, {})
        self.run_info = {k: v for k, v in info.items() if k in ("category", "data_root")}

    def preprocessing(self) -> ImageTransform:
        """The preprocessing this model was trained with (the data module's, predict.py's and the export's)."""
        return ImageTransform(self.hparams["image_size"], self.hparams["mean"], self.hparams["std"])

    @property
    def thresholds(self) -> tuple[float, float]:
        """(image threshold, pixel threshold); NaN when the model was trained without validation images."""
        return float(self.image_threshold), float(self.pixel_threshold)


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
