"""The shape of the code, checked: every package inside the import contract, short commands, short functions, and
each model and training option named in as few files as possible (its declaration and its use)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import tomllib

from stfpm.model.settings import ModelSettings
from stfpm.training.settings import TrainerSettings

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stfpm"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MIGRATION = PACKAGE / "model" / "checkpoint_format.py"


def test_every_package_is_in_the_layers_of_the_import_contract() -> None:
    """`lint-imports` (in `make test`) checks the layers; a package missing from them would escape it."""
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    packages = {f"stfpm.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == layered
    assert contract["layers"][-1] == "stfpm.core" and contract["layers"][0] == "stfpm.cli"


@pytest.mark.parametrize("command", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_commands_only_parse_and_call(command: Path) -> None:
    assert len(command.read_text().splitlines()) <= 120


def test_no_function_is_longer_than_60_lines() -> None:
    long = []
    for source in SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{source.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long


def _names(path: Path) -> set[str]:
    """Identifiers of the code, and string literals that are one identifier (``hparams["lr"]``); not prose."""
    found = set()
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.NAME:
            found.add(token.string)
        elif token.type == tokenize.STRING:
            match = re.fullmatch(r"[rbuRBU]*(['\"])(\w+)\1", token.string)
            if match:
                found.add(match.group(2))
    return found


SAME_NAME_ELSEWHERE = {
    "seed": "the split's and the synthetic generator's seeds are parameters of their own functions",
    "output_dir": "test.py has an option of that name (where its results go)",
    "resume": "predict.py has an option of that name (continue a folder)",
}
"""Options whose name is also the name of something else, which this check cannot tell apart."""
OTHER_MEANING = {("image_size", "tools/synthetic.py"): "the side of the images the synthetic generator draws"}


def test_each_model_and_training_option_is_named_in_its_declaration_and_its_use() -> None:
    """At most 2 files under stfpm/ name an option (3 where the migration of older checkpoints names it)."""
    names = {source: _names(source) for source in SOURCES}
    too_many = {}
    for cls in (*ModelSettings.SECTIONS, TrainerSettings):
        for field, spec in cls.specs():
            if not spec.flag or field.name in SAME_NAME_ELSEWHERE:
                continue
            where = [s for s in SOURCES if field.name in names[s]
                     and (field.name, str(s.relative_to(PACKAGE))) not in OTHER_MEANING]
            if len(where) > 2 + (MIGRATION in where):
                too_many[field.name] = [str(s.relative_to(PACKAGE)) for s in where]
    assert not too_many
