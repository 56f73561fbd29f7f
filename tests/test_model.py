"""The per-series time-series model (adjobs.model over adjobs._model).

Behaviour on synthetic series with known answers, and exactness: save/restore and stepping
series together or alone give bit-identical outputs. Randomness is seeded (SEED, printed).
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from conftest import SHARED

from adjobs import _model, nab, scoring
from adjobs.model import DEFAULT_PARAMS, OUTPUTS, SeriesModels, combined_probability
from bench.nab import model_outputs

SEED = 20240611
SPAN = 300  # 5-minute buckets
DAY_BUCKETS = 86400 // SPAN
START = 1_700_000_000 // SPAN - (1_700_000_000 // SPAN) % DAY_BUCKETS  # a midnight


def rng(offset: int = 0) -> np.random.Generator:
    print(f"seed {SEED + offset}")
    return np.random.default_rng(SEED + offset)


def run(values, side: int = 0, buckets=None, span: int = SPAN) -> dict[str, np.ndarray]:
    """One series through a fresh model in one call; outputs as 1-D arrays."""
    models = SeriesModels(span, 1)
    models.add_series(side)
    values = np.asarray(values, dtype=np.float64)
    if buckets is None:
        buckets = START + np.arange(len(values))
    out = models.step(values.reshape(-1, 1), buckets)
    return {k: v[:, 0] for k, v in out.items()}


def same(a: dict, b: dict) -> bool:
    """Bit-identical outputs (NaN where NaN)."""
    return all(np.array_equal(a[k], b[k], equal_nan=True) for k in OUTPUTS)


# --------------------------------------------------------------------------------------------
# Behaviour


def test_spike_in_noise_is_anomalous_and_its_neighbours_are_not():
    # noise held within 2 sigma, so that "the neighbours are ordinary" is a fair demand of 40
    # rows (unclipped Gaussian noise reaches 3 sigma in one row of 370, p ~ 0.003)
    x = 100.0 + np.clip(rng().standard_normal(2000), -2.0, 2.0)
    x[1500] += 15.0
    out = run(x)
    p = combined_probability(out["p_single"], out["p_multi"])
    assert out["p_single"][1500] < 1e-4
    around = np.r_[1480:1500, 1501:1521]
    assert out["p_single"][around].min() > 0.01
    assert p[1480:1500].min() > 0.01
    # the spike neither inflates the scale nor moves the level: the rows after it and a second
    # spike as large are judged as the first one was
    assert p[1501:1521].min() > 0.01
    y = x.copy()
    y[1600] += 15.0
    assert run(y)["p_single"][1600] < 1e-4


def test_high_only_series_ignores_dips():
    x = 100.0 + rng(1).standard_normal(1500)
    x[1000] -= 15.0
    x[1200] += 15.0
    high = run(x, side=1)
    both = run(x, side=0)
    assert both["p_single"][1000] < 1e-4
    assert high["p_single"][1000] >= 0.5
    assert high["p_single"][1200] < 1e-4
    low = run(x, side=-1)
    assert low["p_single"][1000] < 1e-4
    assert low["p_single"][1200] >= 0.5


def test_daily_seasonality_is_learned():
    days = 10
    n = days * DAY_BUCKETS
    phase = 2.0 * np.pi * np.arange(n) / DAY_BUCKETS
    truth = 50.0 + 10.0 * np.sin(phase)
    x = truth + 0.5 * rng(2).standard_normal(n)
    peak = 7 * DAY_BUCKETS + DAY_BUCKETS // 4  # day 8, sin = 1
    trough = 8 * DAY_BUCKETS + 3 * DAY_BUCKETS // 4  # day 9, sin = -1
    x_anomaly = x.copy()
    x_anomaly[trough] = 60.0  # the peak's value at the trough's time
    out = run(x_anomaly)
    p = combined_probability(out["p_single"], out["p_multi"])
    # around the peak of day 8 nothing is unusual, and the model expects the peak
    window = np.r_[peak - 12:peak + 13]
    assert p[window].min() > 1e-3
    assert np.abs(out["typical"][window] - truth[window]).max() < 1.5
    assert out["p_single"][trough] < 1e-4
    # the interval is the residual noise, not the daily swing
    width = out["upper"][8 * DAY_BUCKETS:] - out["lower"][8 * DAY_BUCKETS:]
    assert np.median(width) < 6.0


def test_flat_data_is_never_anomalous_until_it_moves_by_one_percent():
    x = np.full(1200, 50.0)
    x[1100] = 50.5
    out = run(x)
    p = combined_probability(out["p_single"], out["p_multi"])
    assert np.all(np.isfinite(p))
    assert p[:1100].min() >= 0.05
    assert out["p_single"][1100] < 1e-4
    assert out["p_single"][1100] > 0.0  # minimum coefficient of variation: finite evidence


def test_level_shift_is_flagged_then_learned():
    x = 100.0 + rng(3).standard_normal(2000)
    x[1000:] += 10.0
    out = run(x)
    p = combined_probability(out["p_single"], out["p_multi"])
    assert out["p_single"][1000] < 1e-4
    # accepted: a hundred buckets later the new level is ordinary
    later = p[1100:2000]
    assert np.median(later) > 0.2
    assert np.mean(later < 0.01) < 0.03  # as often as noise alone would
    assert later.min() > 1e-4
    assert np.median(np.abs(out["typical"][1100:] - 110.0)) < 1.0


def test_warm_up_gives_no_small_probability():
    x = np.array([1.0, 1000.0, -5.0, 3.0, 1e6, 7.0])
    out = run(x)
    assert np.all(out["p_single"] >= 0.05)
    assert np.all(out["p_multi"] >= 0.05)


def test_nan_buckets_are_skipped():
    x = 100.0 + rng(4).standard_normal(800)
    x[700] += 12.0
    gaps = np.zeros(len(x), dtype=bool)
    gaps[[5, 100, 101, 102, 450, 699]] = True
    with_nan = x.copy()
    with_nan[gaps] = np.nan
    buckets = START + np.arange(len(x))
    a = run(with_nan, buckets=buckets)
    # the same rows without the empty buckets (bucket numbers jump over them)
    b = run(x[~gaps], buckets=buckets[~gaps])
    assert np.all(np.isnan(a["p_single"][gaps])) and np.all(np.isnan(a["p_multi"][gaps]))
    assert np.all(np.isfinite(a["typical"][gaps]))  # still says what it expected
    for key in OUTPUTS:
        assert np.array_equal(a[key][~gaps], b[key], equal_nan=True), key
    assert a["p_single"][700] < 1e-4


# --------------------------------------------------------------------------------------------
# Exactness


def _series_block(n: int, seed_offset: int) -> np.ndarray:
    g = rng(seed_offset)
    t = np.arange(n)
    cols = [
        10.0 + g.standard_normal(n),
        50.0 + 10.0 * np.sin(2 * np.pi * t / DAY_BUCKETS) + g.standard_normal(n),
        np.where(g.random(n) < 0.05, 20.0, 0.0),
        np.full(n, 3.0),
    ]
    x = np.stack(cols, axis=1)
    x[g.random(x.shape) < 0.03] = np.nan
    x[n // 2, 0] += 30.0
    x[n // 3:, 1] += 25.0
    return x


@pytest.mark.parametrize("splits", [[1], [700], [3, 4, 5, 1500], [287, 288, 289, 2000, 2001]])
def test_save_and_restore_is_bit_identical(splits):
    n = 2 * DAY_BUCKETS + 600
    x = _series_block(n, 5)
    buckets = START + np.arange(n) + (np.arange(n) > 900) * 37  # a jump over empty buckets
    sides = [0, 1, 0, -1]

    whole = SeriesModels(SPAN, 1)
    for side in sides:
        whole.add_series(side)
    expected = whole.step(x, buckets)

    parts = []
    models = SeriesModels(SPAN, 2)
    for side in sides:
        models.add_series(side)
    bounds = [0, *splits, n]
    for lo, hi in itertools.pairwise(bounds):
        parts.append(models.step(x[lo:hi], buckets[lo:hi]))
        # through bytes, as a job would persist it
        buffer = io.BytesIO()
        np.savez(buffer, **models.state())
        buffer.seek(0)
        with np.load(buffer) as saved:
            models = SeriesModels.from_state(dict(saved))
    got = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS}
    assert same(got, expected)
    final = models.state()
    for key, value in whole.state().items():
        assert np.array_equal(final[key], value, equal_nan=True), key


def test_long_clean_history_makes_a_large_deviation_very_unlikely():
    # 1900 buckets of Gaussian noise: the light-tailed shape has earned its weight, so an
    # 8-sigma value is as unlikely as a Gaussian says (~1e-15). Counted once (shape_evidence
    # 1, the mixture of the first release) the heavy shapes kept it near 1e-6, which the
    # probability cap turns into a middling score. Ordinary values stay ordinary either way.
    x = rng(7).normal(100.0, 2.0, 2000)
    x[1900] = 116.0
    for evidence, spike_below, spike_above in ((10.0, 1e-12, 0.0), (1.0, 1e-5, 1e-8)):
        models = SeriesModels(SPAN, 1, {"shape_evidence": evidence})
        models.add_series(0)
        p = models.step(x.reshape(-1, 1), START + np.arange(2000))["p_single"][:, 0]
        assert spike_above < p[1900] < spike_below, (evidence, p[1900])
        assert np.delete(p[500:], 1400).min() > 1e-5


def test_a_state_saved_by_the_first_release_keeps_its_behaviour():
    # The first release's state has neither the parameters added since (shape_evidence,
    # phase_outlier_min, count_variance, slow_multi_bucket, ..., median_multi_bucket) nor
    # the daily outlier habits, the usual record count and the slow-level multi-bucket
    # features; it restores with the values that reproduce how its job was created and
    # steps exactly like a model made with them, record counts or not.
    x = _series_block(2 * DAY_BUCKETS, 2)
    counts = rng(3).integers(1, 40, size=x.shape).astype(float)
    buckets = START + np.arange(len(x))
    sides = [0, 1, 0, -1]
    old_params = {"shape_evidence": 1.0, "phase_outlier_min": 2.0, "count_variance": 0.0,
                  "slow_multi_bucket": 0.0, "spike_habit_window": 0.0, "spike_habit_min": 1.0,
                  "median_multi_bucket": 0.0}
    reference = SeriesModels(SPAN, 4, old_params)
    restored_from = SeriesModels(SPAN, 4, old_params)
    for models in (reference, restored_from):
        for side in sides:
            models.add_series(side)
    half = len(x) // 2
    reference_out = reference.step(x, buckets)
    restored_from.step(x[:half], buckets[:half])
    state = restored_from.state()
    state["params"] = state["params"][:-7]  # as the first release wrote it
    first = _model.layout(float(SPAN), 288, 168)
    state["scalars"] = state["scalars"][:, :first["scalars_first_release"]]
    state["ring"] = state["ring"][:, :first["ring_first_release"]]
    del state["daily_outliers"], state["daily_spikes"]
    restored = SeriesModels.from_state(state)
    assert restored.params == {**DEFAULT_PARAMS, **old_params}
    tail = restored.step(x[half:], buckets[half:], counts=counts[half:])
    assert same(tail, {k: v[half:] for k, v in reference_out.items()})
    with pytest.raises(ValueError, match="wrong number of parameters"):
        SeriesModels.from_state({**state, "params": state["params"][:-1]})


def test_a_mean_of_fewer_records_than_usual_is_judged_with_a_wider_distribution():
    # Means of 20 records of N(100, 5) each: the mean varies by 5 / sqrt(20). At bucket
    # 500 it is off by 4 of those: very unusual for 20 records, more so for 80, ordinary
    # for 2 (ES's count variance scale, usual / this bucket's records). Without counts, or
    # with count_variance off (jobs created before it), the count changes nothing.
    n = 600
    x = 100.0 + rng(11).normal(0.0, 5.0 / np.sqrt(20), n)
    x[500] = 100.0 + 4 * 5.0 / np.sqrt(20)
    buckets = START + np.arange(n)
    usual = np.full(n, 20.0)

    def p_at_500(records: float | None, switch: float) -> float:
        models = SeriesModels(SPAN, 1, {"count_variance": switch})
        models.add_series(0)
        models.step(x[:500, None], buckets[:500], counts=usual[:500, None])
        last = None if records is None else np.array([[records]])
        return float(models.step(x[500:501, None], buckets[500:501],
                                 counts=last)["p_single"][0, 0])

    few, usual_p, many, unknown = (p_at_500(c, 1.0) for c in (2.0, 20.0, 80.0, None))
    assert few > 0.05, few  # 4 / sqrt(10) = 1.3 sigma
    assert usual_p < 1e-3 and usual_p == unknown
    assert many < usual_p / 100, (many, usual_p)
    off = {p_at_500(c, 0.0) for c in (2.0, 20.0, 80.0, None)}
    assert off == {usual_p}


def test_a_spike_at_the_same_time_every_day_becomes_habitual_but_not_elsewhere():
    # 12 days of noise with a spike at 03:00 every day from day 3: after a few nights the
    # 03:00 spike is no news, while the same spike at 15:00 still is. Without the habit
    # (phase_outlier_min above 1, no spike habit) the nightly spike stays as unusual as a
    # new one.
    n = 12 * DAY_BUCKETS
    x = 10.0 + rng(11).standard_normal(n)
    night = np.arange(3 * DAY_BUCKETS, n, DAY_BUCKETS) + 3 * 12
    x[night] += 12.0
    odd = 11 * DAY_BUCKETS + 15 * 12
    x[odd] += 12.0
    p_habit = run(x)["p_single"]
    models = SeriesModels(SPAN, 1, {"phase_outlier_min": 2.0, "spike_habit_window": 0.0})
    models.add_series(0)
    p_plain = models.step(x.reshape(-1, 1), START + np.arange(n))["p_single"][:, 0]
    assert p_habit[night[-1]] > 0.05 > p_plain[night[-1]]
    assert p_habit[odd] < 1e-3 and p_plain[odd] < 1e-3


def test_a_nightly_spike_that_wanders_by_40_minutes_becomes_habitual_but_bursts_do_not():
    # A one-bucket spike every night at 03:00, give or take 40 minutes: too loose for the
    # phase habit (its phase and the next), but isolated spikes within 45 minutes of recent
    # ones make it part of the series. The same spike at 15:00 is still news, and so is a
    # burst at 03:00 from its second bucket on (only a bucket after an ordinary one can be
    # an isolated spike, and bursts never teach the habit).
    n = 12 * DAY_BUCKETS
    x = 10.0 + rng(13).standard_normal(n)
    wander = rng(14).integers(-8, 9, size=9)
    nights = np.arange(3, 12) * DAY_BUCKETS + 3 * 12 + wander
    x[nights[:-2]] += 12.0
    burst = nights[-2]
    x[burst:burst + 3] += 12.0
    x[nights[-1]] += 12.0
    odd = 11 * DAY_BUCKETS + 15 * 12
    x[odd] += 12.0

    def p_single(params: dict) -> np.ndarray:  # the phase habit off: this habit alone
        models = SeriesModels(SPAN, 1, {"phase_outlier_min": 2.0, **params})
        models.add_series(0)
        return models.step(x.reshape(-1, 1), START + np.arange(n))["p_single"][:, 0]

    p, p_plain = p_single({}), p_single({"spike_habit_window": 0.0})
    assert p[nights[-1]] > 0.05 and p_plain[nights[-1]] < 1e-3, (p[nights[-1]], p_plain[nights[-1]])
    assert p[odd] < 1e-3 and p_plain[odd] < 1e-3
    assert p[burst] > 0.05 and p[burst + 1:burst + 3].max() < 5e-3  # found from its second


@pytest.mark.parametrize("span", [60, 300, 3600])
def test_the_spike_habit_holds_at_any_span_and_never_hides_a_much_larger_spike(span):
    # A +12 spike at 03:00 every night for ten nights: at 60 s a phase holds 5 buckets, and
    # forgetting once a bucket instead of once a day kept the habit from forming. Then, on
    # day 12, +30 at 03:45 (several phases away, where only this habit reaches): it is news
    # as much as without the habit (+20, under twice the usual size, may be excused).
    day = 86400 // span
    n = 12 * day
    found = {}
    for size in (12.0, 20.0, 30.0):
        x = 10.0 + rng(15).standard_normal(n)
        nights = np.arange(1, 11) * day + 3 * 3600 // span
        x[nights] += 12.0
        late = 11 * day + (3 * 3600 + 45 * 60) // span
        x[late] += size
        for window in (2700.0, 0.0):
            models = SeriesModels(span, 1, {"phase_outlier_min": 2.0,
                                            "spike_habit_window": window})
            models.add_series(0)
            p = models.step(x.reshape(-1, 1), START * SPAN // span + np.arange(n))
            found[size, window] = p["p_single"][late, 0]
    assert found[12.0, 2700.0] > 0.05 and found[12.0, 2700.0] > 10 * found[12.0, 0.0]
    assert found[20.0, 2700.0] >= found[20.0, 0.0]
    assert found[30.0, 2700.0] == found[30.0, 0.0] < 1e-3


def test_an_incident_lasting_several_buckets_is_not_excused_by_its_own_first_bucket():
    # A shift of 8 sigma for 6 buckets on day 5: each bucket sits at the phase after the one
    # before, whose single outlier must not count as a habit (two are needed), so the
    # incident's buckets are judged exactly as with no habits at all.
    n = 6 * DAY_BUCKETS
    x = 10.0 + rng(12).standard_normal(n)
    start = 4 * DAY_BUCKETS + 100
    x[start:start + 6] += 8.0
    with_habits = run(x)["p_single"]
    models = SeriesModels(SPAN, 1, {"phase_outlier_min": 2.0})
    models.add_series(0)
    without = models.step(x.reshape(-1, 1), START + np.arange(n))["p_single"][:, 0]
    assert np.array_equal(with_habits[start:start + 6], without[start:start + 6])
    assert with_habits[start] < 1e-6 and with_habits[start + 1] < 1e-3


def test_probes_are_judged_against_the_state_their_cell_met_and_change_nothing():
    x = _series_block(2 * DAY_BUCKETS, 3)
    buckets = START + np.arange(len(x))
    sides = [0, 1, 0, -1]
    plain, probed = SeriesModels(SPAN, 4), SeriesModels(SPAN, 4)
    for models in (plain, probed):
        for side in sides:
            models.add_series(side)
    expected = plain.step(x, buckets)
    rows = np.array([500, 500, 500, 300, len(x) // 2, 2])
    series = np.array([1, 0, 1, 2, 0, 0])
    own = x[rows, series]
    values = np.array([own[0], own[1], expected["typical"][500, 1], own[3], own[4], own[5]])
    got = probed.step(x, buckets, probes=(rows, series, values))
    # the probes leave outputs and state exactly as without them
    assert same({k: got[k] for k in OUTPUTS}, expected)
    for key, value in plain.state().items():
        assert np.array_equal(probed.state()[key], value, equal_nan=True), key
    p = got["probe_p"]
    # a cell's own value probes to its own single-bucket probability, in the caller's order
    for j in (0, 1, 3, 4):
        if np.isfinite(own[j]):
            assert p[j] == expected["p_single"][rows[j], series[j]], j
    assert p[4] < 1e-6            # the planted +30 on series 0 at n // 2
    assert p[2] > 0.5             # the typical value is not unusual
    assert p[5] == 0.05 or p[5] == 1.0  # warm-up: nothing below 0.05 (or no value)
    with pytest.raises(ValueError, match="inside values"):
        probed.step(x[:1], buckets[-1:] + 1, probes=(np.array([1]), np.array([0]),
                                                      np.array([1.0])))


def test_series_stepped_together_equal_series_stepped_alone():
    n = 2 * DAY_BUCKETS + 300
    x = _series_block(n, 6)
    sides = [0, 1, -1, 0]
    buckets = START + np.arange(n)
    together = SeriesModels(SPAN, 1)
    for side in sides:
        together.add_series(side)
    joint = together.step(x, buckets)
    for s, side in enumerate(sides):
        alone = run(x[:, s], side=side, buckets=buckets)
        for key in OUTPUTS:
            assert np.array_equal(joint[key][:, s], alone[key], equal_nan=True), (s, key)


def test_a_series_added_later_starts_fresh():
    n = 600
    x = _series_block(n, 7)[:, :2]
    buckets = START + np.arange(n)
    models = SeriesModels(SPAN, 1)
    models.add_series(0)
    models.step(x[:300, :1], buckets[:300])
    models.add_series(0)
    out = models.step(x[300:], buckets[300:])
    alone = run(x[300:, 1], buckets=buckets[300:])
    for key in OUTPUTS:
        assert np.array_equal(out[key][:, 1], alone[key], equal_nan=True), key


# --------------------------------------------------------------------------------------------
# API


def test_arguments_are_checked():
    models = SeriesModels(SPAN, 1)
    models.add_series(0)
    models.step(np.ones((3, 1)), np.array([10, 11, 12]))
    with pytest.raises(ValueError, match="after the last"):
        models.step(np.ones((1, 1)), np.array([12]))
    with pytest.raises(ValueError, match="increase strictly"):
        models.step(np.ones((2, 1)), np.array([20, 20]))
    with pytest.raises(ValueError, match="shape"):
        models.step(np.ones((2, 2)), np.array([30, 31]))
    with pytest.raises(ValueError, match="finite"):
        models.step(np.array([[np.inf]]), np.array([40]))
    with pytest.raises(ValueError, match="side"):
        models.add_series(2)
    with pytest.raises(ValueError, match="bucket span"):
        SeriesModels(0)
    with pytest.raises(ValueError, match="unknown model parameter"):
        SeriesModels(SPAN, params={"nope": 1.0})
    state = models.state()
    state["scalars"] = state["scalars"][:, :5]  # narrower than any state ever written
    with pytest.raises(ValueError, match="scalars"):
        SeriesModels.from_state(state)


def test_memory_and_seasonal_layout_follow_the_bucket_span():
    five_min = SeriesModels(300)
    hourly = SeriesModels(3600)
    daily = SeriesModels(86400)
    odd = SeriesModels(7 * 60 + 1)
    assert five_min.state()["daily"].shape == (0, 288)
    assert hourly.state()["daily"].shape == (0, 24)
    assert hourly.state()["weekly"].shape == (0, 168)
    assert daily.state()["daily"].shape == (0, 0)  # no time of day in daily buckets
    assert daily.state()["weekly"].shape == (0, 7)
    assert odd.state()["daily"].shape == (0, 0)  # a span that does not divide a day
    assert five_min.bytes_per_series > hourly.bytes_per_series > odd.bytes_per_series > 0
    assert five_min.bytes_per_series < 16_000
    assert set(five_min.params) == set(DEFAULT_PARAMS)


def test_probabilities_are_bit_for_bit_those_of_the_kernel_before_the_shape_weight_shortcut():
    # shape_weights sets the most likely shape's weight to 1 without exp(0): the values below
    # were computed with the kernel that still called exp for it, and must not move a bit.
    x = rng(7).normal(100.0, 2.0, 600)
    x[550] = 112.0
    expected = {
        10.0: ([0.15800599611693716, 0.9005456311987574, 5.419537708064052e-09,
                0.5518898243044835], 103.70258096639103),
        1.0: ([0.1596464096869899, 0.8953025718296325, 0.00031952100348409254,
               0.5438739628487752], 103.89446887894655),
    }
    for evidence, (p_expected, upper_expected) in expected.items():
        models = SeriesModels(SPAN, 1, {"shape_evidence": evidence})
        models.add_series(0)
        out = models.step(x.reshape(-1, 1), START + np.arange(600))
        assert out["p_single"][[20, 300, 550, 599], 0].tolist() == p_expected
        assert out["upper"][599, 0] == upper_expected


def test_the_median_multi_bucket_feature_finds_a_run_of_habitual_spikes():
    # A series whose spikes (+40, 60 of them at random times over 5 days) are part of it:
    # the outlier process makes each one ordinary. On day 5 the value stays at spike height
    # for an hour. The winsorised 12-bucket means (2 sigmas) see a run of 40-sigma values as
    # one of 2 sigmas (p ~ 1e-4 at best as a job combines them, a raw score below 1); the
    # median of the slow-level residuals (winsorised at 7 sigmas) sees the run at 7 sigmas
    # against medians that spikes never move (p < 1e-20). Before day 3 (season_periods) the
    # median is not judged, and the single-bucket feature is untouched: outside the run the
    # lowest p is as before.
    n = 5 * DAY_BUCKETS
    g = rng(2)
    x = 10.0 + g.standard_normal(n)
    spikes = g.choice(np.arange(50, n), size=60, replace=False)
    x[spikes] += 40.0 + 4.0 * g.standard_normal(60)
    hour = slice(4 * DAY_BUCKETS + 100, 4 * DAY_BUCKETS + 112)
    x[hour] = 50.0 + 4.0 * g.standard_normal(12)
    out = {}
    for width in (7.0, 0.0):
        models = SeriesModels(SPAN, 1, {"median_multi_bucket": width})
        models.add_series(0)
        out[width] = models.step(x.reshape(-1, 1), START + np.arange(n))
    on, off = out[7.0], out[0.0]
    assert np.array_equal(on["p_single"], off["p_single"], equal_nan=True)
    days = 3 * DAY_BUCKETS
    assert np.array_equal(on["p_multi"][:days], off["p_multi"][:days], equal_nan=True)
    p_on, p_off = (scoring.combine_single_multi(o["p_single"][:, 0], o["p_multi"][:, 0])
                   for o in (on, off))
    assert p_on[hour].min() < 1e-20
    assert 1e-5 < p_off[hour].min() < 1e-3
    assert scoring.raw_score(p_off[hour].min()) < 1.0
    assert scoring.raw_score(p_on[hour].min()) > 10.0
    elsewhere = np.ones(n, dtype=bool)
    elsewhere[hour] = False
    elsewhere[:days] = False
    assert p_on[elsewhere].min() > 5e-4 and p_on[elsewhere].min() == p_off[elsewhere].min()


@pytest.mark.parametrize(("name", "window", "param", "on", "on_below", "off_above"), [
    # art_load_balancer_spikes: isolated spikes, then a stretch where they come much closer
    # together. The fast one-step level follows each spike, so the 12-bucket mean of
    # one-step residuals stays ordinary (p ~ 0.02 in the window); against the slow level the
    # recent buckets sit far above it (p ~ 1e-5), well below anything before the window.
    ("artificialWithAnomaly/art_load_balancer_spikes.csv", 0, "slow_multi_bucket", 1.0,
     1e-4, 1e-2),
    # ec2_cpu_utilization_fe7f93: CPU spikes to 50-70 come every few hours; its second
    # window is an hour and more of them back to back. The winsorised means leave it at
    # p ~ 0.01, above what came before; the median finds it 10 times below anything before.
    ("realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv", 1, "median_multi_bucket", 7.0,
     1e-3, 5e-3),
])
def test_a_multi_bucket_feature_finds_the_nab_window_it_was_made_for(
        name, window, param, on, on_below, off_above):
    # With the feature (param = on) the window's lowest multi-bucket p is 10 times below any
    # before it; without it (param = 0) it is above them.
    f = nab.load_corpus(SHARED / "nab")[name]
    left, right = f.windows[window]
    lowest = []
    for value in (on, 0.0):
        p_multi = model_outputs(f, 1000, {param: value})["p_multi"]
        lowest.append((np.nanmin(p_multi[left:right + 1]),
                       np.nanmin(p_multi[f.probation:left])))
    (window_on, before_on), (window_off, before_off) = lowest
    assert window_on < before_on / 10 and window_on < on_below, lowest
    assert window_off > before_off and window_off > off_above, lowest


def test_each_shapes_lazy_bound_keeps_its_one_sided_tail_above_the_lazy_limit():
    # A residual within LAZY_Z[c] scales of every shape c has a tail of at least
    # LAZY_MAX_BELOW under each, so a mixture of them does too.
    bounds = _model.lazy_bounds()
    assert len(bounds) == 5
    for c, z in enumerate(bounds):
        assert 0.5 * _model.tail(c, z) > _model.LAZY_MAX_BELOW
        assert 0.5 * _model.tail(c, z * 1.05) < 0.0205  # and each is close to the edge
    assert _model.LAZY_MAX_BELOW >= 1 - (1 - 0.035) ** 0.5  # the analysis's record bound


def _stable_median(values) -> float:
    """The median as the model's sorted_median_of gives it: a stable sort's middle."""
    ordered = sorted(values)  # stable: equal values (0.0 and -0.0) keep their order
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def test_median_network_finds_the_middle_of_every_input_of_two_values():
    # The 0-1 principle: a comparator network that puts the middle of every input of two
    # values in place (its pad of infinities after them) does so for every input.
    for n in range(1, 13):
        for bits in itertools.product((1.0, 2.0), repeat=n):
            assert _model.median(bits) == _stable_median(bits), bits


def test_median_is_bit_for_bit_the_stable_sorts_zeros_and_ties_included():
    gen = rng(7)
    pool = np.array([0.0, -0.0, 1.5, -1.5, 2.0, np.inf, -np.inf, 1e-300, -3.25])
    for _ in range(20000):
        n = int(gen.integers(1, 13))
        values = (gen.choice(pool, n) if gen.random() < 0.5
                  else np.round(gen.normal(size=n), 1) * gen.choice([1.0, 0.0], n)).tolist()
        assert (np.float64(_model.median(values)).tobytes()
                == np.float64(_stable_median(values)).tobytes()), values
    with pytest.raises(ValueError):
        _model.median([1.0, np.nan])


@pytest.mark.parametrize("side", [0, 1, -1])
def test_lazy_probabilities_are_exact_wherever_a_record_can_be(side):
    # lazy_below: the cells with min(p_single, p_multi) below it get both exactly; the others
    # keep a p_multi of at least lazy_below, most of them without computing it; the rest of
    # the outputs and the state are the same.
    x = np.concatenate([_series_block(3 * DAY_BUCKETS, 31), _series_block(3 * DAY_BUCKETS, 32)],
                       axis=1)
    x[2 * DAY_BUCKETS:2 * DAY_BUCKETS + 20, 4] += 4.0  # a shift for the multi-bucket features
    below = 0.0177
    outputs, states = [], []
    for lazy_below in (0.0, below):
        models = SeriesModels(SPAN, x.shape[1])
        for _ in range(x.shape[1]):
            models.add_series(side)
        outputs.append(models.step(x, START + np.arange(len(x)), lazy_below=lazy_below))
        states.append(models.state())
    exact, lazy = outputs
    np.testing.assert_array_equal(lazy["typical"], exact["typical"])
    for name, array in states[0].items():
        np.testing.assert_array_equal(states[1][name], array)
    can_be = np.fmin(exact["p_single"], exact["p_multi"]) < below
    assert can_be.sum() > 10
    for name in ("p_single", "p_multi"):
        np.testing.assert_array_equal(lazy[name][can_be], exact[name][can_be])
        changed = ~((lazy[name] == exact[name]) | (np.isnan(lazy[name]) & np.isnan(exact[name])))
        assert changed.sum() > x.size // 5, name  # many were not computed
        assert (exact[name][changed] >= below).all() and (lazy[name][changed] >= below).all()
    # an interval is NaN where its p_single was not computed, and exact where it was
    for name in ("lower", "upper"):
        computed = ~np.isnan(lazy[name])
        assert computed.sum() > 10 and not computed[lazy["p_single"] == 1.0].all()
        np.testing.assert_array_equal(lazy[name][computed], exact[name][computed])
    with pytest.raises(ValueError, match="lazy_below must be in"):
        SeriesModels(SPAN, 1).step(np.ones((1, 0)), np.array([START]), lazy_below=0.5)


def test_the_nab_library_bench_runs_its_jobs_with_the_parameters_given():
    # bench.nab --library --param NAME=VALUE: real jobs take their model defaults, so the
    # override has to reach them in the worker processes.
    from bench.nab import library_scores

    f = nab.load_corpus(SHARED / "nab")["realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv"]
    left, right = f.windows[1]  # an hour of spikes back to back: the median feature's
    default, off = (library_scores([f], SHARED / "nab", 1, params)[f.name]
                    for params in (None, {"median_multi_bucket": 0.0}))
    assert default[left:right + 1].max() > 0.7
    assert off[left:right + 1].max() < 0.1
    assert DEFAULT_PARAMS["median_multi_bucket"] == 7.0  # this process's are untouched


def test_a_value_near_the_double_range_leaves_the_state_finite():
    # A residual of 1e200 squares to infinity: the models' squared errors once became
    # infinite, then NaN for good, and the series' probabilities with them.
    x = 100.0 + rng(23).normal(0.0, 1.0, (400, 1))
    x[200, 0] = 1e200
    models = SeriesModels(SPAN, 1)
    models.add_series(0)
    out = models.step(x, START + np.arange(400))
    assert np.isfinite(models.state()["scalars"]).all()
    assert out["p_single"][200, 0] < 1e-12
    assert np.isfinite(out["p_single"][201:, 0]).all() and np.isfinite(out["typical"]).all()


def test_extreme_record_counts_neither_stall_a_series_nor_hide_its_spike():
    # Summary counts at the ends of the double range (1e-200 usually, then 1e200 or an
    # infinite sum) once made the count scale 0 or NaN: the step stopped half-way, silently,
    # and the series never moved again. The scale is now bounded, and a 60-sigma spike in a
    # second series stepped alongside is found whatever the first one's counts.
    n = 400
    x = 100.0 + rng(17).normal(0.0, 1.0, (n, 2))
    x[390, 1] = 160.0
    counts = np.full((n, 2), 1e-200)
    counts[::7, 0] = 1e200
    counts[::11, 0] = np.inf
    counts[:, 1] = 1.0
    models = SeriesModels(SPAN, 2)
    models.add_series(0)
    models.add_series(0)
    out = models.step(x, START + np.arange(n), counts=counts)
    assert all(np.isfinite(out[k][4:]).all() for k in OUTPUTS)
    assert models.state()["scalars"][:, 0].tolist() == [float(n), float(n)]  # X_N: all steps
    assert out["p_single"][390, 1] < 1e-9
    assert out["p_single"][380:390, 1].min() > 1e-5


def test_a_state_of_any_earlier_width_restores_and_a_wrong_one_is_refused():
    # States grow at the end: one that stopped between the first release and now (the
    # record count but not the slow-level feature) restores padded; one narrower than the
    # first release, or wider than now, is not a state this code wrote.
    models = SeriesModels(SPAN, 1)
    models.add_series(0)
    models.step(_series_block(300, 4)[:, :1], START + np.arange(300))
    state = models.state()
    first = _model.layout(float(SPAN), 288, 168)["scalars_first_release"]
    for width in (first, first + 2):
        SeriesModels.from_state({**state, "scalars": state["scalars"][:, :width]}).step(
            np.ones((1, 1)), np.array([START + 300]))
    for bad in (state["scalars"][:, :first - 1], np.hstack([state["scalars"], state["scalars"]])):
        with pytest.raises(ValueError, match="'scalars' has shape"):
            SeriesModels.from_state({**state, "scalars": bad})
