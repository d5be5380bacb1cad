#!/usr/bin/env python
"""Recipe study: train STFPM variants on real defect sets with several seeds and compare them.

Each training recipe is run with ``train.py`` (one subprocess per data set and seed). Each trained checkpoint
is then evaluated under several map settings (fusion, Gaussian smoothing, image-threshold calibration)
without retraining: the per-level maps of the validation normals and of the test images are computed once,
and every setting recalibrates its thresholds on the validation normals through the model's own
``calibrate_on``, exactly as training does. No choice is made from test labels.

Pixel figures are computed at each image's source resolution (the maps resized back as predict.py does),
so recipes with different input sizes are compared on the same pixels. Example (about 1-3 min per run on
2 CPU cores):

    python scripts/recipe_study.py --shared ../shared --out study --report docs/recipe_study.md
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from stfpm.core.errors import ConfigError
from stfpm.core.layout import Run, Runs
from stfpm.data import DataSettings, MVTecDataModule, image_header, load_mask, resize_mask
from stfpm.evaluation.metrics import overlap_at_threshold
from stfpm.evaluation.results import TestPredictions, compute_metrics
from stfpm.evaluation.settings import TestSettings
from stfpm.inference.postprocess import resize_map
from stfpm.model.anomaly_map import SCORE_LEVELS, AnomalyMap, resolve_score_levels
from stfpm.model.checkpoint import load_checkpoint
from stfpm.model.reference import NORMALIZATIONS, ReferenceNormalizer
from stfpm.model.settings import MapSettings

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "weights/mobilenet_v2_imagenet_dequant.pth"

# name -> extra train.py flags; {size} is the study's --image-size. Every recipe starts from the paper's training
# (PAPER), whatever train.py's defaults are; later flags win.
PAPER = ["--lr-schedule", "constant", "--augment", "none"]
RECIPES: dict[str, list[str]] = {
    "square": ["--image-size", "{size}"],
    "aspect": ["--image-size", "{size}", "--keep-aspect"],
    "square_2x": ["--image-size", "{size2x}"],
    "aspect_2x": ["--image-size", "{size2x}", "--keep-aspect"],
    "square_2x_epochs": ["--image-size", "{size}", "--epochs", "{epochs2x}"],
    "aspect_2x_epochs": ["--image-size", "{size}", "--keep-aspect", "--epochs", "{epochs2x}"],
    "aspect_hard": ["--image-size", "{size}", "--keep-aspect", "--hard-fraction", "0.1"],
    "square_hard": ["--image-size", "{size}", "--hard-fraction", "0.1"],
    "square_cosine": ["--image-size", "{size}", "--lr-schedule", "cosine"],
    "square_augment": ["--image-size", "{size}", "--augment", "light"],
    "square_cosine_augment": ["--image-size", "{size}", "--lr-schedule", "cosine", "--augment", "light"],
    "square_cosine_val55": ["--image-size", "{size}", "--lr-schedule", "cosine", "--val-fraction", "0.55"],
    "aspect_cosine": ["--image-size", "{size}", "--keep-aspect", "--lr-schedule", "cosine"],
    "square_2x_cosine": ["--image-size", "{size2x}", "--lr-schedule", "cosine"],
    "aspect_2x_cosine": ["--image-size", "{size2x}", "--keep-aspect", "--lr-schedule", "cosine"],
    "square_cosine_student_teacher": ["--image-size", "{size}", "--lr-schedule", "cosine", "--student-init", "teacher"],
    "square_cosine_student_resnet18": [
        "--image-size", "{size}", "--lr-schedule", "cosine", "--student-backbone", "resnet18",
    ],
    # two tiles of {size} side by side, sharing a quarter (the default --tile-overlap): twice the compute
    "tile_2x_cosine": ["--image-size", "{size}", "{size_2tiles}", "--tile-size", "{size}", "--lr-schedule", "cosine"],
}
FUSION = ("product", "sum")
SIGMAS = (0.0, 2.0, 4.0)
CALIBRATIONS = {"empirical": "none", "gumbel": "gumbel"}  # the image threshold beyond the validation scores: --tail
SCORE_FRACTIONS = (0.0,)
FIGURES = (
    "image_auroc", "pixel_auroc", "pixel_aupro", "image_tpr_at_threshold", "image_fpr_at_threshold",
    "pixel_precision_at_threshold", "pixel_recall_at_threshold", "pixel_iou_at_threshold",
    "image_tpr_at_1pct_fpr", "image_tpr_at_5pct_fpr", "good_pixel_fpr_at_threshold",
    "pixel_precision_at_image_threshold", "pixel_recall_at_image_threshold", "pixel_iou_at_image_threshold",
)


def _level_subset(text: str) -> str:
    if text not in SCORE_LEVELS and not all(part.isdigit() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(SCORE_LEVELS)}, or level indices such as 1,2; got {text!r}")
    return text


def _level_spec(text: str) -> str | list[int]:
    """``all``/``coarser`` as they are, ``1,2`` as indices."""
    return text if text in SCORE_LEVELS else [int(i) for i in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default="../shared", help="folder with data/<set> and " + WEIGHTS)
    p.add_argument("--datasets", nargs="+", default=["battery_weld", "bsdata"])
    p.add_argument("--recipes", nargs="+", default=["square", "aspect"], choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--fusions", nargs="+", default=list(FUSION), choices=list(FUSION), help="map settings evaluated")
    p.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS))
    p.add_argument("--calibrations", nargs="+", default=list(CALIBRATIONS), choices=list(CALIBRATIONS))
    p.add_argument("--normalizations", nargs="+", default=list(NORMALIZATIONS), choices=list(NORMALIZATIONS))
    p.add_argument("--score-fractions", nargs="+", type=float, default=list(SCORE_FRACTIONS),
                   help="image score: mean of this share of highest map pixels (0: the maximum)")
    p.add_argument("--levels", nargs="+", default=["all"], type=_level_subset,
                   help="pyramid levels fused into the map: all, coarser, or indices from the finest, e.g. 1,2")
    p.add_argument("--score-levels", nargs="+", default=["all"], type=_level_subset,
                   help="levels (of those fused) the image score comes from: all, coarser, or indices, e.g. 1,2")
    p.add_argument("--out", default="study", help="runs and results.jsonl go here; finished runs are reused")
    p.add_argument("--report", help="write the Markdown table of means ± sd here")
    p.add_argument("--report-only", action="store_true", help="only aggregate results.jsonl")
    return p.parse_args(argv)


def recipe_flags(recipe: str, size: int, epochs: int) -> tuple[list[str], int, int]:
    """The recipe's train.py flags, its image size (the side of the square of equal area) and its epochs."""
    fill = dict(size=size, size2x=round(size * math.sqrt(2)), epochs2x=2 * epochs, size_2tiles=size + round(size * 0.75))
    extra = [flag.format(**fill) for flag in RECIPES[recipe]]
    at = extra.index("--image-size") + 1
    hw = [int(v) for v in itertools.takewhile(str.isdigit, extra[at: at + 2])]
    side = round(math.sqrt(hw[0] * hw[-1]))
    return extra, side, int(extra[extra.index("--epochs") + 1]) if "--epochs" in extra else epochs


