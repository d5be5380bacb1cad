"""The options of test.py: what to evaluate and where the results go."""

from __future__ import annotations

from dataclasses import dataclass

from stfpm.core.options import Section, number, option
from stfpm.data.settings import DEFAULT_DATA_ROOT


@dataclass(frozen=True)
class TestSettings(Section):
    __test__ = False  # not a pytest test class despite the name

    name = "test"
    about = "test.py: what to evaluate and where the results go"

    category: str | None = option(None, "category to evaluate (its latest run), or `all` (default: the latest run of "
                                  "any category)", kind=str)
    checkpoint: str | None = option(None, "evaluate this checkpoint instead of the latest run", kind=str)
    data_root: str | None = option(None, f"dataset root (default: the one recorded at training, else {DEFAULT_DATA_ROOT})",
                                   kind=str)
    runs_dir: str = option("runs", "where train.py wrote its runs (its --output-dir)", kind=str)
    output_dir: str | None = option(None, "where results go (default: next to the checkpoint, in its run folder)",
                                    kind=str, path="folder")
    fpr_limit: float = option(0.3, "AUPRO integrates up to this false positive rate", kind=float,
                              check=number(0, 1, low_open=True))
    report: bool = option(True, "write report.html beside results.json: figures, plots, galleries of misses and false "
                          "alarms, a threshold explorer (one file, opens offline)", kind=bool, negatable=True)
    save_images: bool = option(False, "also write per-image panels, ROC and histogram", kind=bool)
    strict: bool = option(False, "stop on any data problem instead of leaving unusable files out", kind=bool)
