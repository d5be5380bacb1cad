"""The bottom layer: one-line errors, atomic writes with the user's permissions, the run-folder layout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from stfpm.core.errors import CheckpointError, one_line
from stfpm.core.files import atomic_write_text
from stfpm.core.layout import Run, Runs


def test_one_line_folds_any_error_into_one_line() -> None:
    assert one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert one_line(RuntimeError("first\nsecond"), first_line=True) == "first"
    assert one_line(OSError()) == "OSError"
    assert one_line("x" * 50, limit=10) == "x" * 10


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_give_files_the_permissions_of_the_users_umask(tmp_path, umask, mode) -> None:
    """Outputs are readable by colleagues and services as the umask allows (a temporary file alone would be 0600)."""
    target = tmp_path / "out" / "results.json"
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from stfpm.core.files import atomic_write_text; "
            "atomic_write_text(sys.argv[1], 'x')")
    subprocess.run([sys.executable, "-c", code, str(target), oct(umask)], check=True)
    assert stat.S_IMODE(target.stat().st_mode) == mode and target.read_text() == "x"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _run(root, category: str, version: int, names=("best.ckpt", "last.ckpt"), age: float = 0.0) -> Run:
    run = Run(root / category / f"version_{version}")
    run.checkpoints.mkdir(parents=True)
    for name in names:
        (run.checkpoints / name).write_bytes(b"x")
        stamp = time.time() - age
        os.utime(run.checkpoints / name, (stamp, stamp))
    return run


def test_the_run_layout_finds_runs_and_their_files(tmp_path) -> None:
    old = _run(tmp_path, "carpet", 2, age=100)
    newest = _run(tmp_path, "carpet", 10, names=("last.ckpt",), age=50)
    other = _run(tmp_path, "grid", 0, age=10)
    (tmp_path / "carpet" / "version_x").mkdir()  # not a run
    (tmp_path / "empty" / "version_0").mkdir(parents=True)  # a run without checkpoints
    runs = Runs(tmp_path)
    assert [r.version for r in runs.category("carpet")] == [10, 2]
    assert runs.latest_checkpoint("carpet") == newest.last  # the highest version, best else last
    assert runs.trained_categories() == ["carpet", "grid"]
    assert runs.latest_of_any() == other.checkpoints / "best.ckpt"  # written last
    assert runs.resolve(None, "carpet") == newest.last and runs.resolve("x.ckpt", "carpet").name == "x.ckpt"
    assert Run.of_checkpoint(old.checkpoints / "best.ckpt") == old and old.config == old.folder / "config.yaml"
    assert Run.of_checkpoint(tmp_path / "model.ckpt").folder == tmp_path and Run(tmp_path).version is None
    assert old.problems("test").name == "data_problems_test.json"
    with pytest.raises(CheckpointError, match="no trained run of category 'wood'"):
        runs.latest_checkpoint("wood")
    with pytest.raises(CheckpointError, match="no trained run under"):
        Runs(tmp_path / "nowhere").latest_of_any()