def train(args: argparse.Namespace, dataset: str, recipe: str, seed: int, runs: Path) -> float:
    """Train one recipe (skipped when its checkpoint exists); returns training images/s (0 if reused)."""
    if (runs / dataset).is_dir() and any((runs / dataset).glob("version_*/checkpoints/best.ckpt")):
        return 0.0
    extra, _, epochs = recipe_flags(recipe, args.image_size, args.epochs)
    cmd = [
        sys.executable, str(ROOT / "train.py"), "--category", dataset, "--data-root", str(Path(args.shared) / "data"),
        "--backbone", "mobilenet_v2", "--teacher-weights", str(Path(args.shared) / WEIGHTS),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
        "--seed", str(seed), "--output-dir", str(runs), "--accelerator", "cpu", *PAPER, *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    n_train = sum(1 for p in (Path(args.shared) / "data" / dataset / "train" / "good").iterdir() if p.is_file())
    return n_train * epochs / seconds


@torch.no_grad()
def level_maps(model, loader) -> tuple[list[torch.Tensor], float]:
    """Per-level maps of every image of ``loader`` (on the CPU) and the network's images/s."""
    batches, seconds, count = [], 0.0, 0
    for batch in loader:
        start = time.perf_counter()
        batches.append(model.model.layer_maps(batch["image"]))
        seconds += time.perf_counter() - start
        count += len(batch["image"])
    return [torch.cat(level) for level in zip(*batches)], count / seconds


def source_mask(sample, size: tuple[int, int]) -> np.ndarray:
    """The ground truth at the image's source size (height, width); all False for good images."""
    if sample.mask_path is None:
        return np.zeros(size, bool)
    mask = load_mask(sample.mask_path)
    return mask if mask.shape == size else resize_mask(mask, size)[0].numpy()


def with_map(model, levels: int, map_settings: MapSettings, calibration: str) -> None:
    """Give a loaded model another map setting over ``levels`` of its levels, and another image-threshold calibration."""
    net = model.model
    net.anomaly_map = AnomalyMap(map_settings, levels, net.tiler)
    net.reference = ReferenceNormalizer(levels, map_settings.map_normalization, net.size, net.anomaly_map.separate_score)
    net.settings = dataclasses.replace(net.settings, map=map_settings, calibration=dataclasses.replace(
        net.settings.calibration, tail=CALIBRATIONS[calibration]))
    model.settings = net.settings


def _test_truth(samples) -> tuple[list[tuple[int, int]], list[np.ndarray], np.ndarray, np.ndarray]:
    """Source sizes (height, width), masks at those sizes, labels and whether each image has ground truth."""
    sizes = [(h, w) for (w, h), _ in (image_header(s.image_path) for s in samples)]
    masks = [source_mask(s, hw) for s, hw in zip(samples, sizes)]
    labels = np.array([s.label for s in samples], np.int8)
    has_mask = np.array([s.label == 0 or s.mask_path is not None for s in samples])
    return sizes, masks, labels, has_mask


def _figures(pred: TestPredictions, image_thr: float, pixel_thr: float) -> dict:
    """test.py's figures, and the masks' figures with the image threshold as the pixel threshold (a part is flagged
    iff its mask is not empty)."""
    figures = compute_metrics(pred, TestSettings().fpr_limit, image_threshold=image_thr, pixel_threshold=pixel_thr)
    with_mask = [i for i in range(len(pred.maps)) if pred.has_mask[i]]
    flat_maps = np.concatenate([pred.maps[i].ravel() for i in with_mask])
    flat_masks = np.concatenate([pred.masks[i].ravel() for i in with_mask])
    p, r, iou = overlap_at_threshold(flat_maps, flat_masks, image_thr)
    figures.update(pixel_precision_at_image_threshold=p, pixel_recall_at_image_threshold=r,
                   pixel_iou_at_image_threshold=iou)
    good = [m for m, y in zip(pred.maps, pred.labels) if y == 0]
    figures["good_pixel_fpr_at_threshold"] = (
        float(np.mean(np.concatenate([g.ravel() for g in good]) >= pixel_thr)) if good else math.nan
    )
    return figures


def evaluate(args: argparse.Namespace, dataset: str, seed: int, checkpoint: Path) -> tuple[list[dict], float]:
    """Every map setting on one checkpoint: figures per setting, and the network's inference images/s."""
    model = load_checkpoint(checkpoint)
    # the validation images of the run itself (a recipe may change --val-fraction): never its training images
    run_config = yaml.safe_load(Run.of_checkpoint(checkpoint).config.read_text())
    data = DataSettings(category=dataset, data_root=str(Path(args.shared) / "data"), batch_size=16,
                        num_workers=args.num_workers, val_fraction=run_config["data"]["val_fraction"])
    dm = MVTecDataModule(data, model.preprocessing(), seed)
    dm.setup("fit")
    val_levels, _ = level_maps(model, dm.val_dataloader())
    dm.setup("test")
    test_levels, infer_ips = level_maps(model, dm.test_dataloader())
    samples = dm.test_samples
    sizes, masks, labels, has_mask = _test_truth(samples)
    rows = []
    grid = itertools.product(
        args.fusions, args.sigmas, args.calibrations, args.normalizations, args.score_fractions, args.levels,
        args.score_levels,
    )
    for fusion, sigma, calibration, normalization, score_fraction, levels, score_levels in grid:
        try:
            keep = resolve_score_levels(_level_spec(levels), len(val_levels))
        except ConfigError as exc:
            raise SystemExit(f"error: --levels {levels}: {str(exc).split(': ', 1)[1]}") from None
        map_settings = MapSettings(fusion, sigma, normalization, score_fraction, _level_spec(score_levels))
        with_map(model, len(keep), map_settings, calibration)
        image_thr, pixel_thr, _ = model.calibrate_on([val_levels[i] for i in keep])
        maps, scores = model.model.anomaly_map([test_levels[i] for i in keep], model.model.size, model.model.reference)
        full = [resize_map(m[0], hw).numpy() for m, hw in zip(maps, sizes)]
        pred = TestPredictions(
            scores=scores.numpy().astype(np.float32), labels=labels, maps=full, masks=masks, has_mask=has_mask,
            defect_types=[s.defect_type for s in samples],
        )
        figures = _figures(pred, image_thr, pixel_thr)
        rows.append({"fusion": fusion, "sigma": sigma, "calibration": calibration, "normalization": normalization,
                     "score_fraction": score_fraction, "levels": levels, "score_levels": score_levels,
                     **{k: figures[k] for k in FIGURES}})
    return rows, infer_ips


def run_study(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = set()
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            done.add((row["dataset"], row["recipe"], row["seed"], row["image_size"], row["epochs"]))
    for dataset, recipe, seed in itertools.product(args.datasets, args.recipes, args.seeds):
        if (dataset, recipe, seed, args.image_size, args.epochs) in done:
            continue
        runs = out / "runs" / f"{recipe}_s{args.image_size}_e{args.epochs}" / f"seed{seed}"
        train_ips = train(args, dataset, recipe, seed, runs)
        rows, infer_ips = evaluate(args, dataset, seed, Runs(runs).latest_checkpoint(dataset))
        with results_path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"dataset": dataset, "recipe": recipe, "seed": seed, "image_size": args.image_size,
                                    "epochs": args.epochs, "train_img_s": train_ips, "infer_img_s": infer_ips,
                                    **row}) + "\n")
        print(f"{dataset} {recipe} seed {seed}: done (train {train_ips:.1f} img/s, infer {infer_ips:.1f} img/s)",
              flush=True)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


