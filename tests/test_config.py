"""One declaration per option: typed sections that check their values, YAML files every command reads, and an
option reference generated from the sections."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stfpm.cli import commands, parse_command
from stfpm.cli.reference import reference
from stfpm.core.errors import ConfigError
from stfpm.core.options import config_values
from stfpm.model.settings import MapSettings, ModelSettings
from stfpm.training.fitting import TrainSettings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TRAIN, TEST, PREDICT = "train.py", "test.py", "predict.py"


def _known() -> dict[str, list[str]]:
    return {cls.name: cls.names() for sections in commands().values() for cls in sections}


def test_every_option_is_declared_once_in_one_section_and_sections_are_unique() -> None:
    table = commands()
    classes = {cls for sections in table.values() for cls in sections}
    assert len({cls.name for cls in classes}) == len(classes)  # a section name means one thing
    for command, sections in table.items():
        names = [n for cls in sections for n in cls.names()]
        assert len(names) == len(set(names)), command  # one flag, one field
    shared = {cls.name for cls in table[TEST]} & {cls.name for cls in table[PREDICT]}
    assert shared == {"engine", "devices", "runtime", "thresholds"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_command_reads_the_shipped_configs(config) -> None:
    data = yaml.safe_load(config.read_text())
    assert all(isinstance(v, dict) for v in data.values())  # sections only
    train = parse_command(TRAIN, "", ["--config", str(config)])
    for section, options in data.items():
        for key, value in options.items():
            got = getattr(train[section], key)
            assert got == value or [got] == value, (config.name, key)
    parse_command(TEST, "", ["--config", str(config)])  # training sections are not theirs: left alone
    parse_command(PREDICT, "", ["--config", str(config)])


def test_default_config_holds_the_defaults() -> None:
    """configs/default.yaml states the defaults: every value in it is the section's own default."""
    defaults = TrainSettings()
    by_name = {s.name: s for s in defaults.sections()}
    for section, options in yaml.safe_load((REPO / "configs" / "default.yaml").read_text()).items():
        for key, value in options.items():
            assert getattr(by_name[section], key) == value, key


def test_official_config_states_every_model_option() -> None:
    """configs/official.yaml is the paper's recipe whatever the defaults become: it writes every option of the model
    (and the checkpoint migration takes the value of an option an old checkpoint lacks from it)."""
    data = yaml.safe_load((REPO / "configs" / "official.yaml").read_text())
    for cls in ModelSettings.SECTIONS:
        written = set(data.get(cls.name, {}))
        flags = {field.name for field, spec in cls.specs() if spec.flag}
        assert flags <= written, (cls.name, flags - written)
    recipe = TrainSettings.from_sections(parse_command(TRAIN, "", ["--config", str(REPO / "configs" / "official.yaml")]))
    assert recipe.model.map.score_fraction == 0.0 and recipe.model.map.map_normalization == "none"
    assert recipe.trainer.checkpoint_metric == "val_map_mean"


def test_a_saved_run_config_round_trips_through_every_command(tmp_path) -> None:
    settings = TrainSettings.from_sections(
        parse_command(TRAIN, "", ["--category", "carpet", "--image-size", "64", "96", "--lr", "0.1", "--devices", "0,1"]))
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(settings.run_config("carpet"), sort_keys=False))
    again = TrainSettings.from_sections(parse_command(TRAIN, "", ["--config", str(saved)]))
    assert again == settings and again.model.input.image_size == [64, 96] and again.devices.devices == [0, 1]
    assert parse_command(TEST, "", ["--config", str(saved)])["devices"].devices == [0, 1]  # a shared section


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("optimizer:\n  lr: 0.1\n  momentum: 0.5\n")
    settings = parse_command(TRAIN, "", ["--config", str(config), "--lr", "0.2"])["optimizer"]
    assert (settings.lr, settings.momentum, settings.weight_decay) == (0.2, 0.5, 1e-4)


