"""One declaration per option: sections that mean something, read by every command from the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stfpm.cli.predict import build_parser as predict_parser
from stfpm.cli.test import build_parser as evaluate_parser
from stfpm.cli.train import build_parser as train_parser
from stfpm.config import SECTIONS, ConfigError, config_values, grouped, parse_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_every_option_is_declared_in_exactly_one_section_of_its_command() -> None:
    for build in (train_parser, evaluate_parser, predict_parser):
        parser = build()
        dests = [d for dests in parser.sections.values() for d in dests]
        assert len(dests) == len(set(dests))
        assert set(parser.sections) <= set(SECTIONS)
    shared = {"engine", "thresholds"}
    assert evaluate_parser().sections.keys() & predict_parser().sections.keys() == shared
    assert evaluate_parser().sections["engine"] == predict_parser().sections["engine"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_command_reads_the_shipped_configs(config) -> None:
    data = yaml.safe_load(config.read_text())
    assert set(data) <= set(SECTIONS) and all(isinstance(v, dict) for v in data.values())  # sections only
    train = parse_args(train_parser(), ["--config", str(config)])
    for section, options in data.items():
        for key, value in options.items():
            if section in train_parser().sections:
                assert getattr(train, key) == value, (config.name, key)
    parse_args(evaluate_parser(), ["--config", str(config)])  # training sections are not theirs: left alone
    parse_args(predict_parser(), ["--config", str(config)])


def test_default_config_holds_the_defaults(tmp_path) -> None:
    """configs/default.yaml states the defaults: every value in it is the parser's own default."""
    defaults = train_parser().parse_args([])
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    for options in data.values():
        for key, value in options.items():
            assert getattr(defaults, key) == value, key


def test_official_config_pins_every_choice_of_the_paper() -> None:
    """configs/official.yaml stays the paper's recipe whatever our defaults become: every option that departs from
    the paper has its paper value written in the file."""
    args = parse_args(train_parser(), ["--config", str(REPO / "configs" / "official.yaml")])
    from stfpm.model.lightning_model import PAPER_VALUES

    paper = {
        **PAPER_VALUES, "backbone": "resnet18", "image_size": 256, "keep_aspect": False, "tile_size": None,
        "batch_size": 32, "checkpoint_metric": "val_map_mean", "lr": 0.4, "momentum": 0.9, "weight_decay": 1e-4,
        "epochs": 100, "student_backbone": None, "layers": None,
    }
    assert {key: getattr(args, key) for key in paper} == paper
    written = {key for options in yaml.safe_load((REPO / "configs" / "official.yaml").read_text()).values()
               for key in options}
    assert {"augment", "map_normalization", "score_fraction", "map_sigma", "lr_schedule", "checkpoint_metric"} <= written


def test_a_saved_run_config_round_trips_through_every_command(tmp_path) -> None:
    parser = train_parser()
    args = parse_args(parser, ["--category", "carpet", "--image-size", "64", "96", "--lr", "0.1"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(grouped(parser, args), sort_keys=False))
    again = parse_args(train_parser(), ["--config", str(saved)])
    assert vars(again) == {**vars(args), "config": str(saved)}
    parse_args(evaluate_parser(), ["--config", str(saved)])


def test_sections_are_checked(tmp_path) -> None:
    parser = train_parser()
    with pytest.raises(ConfigError, match="unknown section"):
        config_values(parser, {"modle": {"backbone": "resnet18"}}, "c.yaml")
    with pytest.raises(ConfigError, match="unknown option 'batch_size' in section 'model'"):
        config_values(parser, {"model": {"batch_size": 4}}, "c.yaml")
    assert config_values(parser, {"engine": {"precision": "bf16-mixed"}}, "c.yaml") == {}  # test/predict's
    assert config_values(evaluate_parser(), {"engine": {"batch_size": 8}}, "c.yaml") == {"batch_size": 8}
    assert config_values(parser, {"lr": 0.1}, "c.yaml") == {"lr": 0.1}  # a top-level option of this command