COLUMNS = {  # results key -> short column name
    "image_auroc": "img AUROC", "pixel_auroc": "px AUROC", "pixel_aupro": "AUPRO",
    "image_tpr_at_threshold": "img TPR@thr", "image_fpr_at_threshold": "img FPR@thr",
    "image_tpr_at_1pct_fpr": "TPR@1%FPR", "image_tpr_at_5pct_fpr": "TPR@5%FPR",
    "pixel_precision_at_threshold": "px prec@thr", "pixel_recall_at_threshold": "px rec@thr",
    "pixel_iou_at_threshold": "px IoU@thr", "good_pixel_fpr_at_threshold": "good px FPR@thr",
}


def report(args: argparse.Namespace) -> str:
    """One Markdown table per data set: mean ± sd over seeds of every recipe and map setting."""
    rows = [json.loads(line) for line in (Path(args.out) / "results.jsonl").read_text().splitlines()]
    setting = lambda r: (  # noqa: E731
        r["recipe"], r["image_size"], r["epochs"], r["fusion"], r["sigma"], r["calibration"], r.get("normalization", "none"),
        r.get("score_fraction", 0.0), r.get("levels", "all"), r.get("score_levels", "all"),
    )
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        subset = [r for r in rows if r["dataset"] == dataset]
        header = ["recipe", "size", "epochs", "fusion", "σ", "calibration", "normalization", "score", "levels",
                  "score levels", "seeds",
                  *COLUMNS.values(),
                  "train img/s", "infer img/s"]
        lines = [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key in sorted({setting(r) for r in subset}, key=str):
            group = [r for r in subset if setting(r) == key]
            train_ips = [r["train_img_s"] for r in group if r["train_img_s"] > 0]
            _, side, epochs = recipe_flags(key[0], key[1], key[2])
            score = "max" if key[7] == 0 else f"top {key[7]:.0%}"
            cells = [key[0], str(side), str(epochs), key[3], f"{key[4]:g}", key[5], key[6], score, key[8], key[9],
                     str(len(group)),
                     *(_mean_sd([r.get(c) for r in group]) for c in COLUMNS),
                     f"{np.mean(train_ips):.1f}" if train_ips else "n/a",
                     f"{np.mean([r['infer_img_s'] for r in group]):.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        run_study(args)
    table = report(args)
    print(table)
    if args.report:
        Path(args.report).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
