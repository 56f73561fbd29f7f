"""NAB scorer (adjobs.nab): the unit anchors of spec analysis.md B.4 on our 35-file subset, and
hand-computed synthetic cases for every rule.

Hand calculations use sigma(y) = 2 / (1 + e^{5y}) - 1 = -tanh(2.5 y), so a detection at row i
of a window [l, r] of width w is worth tanh(2.5 (r - i + 1) / w) / tanh(2.5), and a false
positive k rows after a window of width w costs A_FP * tanh(2.5 k / (w - 1)) (A_FP when
k / (w - 1) >= 3 or before the first window).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, SHARED

from adjobs import nab

NAB_DIR = SHARED / "nab"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
FP_WEIGHT = {"standard": 0.11, "reward_low_FP_rate": 0.22, "reward_low_FN_rate": 0.11}
FN_WEIGHT = {"standard": 1.0, "reward_low_FP_rate": 1.0, "reward_low_FN_rate": 2.0}
TANH_25 = math.tanh(2.5)  # sigma(-1): the first row of a window


@pytest.fixture(scope="module")
def corpus():
    return nab.load_corpus(NAB_DIR)


@pytest.fixture(scope="module")
def hand_windows():
    """Window row ranges and file lengths, parsed here independently of adjobs.nab."""
    windows = json.loads((NAB_DIR / "labels" / "combined_windows.json").read_text())
    out = {}
    for name, limits in windows.items():
        with open(NAB_DIR / "data" / name, newline="") as fh:
            stamps = [row[0] for row in csv.reader(fh)][1:]
        rows = [(stamps.index(a.removesuffix(".000000")), stamps.index(b.removesuffix(".000000")))
                for a, b in limits]
        out[name] = (len(stamps), rows)
    return out


def one_file(n=200, windows=((80, 99),), probation=None):
    return nab.Corpus([nab.NabFile.synthetic("f.csv", n, windows, probation=probation)])


def flags(n, rows, value=1.0):
    s = np.zeros(n)
    s[list(rows)] = value
    return {"f.csv": s}


# --------------------------------------------------------------------------------------------
# The corpus as loaded


def test_subset_shape(corpus, hand_windows):
    assert len(corpus) == 35
    assert corpus.n_rows == 181_653
    assert corpus.n_windows == 55
    assert corpus.n_window_rows == 15_324
    assert {f.name for f in corpus if len(f.windows) == 0} == {
        "artificialNoAnomaly/art_daily_no_noise.csv",
        "artificialNoAnomaly/art_daily_perfect_square_wave.csv",
        "artificialNoAnomaly/art_daily_small_noise.csv",
        "artificialNoAnomaly/art_flatline.csv",
        "artificialNoAnomaly/art_noisy.csv",
        "realAWSCloudwatch/ec2_cpu_utilization_c6585a.csv",
    }
    for f in corpus:
        n, rows = hand_windows[f.name]
        assert f.n == n
        assert f.windows.tolist() == [list(r) for r in rows]
        assert f.probation == min(int(0.15 * n), 750)
    taxi = corpus["realKnownCause/nyc_taxi.csv"]
    assert (taxi.n, taxi.probation, taxi.sampling_seconds) == (10_320, 750, 1800)
    assert taxi.windows[0].tolist() == [5839, 6045]
    assert taxi.timestamps[5839] == np.datetime64("2014-10-30T15:30:00")
    assert corpus["realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv"].probation == 186
    # 57 point labels; all but one lie inside a window of their file (NAB's own labels: the
    # first iio label, 2013-10-10 09:35, is 12 rows before that file's first window)
    assert sum(len(f.label_rows) for f in corpus) == 57
    outside = [(f.name, int(row)) for f in corpus for row in f.label_rows
               if not any(lo <= row <= hi for lo, hi in f.windows)]
    assert outside == [("realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv", 206)]


def test_probation_length_and_sigmoid():
    assert [nab.probation_length(n) for n in (100, 1243, 4032, 5000, 5001, 22695)] == [
        15, 186, 604, 750, 750, 750]
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.9866142981514303, abs=1e-15)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(math.tanh(1.25), abs=1e-15)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(2.99) == pytest.approx(-math.tanh(7.475), abs=1e-15)
    assert nab.scaled_sigmoid(2.99) != -1.0
    assert nab.scaled_sigmoid(3.0) == -1.0  # sweeper.py: `>= 3.0` is exactly -1
    assert nab.scaled_sigmoid(50.0) == -1.0


# --------------------------------------------------------------------------------------------
# The anchor table's synthetic detectors on the subset (threshold 1.0)


@pytest.mark.parametrize("profile", PROFILES)
def test_null_detector_is_exactly_zero(corpus, profile):
    r = nab.score_corpus(nab.baseline_scores("null", corpus), 1.0, profile, corpus)
    assert r["normalised"] == 0.0
    assert r["raw"] == r["null"] == -55 * FN_WEIGHT[profile]
    assert r["perfect"] == 55.0
    assert (r["tp"], r["fp"], r["windows_detected"], r["windows_missed"]) == (0, 0, 0, 55)


@pytest.mark.parametrize("profile", PROFILES)
def test_first_row_of_every_window_is_exactly_100(corpus, profile):
    r = nab.score_corpus(nab.baseline_scores("first_row", corpus), 1.0, profile, corpus)
    assert r["normalised"] == 100.0
    assert r["raw"] == 55.0
    assert (r["tp"], r["fp"], r["windows_detected"]) == (55, 0, 55)


@pytest.mark.parametrize("kind", ["mid_row", "last_row"])
def test_mid_and_last_row_match_a_hand_calculation(corpus, hand_windows, kind):
    raw = 0.0
    for _, rows in hand_windows.values():
        for lo, hi in rows:
            row = (lo + hi) // 2 if kind == "mid_row" else hi
            raw += math.tanh(2.5 * (hi - row + 1) / (hi - lo + 1)) / TANH_25
    scores = nab.baseline_scores(kind, corpus)
    std = nab.score_corpus(scores, 1.0, "standard", corpus)
    low_fp = nab.score_corpus(scores, 1.0, "reward_low_FP_rate", corpus)
    low_fn = nab.score_corpus(scores, 1.0, "reward_low_FN_rate", corpus)
    assert std["raw"] == pytest.approx(raw, rel=1e-12)
    assert std["normalised"] == pytest.approx(100 * (raw + 55) / 110, rel=1e-12)
    assert low_fp["normalised"] == std["normalised"]  # no false positives: A_FP plays no part
    assert low_fn["normalised"] == pytest.approx(100 * (raw + 110) / 165, rel=1e-12)
    assert 0 < std["normalised"] < low_fn["normalised"] < 100
    # the subset's figures (full corpus: 93.12 / 95.41 mid, 50.90 / 67.27 last)
    expected = {"mid_row": (93.09, 95.39), "last_row": (50.66, 67.10)}[kind]
    assert (round(std["normalised"], 2), round(low_fn["normalised"], 2)) == expected


def test_every_row_is_strongly_negative_in_the_anchor_order(corpus, hand_windows):
    # sum of sigma over scored rows outside windows, by hand
    fp_sigma = 0.0
    for n, rows in hand_windows.values():
        rights = [hi for _, hi in rows]
        widths = [hi - lo + 1 for lo, hi in rows]
        for i in range(min(int(0.15 * n), 750), n):
            if any(lo <= i <= hi for lo, hi in rows):
                continue
            prev = [k for k, hi in enumerate(rights) if hi < i]
            y = (i - rights[prev[-1]]) / (widths[prev[-1]] - 1) if prev else 3.0
            fp_sigma += -1.0 if y >= 3.0 else -math.tanh(2.5 * y)
    scores = nab.baseline_scores("every_row", corpus)
    got = {p: nab.score_corpus(scores, 1.0, p, corpus) for p in PROFILES}
    for p in PROFILES:
        assert got[p]["raw"] == pytest.approx(55 + FP_WEIGHT[p] * fp_sigma, rel=1e-12)
        assert got[p]["fp"] == 144_900 and got[p]["tp"] == 15_324 and got[p]["fn"] == 0
    std = got["standard"]["normalised"]
    low_fp = got["reward_low_FP_rate"]["normalised"]
    low_fn = got["reward_low_FN_rate"]["normalised"]
    assert low_fp < std < low_fn < -5000
    # with every window hit on its first row: low FP = 2 std - 100, low FN = 100 + 2 (std - 100) / 3
    # (the full-corpus anchors obey the same: -27489.56 = 2 (-13694.78) - 100, and -9096.52)
    assert low_fp == pytest.approx(2 * std - 100, rel=1e-12)
    assert low_fn == pytest.approx(100 + 2 * (std - 100) / 3, rel=1e-12)
    assert round(std, 2) == -14018.16


# --------------------------------------------------------------------------------------------
# Synthetic one-file corpus: 200 rows, probation 30, one window [80, 99] (w = 20)


def test_synthetic_first_mid_last():
    c = one_file()
    assert c["f.csv"].probation == 30
    first = nab.score_corpus(flags(200, [80]), 1.0, "standard", c)
    assert (first["raw"], first["null"], first["perfect"], first["normalised"]) == (
        1.0, -1.0, 1.0, 100.0)
    v_mid = math.tanh(2.5 * 11 / 20) / TANH_25  # row 89: y = -(99 - 89 + 1) / 20 = -0.55
    assert v_mid == pytest.approx(0.891763581067568, abs=1e-15)
    mid = {p: nab.score_corpus(flags(200, [89]), 1.0, p, c)["normalised"] for p in PROFILES}
    assert mid["standard"] == pytest.approx(50 * (1 + v_mid), abs=1e-12)  # 94.588...
    assert mid["reward_low_FP_rate"] == pytest.approx(94.5881790533784, abs=1e-12)
    assert mid["reward_low_FN_rate"] == pytest.approx(100 * (2 + v_mid) / 3, abs=1e-12)
    assert mid["reward_low_FN_rate"] == pytest.approx(96.39211936891893, abs=1e-12)
    v_last = math.tanh(2.5 / 20) / TANH_25  # row 99: y = -1/20
    last = nab.score_corpus(flags(200, [99]), 1.0, "standard", c)
    assert last["raw"] == pytest.approx(0.12604013747275927, abs=1e-15)
    assert last["raw"] == pytest.approx(v_last, abs=1e-15)
    assert last["normalised"] == pytest.approx(56.302006873637964, abs=1e-12)


def test_only_the_earliest_detection_in_a_window_counts():
    c = one_file()
    r = nab.score_corpus(flags(200, [95, 85, 82, 90]), 1.0, "standard", c)
    assert r["raw"] == pytest.approx(math.tanh(2.5 * 18 / 20) / TANH_25, abs=1e-15)  # row 82
    assert r["raw"] == pytest.approx(0.9912952980422969, abs=1e-15)
    assert (r["tp"], r["fn"], r["fp"], r["tn"], r["windows_detected"]) == (4, 16, 0, 150, 1)
    # a later detection never lowers the window's score
    assert nab.score_corpus(flags(200, [80, 99]), 1.0, "standard", c)["raw"] == 1.0


def test_probationary_rows_are_not_scored():
    c = one_file()
    nothing = nab.score_corpus(flags(200, [0, 10, 29]), 1.0, "standard", c)
    assert (nothing["raw"], nothing["fp"], nothing["tn"], nothing["fn"]) == (-1.0, 0, 150, 20)
    # row 30 is the first scored row: a false positive before any window costs exactly A_FP
    first_scored = nab.score_corpus(flags(200, [29, 30]), 1.0, "standard", c)
    assert first_scored["raw"] == pytest.approx(-1.11, abs=1e-15) and first_scored["fp"] == 1
    # a window that starts in probation: its probationary rows cannot detect it
    c2 = one_file(windows=((20, 39),))
    assert nab.score_corpus(flags(200, [25]), 1.0, "standard", c2)["raw"] == -1.0
    r = nab.score_corpus(flags(200, [25, 30]), 1.0, "standard", c2)
    assert r["raw"] == pytest.approx(math.tanh(2.5 * 10 / 20) / TANH_25, abs=1e-15)
    assert (r["tp"], r["fn"]) == (1, 9)  # rows 30..39 are scored
    # a window wholly in probation is not scored (NAB: no row names it), yet counts in `perfect`
    c3 = one_file(windows=((5, 15), (80, 99)))
    r = nab.score_corpus(flags(200, [5]), 1.0, "reward_low_FN_rate", c3)
    assert (r["raw"], r["null"], r["perfect"], r["windows"]) == (-2.0, -2.0, 2.0, 1)


def test_false_positive_after_a_window_is_weighted_by_the_sigmoid():
    c = one_file()

    def fp_cost(row, profile="standard"):
        return nab.score_corpus(flags(200, [row]), 1.0, profile, c)["raw"] + 1.0  # minus the FN

    assert fp_cost(50) == pytest.approx(-0.11, abs=1e-15)  # before the first window
    assert fp_cost(100) == pytest.approx(-0.11 * math.tanh(2.5 / 19), abs=1e-15)  # y = 1/19
    assert fp_cost(100) == pytest.approx(-0.014390730906933267, abs=1e-15)
    assert fp_cost(118) == pytest.approx(-0.11 * TANH_25, abs=1e-15)  # y = 1
    assert fp_cost(155) == pytest.approx(-0.10999991244251045, abs=1e-15)  # y = 56/19 < 3
    assert fp_cost(156) == pytest.approx(-0.11, abs=1e-15)  # y = 57/19 = 3: exactly -A_FP
    assert fp_cost(100, "reward_low_FP_rate") == pytest.approx(2 * fp_cost(100), abs=1e-15)
    # two windows of different widths: a row between them is placed against the previous one
    c2 = one_file(windows=((60, 79), (140, 169)))
    r = nab.score_corpus(flags(200, [100]), 1.0, "standard", c2)
    assert r["raw"] == pytest.approx(-2 - 0.11 * math.tanh(2.5 * 21 / 19), abs=1e-15)
    r = nab.score_corpus(flags(200, [175]), 1.0, "standard", c2)
    assert r["raw"] == pytest.approx(-2 - 0.11 * math.tanh(2.5 * 6 / 29), abs=1e-15)


def test_threshold_is_inclusive_and_counts_are_rows():
    c = one_file()
    s = np.zeros(200)
    s[[40, 41]] = 0.5  # two FPs before the window
    s[[85, 86, 87]] = 0.7  # three TP rows
    s[88] = 0.4999
    r = nab.score_corpus({"f.csv": s}, 0.5, "standard", c)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 2, 17, 148)
    assert r["raw"] == pytest.approx(math.tanh(2.5 * 15 / 20) / TANH_25 - 0.22, abs=1e-15)
    r = nab.score_corpus({"f.csv": s}, 0.5000001, "standard", c)
    assert (r["tp"], r["fp"]) == (3, 0)
    custom = nab.score_corpus({"f.csv": s}, 0.5, {"tpWeight": 2, "fnWeight": 1, "fpWeight": 1}, c)
    assert custom["raw"] == pytest.approx(2 * math.tanh(1.875) / TANH_25 - 2, abs=1e-15)
    assert custom["normalised"] == pytest.approx(100 * (custom["raw"] + 1) / 3, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Threshold sweep


def sweep_case():
    """10 far FPs at 0.7 (before the window: -A_FP each), the window's first row at 0.6, a
    later window row at 0.65. Standard: 1 - 10 * 0.11 = -0.1 beats the null -1 (score 45).
    Low FP: 1 - 2.2 = -1.2 loses to the null -1 (flag nothing). Low FN: -0.1 vs -2."""
    s = np.zeros(200)
    s[40:50] = 0.7
    s[95] = 0.65
    s[80] = 0.6
    return {"f.csv": s}


def test_sweep_by_hand():
    c = one_file()
    thresholds, raw = nab.sweep(sweep_case(), "standard", c)
    assert thresholds.tolist() == [nab.NO_DETECTION_THRESHOLD, 0.7, 0.65, 0.6, 0.0]
    v95 = math.tanh(2.5 * 5 / 20) / TANH_25
    assert raw[:4] == pytest.approx([-1.0, -2.1, -1.1 + v95, -0.1], abs=1e-12)
    # threshold 0: every scored row; the sweep agrees with a direct score
    assert raw[4] == pytest.approx(nab.score_corpus(sweep_case(), 0.0, "standard", c)["raw"],
                                   abs=1e-12)


def test_optimal_threshold_by_hand():
    c = one_file()
    std = nab.optimal_threshold(sweep_case(), "standard", c)
    assert std["threshold"] == 0.6
    assert std["raw"] == pytest.approx(-0.1, abs=1e-12)
    assert std["normalised"] == pytest.approx(45.0, abs=1e-10)
    low_fp = nab.optimal_threshold(sweep_case(), "reward_low_FP_rate", c)
    assert low_fp["threshold"] == nab.NO_DETECTION_THRESHOLD
    assert (low_fp["raw"], low_fp["normalised"], low_fp["fp"]) == (-1.0, 0.0, 0)
    low_fn = nab.optimal_threshold(sweep_case(), "reward_low_FN_rate", c)
    assert low_fn["threshold"] == 0.6
    assert low_fn["normalised"] == pytest.approx(100 * 1.9 / 3, abs=1e-10)
    # ties go to the highest threshold: 0.6 and 0.55 flag the same rows
    s = sweep_case()
    s["f.csv"][81] = 0.55  # a later row of an already-detected window adds nothing
    thresholds, raw = nab.sweep(s, "standard", c)
    assert thresholds.tolist()[3:5] == [0.6, 0.55] and raw[3] == raw[4]
    assert nab.optimal_threshold(s, "standard", c)["threshold"] == 0.6


def test_sweep_equals_rescoring_on_the_subset(corpus):
    rng = np.random.default_rng(7)
    scores = {f.name: np.round(rng.random(f.n) ** 6, 3) for f in corpus}  # ~1000 distinct
    for profile in PROFILES:
        start = time.perf_counter()
        thresholds, raw = nab.sweep(scores, profile, corpus)
        assert time.perf_counter() - start < 5.0
        assert len(thresholds) == 1002  # 0.000 .. 1.000 plus "flag nothing"
        assert raw[0] == -55 * FN_WEIGHT[profile]
        for k in range(1, len(thresholds), 97):
            direct = nab.score_corpus(scores, thresholds[k], profile, corpus)["raw"]
            assert raw[k] == pytest.approx(direct, rel=1e-11, abs=1e-9)  # summation order
        best = nab.optimal_threshold(scores, profile, corpus)
        assert best["raw"] == pytest.approx(raw.max(), rel=1e-11, abs=1e-9)
        assert best["threshold"] == thresholds[int(np.argmax(raw))]
        assert best["raw"] >= nab.score_corpus(scores, 0.5, profile, corpus)["raw"]


# --------------------------------------------------------------------------------------------
# False alarms, validation, command line


def test_false_alarms_per_10k_rows(corpus):
    scores = {f.name: np.zeros(f.n) for f in corpus}
    for f in corpus.folder("artificialNoAnomaly"):
        s = scores[f.name]
        s[[0, 700, 701]] = 1.0
        s[800] = 0.75
        s[900] = 0.7499
    r = nab.false_alarms(scores, 0.75, corpus)
    assert (r["files"], r["rows"], r["alarms"]) == (5, 5 * (4032 - 604), 15)
    assert r["per_10k_rows"] == pytest.approx(15e4 / 17_140, abs=1e-12)
    r = nab.false_alarms(scores, 0.75, corpus, include_probation=True)
    assert (r["rows"], r["alarms"], r["per_10k_rows"]) == (20_160, 20, pytest.approx(20e4 / 20_160))
    only_folder = {f.name: scores[f.name] for f in corpus.folder("artificialNoAnomaly")}
    assert nab.false_alarms(only_folder, 0.5, corpus)["alarms"] == 20


def test_bad_input_is_refused(corpus):
    c = one_file()
    with pytest.raises(ValueError, match="no scores"):
        nab.score_corpus({}, 0.5, "standard", c)
    with pytest.raises(ValueError, match="unknown file"):
        nab.score_corpus({"f.csv": np.zeros(200), "g.csv": np.zeros(3)}, 0.5, "standard", c)
    with pytest.raises(ValueError, match="199 scores for 200 rows"):
        nab.score_corpus({"f.csv": np.zeros(199)}, 0.5, "standard", c)
    with pytest.raises(ValueError, match="finite"):
        nab.sweep({"f.csv": np.full(200, np.nan)}, "standard", c)
    with pytest.raises(ValueError, match="unknown NAB profile"):
        nab.score_corpus({"f.csv": np.zeros(200)}, 0.5, "lenient", c)
    with pytest.raises(ValueError, match="sorted and disjoint"):
        one_file(windows=((80, 99), (99, 120)))
    with pytest.raises(ValueError, match=">= 2 rows"):
        one_file(windows=((80, 80),))
    with pytest.raises(ValueError, match="no files in folder"):
        nab.false_alarms({}, 0.75, c)


def test_command_line_baselines_json(corpus):
    out = subprocess.run(
        [sys.executable, "-m", "adjobs.nab", "--baselines", "--json", "--data", str(NAB_DIR)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    )
    report = json.loads(out.stdout)
    assert report["corpus"]["files"] == 35 and report["corpus"]["windows"] == 55
    assert report["threshold"] == 1.0
    got = report["baselines"]
    assert list(got) == ["null", "first_row", "mid_row", "last_row", "every_row"]
    for p in PROFILES:
        assert got["null"][p]["normalised"] == 0.0
        assert got["first_row"][p]["normalised"] == 100.0
        for kind in ("mid_row", "last_row", "every_row"):
            direct = nab.score_corpus(nab.baseline_scores(kind, corpus), 1.0, p, corpus)
            assert got[kind][p]["normalised"] == direct["normalised"]
            assert got[kind][p]["tp"] == direct["tp"] and got[kind][p]["fp"] == direct["fp"]


def test_the_default_nab_directory_of_an_installed_package_is_beside_the_checkout(
        tmp_path, monkeypatch):
    # `pip install .` puts the module in site-packages: the README's ../shared is then
    # found from the checkout it runs in, not from the module's own place.
    monkeypatch.delenv("ADJOBS_NAB_DIR", raising=False)
    monkeypatch.delenv("ADJOBS_SHARED_DIR", raising=False)
    installed = tmp_path / "venv" / "lib" / "python3" / "site-packages" / "adjobs" / "nab.py"
    monkeypatch.setattr(nab, "__file__", str(installed))
    (tmp_path / "shared" / "nab").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    assert nab.default_root() == tmp_path / "shared" / "nab"
    # an editable install (the module inside a checkout) finds the data beside that one
    source = tmp_path / "repo" / "src" / "adjobs" / "nab.py"
    monkeypatch.setattr(nab, "__file__", str(source))
    assert nab.default_root() == tmp_path / "shared" / "nab"
    monkeypatch.setenv("ADJOBS_SHARED_DIR", str(tmp_path / "elsewhere"))
    assert nab.default_root() == tmp_path / "elsewhere" / "nab"