def test_sections_are_checked() -> None:
    sections = commands()[TRAIN]
    with pytest.raises(ConfigError, match="unknown section"):
        config_values({"modle": {"backbone": "resnet18"}}, sections, _known(), "c.yaml")
    with pytest.raises(ConfigError, match="unknown option 'batchsize' in section 'data'"):
        config_values({"data": {"batchsize": 4}}, sections, _known(), "c.yaml")
    with pytest.raises(ConfigError, match="'lr' belongs in section 'optimizer', not 'data'"):
        config_values({"data": {"lr": 0.1}}, sections, _known(), "c.yaml")
    assert config_values({"engine": {"batch_size": 8}}, sections, _known(), "c.yaml") == {}  # test/predict's
    assert config_values({"engine": {"batch_size": 8}}, commands()[TEST], _known(), "c.yaml") == {"batch_size": 8}
    with pytest.raises(ConfigError, match="is not a section"):
        config_values({"lr": 0.1}, sections, _known(), "c.yaml")


def test_a_config_file_of_an_earlier_version_is_read_by_option_name() -> None:
    """Earlier versions wrote `model:`, `data:` (with the input size) and `trainer:` (with the devices) sections."""
    old = {"data": {"image_size": 64, "batch_size": 4, "augment": "light"}, "model": {"backbone": "resnet18",
           "score_fraction": 0.0}, "trainer": {"epochs": 3, "accelerator": "cpu"}, "engine": {"batch_size": 8}}
    values = config_values(old, commands()[TRAIN], _known(), "old.yaml")
    assert values == {"image_size": 64, "batch_size": 4, "augment": "light", "backbone": "resnet18",
                      "score_fraction": 0.0, "epochs": 3, "accelerator": "cpu"}
    assert config_values(old, commands()[TEST], _known(), "old.yaml") == {"batch_size": 8}
    with pytest.raises(ConfigError, match="unknown option 'no_such'"):
        config_values({"model": {"no_such": 1}}, commands()[TRAIN], _known(), "old.yaml")


@pytest.mark.parametrize("options, needle", [
    ({"score_fraction": 1.0}, "--score-fraction"),
    ({"map_sigma": -1.0}, "--map-sigma"),
    ({"map_fusion": "max"}, "--map-fusion must be one of product, sum"),
    ({"score_levels": "finest"}, "--score-levels"),
    ({"score_levels": [True]}, "--score-levels"),
])
def test_settings_check_their_values_however_they_are_made(options, needle) -> None:
    """The same checks from flags, files and Python: a settings object cannot hold a value out of range."""
    with pytest.raises(ConfigError, match=needle):
        MapSettings(**options)
    with pytest.raises(ConfigError, match=needle):
        ModelSettings.of(**options)


def test_score_levels_are_read_from_flags_and_files_alike() -> None:
    assert MapSettings(score_levels=["1", "2"]).score_levels == [1, 2]
    assert MapSettings(score_levels=2).score_levels == [2]
    assert MapSettings(score_levels=["coarser"]).score_levels == "coarser"
    assert ModelSettings.of(backbone="resnet18", score_levels="coarser").resolved().map.score_levels == [1, 2]
    with pytest.raises(ConfigError, match="indices 0 .the finest. to 2"):
        ModelSettings.of(backbone="resnet18", score_levels=[3]).resolved()


def test_model_settings_round_trip_through_a_checkpoint_record() -> None:
    settings = ModelSettings.of(backbone="resnet18", image_size=[64, 96], tile_size=64, map_sigma=2.0).resolved()
    assert ModelSettings.from_dict(yaml.safe_load(yaml.safe_dump(settings.as_dict()))) == settings
    with pytest.raises(ConfigError, match="unknown option 'lerning_rate'"):
        settings.replace(lerning_rate=0.1)


def test_the_option_reference_is_generated_from_the_sections() -> None:
    assert (REPO / "docs" / "options.md").read_text() == reference(), "run: python -m stfpm.cli.reference > docs/options.md"
    for sections in commands().values():
        for cls in sections:
            for field, spec in cls.specs():
                if spec.flag:
                    assert f"`--{field.name.replace('_', '-')}`" in reference()
