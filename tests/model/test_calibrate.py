"""The image threshold's promise: the conformal order statistic, what n scores support, and the tail models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from stfpm.core.errors import ConfigError
from stfpm.core.options import config_values
from stfpm.model.calibrate import (
    conformal_promise,
    conformal_threshold,
    cross_fits,
    gumbel_quantile,
    image_threshold,
    pareto_quantile,
    supported_rate,
)
from stfpm.model.settings import CalibrationSettings


@pytest.mark.parametrize("n", [4, 20, 50, 99, 110, 1000])
def test_the_conformal_threshold_keeps_its_promise_on_new_scores_of_the_same_law(n) -> None:
    """Over many draws of n calibration scores, the share of new scores at or above the threshold is the promise
    (exactly, in expectation), and the promise is the target wherever n scores support it."""
    rng = np.random.default_rng(n)
    target = 0.01
    _, promise = conformal_threshold(rng.random(n), target)
    if n + 1 < 1 / target:
        assert promise == pytest.approx(supported_rate(n))
    else:
        assert target - 1 / (n + 1) < promise <= target
    exceed = [float(np.mean(rng.random(2000) >= conformal_threshold(rng.random(n), target)[0])) for _ in range(400)]
    assert np.mean(exceed) == pytest.approx(promise, abs=0.15 * promise + 0.001)
    assert conformal_promise(n, target) == promise


def test_the_conformal_threshold_is_the_kth_smallest_score() -> None:
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert conformal_threshold(scores, 0.5) == (3.0, 3 / 6)  # k = ceil(6 * 0.5) = 3: 3 of 6 exceed it
    assert conformal_threshold(scores, 0.01) == (5.0, 1 / 6)  # the target is beyond 5 scores: their maximum
    assert conformal_threshold(scores, 0.9) == (1.0, 5 / 6)
    assert math.isnan(conformal_threshold(np.array([]), 0.01)[0])


def test_a_target_the_scores_cannot_support_is_stated_not_promised() -> None:
    scores = np.linspace(0, 1, 20)
    plain = image_threshold(scores, CalibrationSettings(target_false_alarms=0.01))
    assert plain.value == 1.0 and plain.promise == pytest.approx(1 / 21) and plain.support == 20
    assert not plain.extrapolated
    for tail in ("gumbel", "pareto"):
        fitted = image_threshold(scores, CalibrationSettings(target_false_alarms=0.01, tail=tail))
        assert fitted.extrapolated and fitted.promise == 0.01 and fitted.value > 1.0
    supported = image_threshold(np.linspace(0, 1, 300), CalibrationSettings(target_false_alarms=0.01, tail="gumbel"))
    assert not supported.extrapolated  # enough scores: no tail model needed
    assert supported.promise <= 0.01


def test_the_gumbel_tail_is_the_fitted_quantile() -> None:
    rng = np.random.default_rng(0)
    scores = rng.gumbel(loc=1.0, scale=0.2, size=400)
    beta = np.std(scores, ddof=1) * math.sqrt(6) / math.pi
    mu = np.mean(scores) - np.euler_gamma * beta
    assert gumbel_quantile(scores, 0.01) == pytest.approx(stats.gumbel_r.ppf(0.99, loc=mu, scale=beta))
    assert gumbel_quantile(scores, 0.01) == pytest.approx(stats.gumbel_r.ppf(0.99, 1.0, 0.2), rel=0.1)
    assert math.isnan(gumbel_quantile(scores[:2], 0.01))


@pytest.mark.parametrize("shape", [-0.2, 0.0, 0.3])
def test_the_pareto_tail_lands_near_the_true_quantile_of_a_pareto_tail(shape) -> None:
    """Scores whose upper half is a generalised Pareto law (scipy's shape c = -Hosking's k): the fitted quantile
    at 0.1% is near the true one."""
    rng = np.random.default_rng(1)
    law = stats.genpareto(c=shape, loc=2.0, scale=0.5)
    upper = law.rvs(size=4000, random_state=rng)
    scores = np.concatenate([rng.uniform(0.0, 2.0, size=4000), upper])
    truth = law.ppf(1 - 0.001 * 2)  # half the scores are in the tail
    assert pareto_quantile(scores, 0.001) == pytest.approx(truth, rel=0.1)
    assert math.isnan(pareto_quantile(scores[:5], 0.01))


def test_auto_cross_fits_only_when_the_validation_split_cannot_support_the_target() -> None:
    auto = CalibrationSettings()
    assert auto.calibration == "auto" and auto.target_false_alarms == 0.02
    assert cross_fits(auto, 7) and cross_fits(auto, 48)
    assert not cross_fits(auto, 49) and not cross_fits(auto, 110)  # 1/50: the 2% asked
    one = CalibrationSettings(target_false_alarms=0.01)
    assert cross_fits(one, 98) and not cross_fits(one, 99)
    assert not cross_fits(CalibrationSettings(calibration="holdout"), 7)
    assert cross_fits(CalibrationSettings(calibration="cross-fit"), 500)
    assert not cross_fits(CalibrationSettings(target_false_alarms=0.05), 19)


def test_the_options_of_earlier_versions_are_read_in_todays_words() -> None:
    old = {"calibration": {"image_threshold_quantile": 0.95, "calibration": "gumbel", "pixel_threshold_quantile": 0.9}}
    values = config_values(old, [CalibrationSettings], {}, "old.yaml")
    assert values == {"target_false_alarms": 0.05, "tail": "gumbel", "calibration": "holdout",
                      "pixel_threshold_quantile": 0.9}
    with pytest.raises(ConfigError, match="--calibration must be one of auto, holdout, cross-fit"):
        CalibrationSettings(calibration="magic")
    with pytest.raises(ConfigError, match="--tail must be one of none, gumbel, pareto"):
        CalibrationSettings(tail="normal")


def test_min_steps_raise_the_epochs_of_few_images_only() -> None:
    from stfpm.training.settings import TrainerSettings

    t = TrainerSettings(epochs=8, min_steps=50)
    assert t.epochs_for(20, 32) == 50  # one step per epoch
    assert t.epochs_for(50, 32) == 25  # two
    assert t.epochs_for(440, 32) == 8  # 14 steps per epoch: 112 steps already
    assert TrainerSettings(epochs=8, min_steps=0).epochs_for(20, 32) == 8
    assert t.length(20, 32)["max_epochs"] == 50 and t.length(20, 32)["max_steps"] == -1


def test_train_py_is_told_when_the_scores_cannot_support_the_target() -> None:
    from stfpm.model.calibrate import few_images_warning
    from stfpm.model.settings import ModelSettings
    from stfpm.model.torch_model import STFPMModel

    def warning(count: int, **options) -> str | None:
        model = STFPMModel(ModelSettings.of(backbone="resnet18", teacher_weights=None, image_size=32,
                                            map_normalization="none", **options))
        return few_images_warning(count, model, "validation images")

    assert "rests on 20 out-of-sample good scores (validation images): it can promise at best 4.8%" in warning(20)
    assert "can promise at best 2%" in warning(48)
    assert warning(49) is None  # 1/50: the 2% asked
    assert warning(99, target_false_alarms=0.01) is None  # 1/100: the 1% asked
    assert "at best 1%" in warning(98, target_false_alarms=0.01)
    assert warning(20, tail="gumbel") is None  # extrapolated: the promise is the target
    assert warning(20, target_false_alarms=0.05) is None
