"""Durable jobs under kill -9: every acknowledged upload is stored, a cut-off one not at all.

A worker process (``tests/store_crash_worker.py``) posts deterministic uploads to a job in
a data directory and is SIGKILLed at random moments, over and over on the same directory.
After every kill this process opens the store and checks it (see
:class:`store_crash_worker.CrashHarness`): the database is sound, the job's counts are the
acknowledged uploads' plus, possibly, the whole in-flight upload, its categorical values are
exactly those of the counted records, and the job opens here without any clean-up.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest
from store_crash_worker import (
    JOB_CONFIG,
    JOB_ID,
    SET_MODES,
    T0_MS,
    WORKER_PATH,
    CrashHarness,
    make_upload,
    post_upload,
)

import adjobs
from adjobs.errors import ApiError

ITERATIONS = 34
#: Every eighth iteration from the sixth on kills at a set point; the others at random.
SET_POINTS = {5: "stall", 6: "held", 7: "done"}


def test_kill_9_loop_keeps_acknowledged_uploads_and_no_partial_one(tmp_path):
    harness = CrashHarness(tmp_path / "data")
    rng = random.Random(20240607)
    try:
        for k in range(ITERATIONS):
            harness.run_iteration(rng, SET_POINTS.get(k % 8))
    finally:
        harness.close()
    assert harness.violations == []

    figures = harness.figures
    assert figures.iterations == ITERATIONS
    assert {mode: figures.kill_modes[mode] for mode in SET_MODES} == {
        "stall": 4, "held": 4, "done": 4,
    }
    assert sum(figures.kill_modes.values()) == ITERATIONS
    # Each stalled upload was cut off and lost; each held one was stored whole.
    assert figures.in_flight_lost >= 4
    assert figures.in_flight_counted >= 4
    assert figures.acked_malformed >= 1
    assert figures.test_process_reopens >= 1
    # State accumulated across the kills in the one directory.
    with adjobs.JobService(tmp_path / "data") as service:
        counts = service.get_job_stats(JOB_ID)["jobs"][0]["data_counts"]
        assert counts["processed_record_count"] == harness.sums["processed_record_count"] > 0
        assert counts["input_bytes"] == harness.sums["input_bytes"]
        assert service.string_values(JOB_ID) == harness.strings
        assert len(harness.strings) > 24


def _uploads_then_follow_up(seed: int, reopen: bool) -> tuple[adjobs.JobService, dict]:
    """Uploads 0 and 1 of ``seed``, then upload 2, in memory; with ``reopen`` the job is
    closed and reopened before upload 2 (a fresh diagnostics window: the phantom seed)."""
    service = adjobs.JobService()
    service.put_job(JOB_ID, JOB_CONFIG)
    service.open_job(JOB_ID)
    for i in range(2):
        post_upload(service, JOB_ID, make_upload(seed, T0_MS, i).body)
    window = service.store.load(JOB_ID).diagnostics
    if reopen:
        service.close_job(JOB_ID)
        service.open_job(JOB_ID)
    return service, window


def _seed_where_the_window_matters() -> int:
    """A worker seed whose upload 2 counts different buckets after a clean reopen than
    after uploads 0 and 1 without a break (upload 1 is malformed, so its last buckets
    are still pending in the window)."""
    for seed in range(100):
        if not make_upload(seed, T0_MS, 1).malformed:
            continue
        follow_up = make_upload(seed, T0_MS, 2).body
        counts = []
        for reopen in (False, True):
            service, _ = _uploads_then_follow_up(seed, reopen)
            counts.append(post_upload(service, JOB_ID, follow_up))
        keys = ("bucket_count", "empty_bucket_count", "sparse_bucket_count")
        if all(counts[0][key] != counts[1][key] for key in keys):
            return seed
    raise AssertionError("no seed in 0..99 makes the diagnostics window matter")


def test_reopen_after_kill_continues_the_committed_diagnostics_window(tmp_path):
    seed = _seed_where_the_window_matters()
    data = tmp_path / "data"
    worker = subprocess.Popen(
        [sys.executable, str(WORKER_PATH), str(data), str(seed), str(T0_MS),
         "--max-uploads", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        for line in worker.stdout:
            lines.append(line.decode())
            if line == b"DONE\n":
                break
        assert lines[0] == "READY\n" and lines[-1] == "DONE\n", lines
        assert [line.split()[:2] for line in lines[1:-1]] == [
            ["START", "0"], ["ACK", "0"], ["START", "1"], ["ACK", "1"],
        ]
        # The live worker owns the job: another process sees it opened and cannot open it.
        with adjobs.JobService(data) as other:
            assert other.get_job_stats(JOB_ID)["jobs"][0]["state"] == "opened"
            with pytest.raises(ApiError) as refused:
                other.open_job(JOB_ID)
            assert refused.value.status == 409
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
        worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL

    uninterrupted, window = _uploads_then_follow_up(seed, reopen=False)
    reopened, _ = _uploads_then_follow_up(seed, reopen=True)
    follow_up = make_upload(seed, T0_MS, 2).body
    with adjobs.JobService(data) as service:
        stored = service.store.load(JOB_ID)
        assert stored.open_since is not None  # open at the kill, never closed
        assert stored.diagnostics == window
        assert service.get_job_stats(JOB_ID)["jobs"][0]["state"] == "closed"
        service.open_job(JOB_ID)  # no clean-up after the kill
        assert service.store.load(JOB_ID).diagnostics == window
        counts = post_upload(service, JOB_ID, follow_up)
        expected = post_upload(uninterrupted, JOB_ID, follow_up)
        assert counts == expected
        # After a clean close the same upload counts other buckets: the check above
        # tells a restored window from the phantom seed.
        phantom = post_upload(reopened, JOB_ID, follow_up)
        for key in ("bucket_count", "empty_bucket_count", "sparse_bucket_count"):
            assert counts[key] != phantom[key], key
        totals = service.get_job_stats(JOB_ID)["jobs"][0]["data_counts"]
        reference = uninterrupted.get_job_stats(JOB_ID)["jobs"][0]["data_counts"]
        clock = ("last_data_time", "log_time")
        assert {k: v for k, v in totals.items() if k not in clock} == {
            k: v for k, v in reference.items() if k not in clock
        }
        assert service.store.load(JOB_ID).diagnostics == uninterrupted.store.load(
            JOB_ID
        ).diagnostics
        service.close_job(JOB_ID)
        assert service.store.load(JOB_ID).open_since is None


def test_upload_whose_data_source_raises_counts_nothing_in_the_store(tmp_path):
    first = make_upload(1, T0_MS, 0).body
    second = make_upload(1, T0_MS, 1).body

    def cut_off():
        yield second[: len(second) * 3 // 4]  # read, counted in memory, then the source dies
        raise OSError("client went away")

    with adjobs.JobService(tmp_path) as service:
        service.put_job(JOB_ID, JOB_CONFIG)
        service.open_job(JOB_ID)
        post_upload(service, JOB_ID, first)
        before = service.store.load(JOB_ID)
        with pytest.raises(OSError, match="client went away"):
            service.post_data(JOB_ID, cut_off())
        assert service.store.load(JOB_ID) == before
        counts = post_upload(service, JOB_ID, second)
    uninterrupted = adjobs.JobService()
    uninterrupted.put_job(JOB_ID, JOB_CONFIG)
    uninterrupted.open_job(JOB_ID)
    post_upload(uninterrupted, JOB_ID, first)
    assert counts == post_upload(uninterrupted, JOB_ID, second)
    with adjobs.JobService(tmp_path) as service:
        assert service.string_values(JOB_ID) == uninterrupted.string_values(JOB_ID)
        assert service.store.load(JOB_ID).string_count == len(service.string_values(JOB_ID))


@pytest.mark.parametrize(
    ("fault", "mode", "symptom"),
    [
        ("late-commit", "done", "stored counts"),
        ("half-commit", "stall", "was cut off half way, but the store counts it"),
    ],
)
def test_the_checks_catch_injected_store_bugs(tmp_path, fault, mode, symptom):
    """A worker whose service commits after the response, or commits half an upload, is
    caught by the same checks; without the fault the same run passes."""
    for injected in ("", fault):
        harness = CrashHarness(tmp_path / (injected or "sound"),
                               env={"ADJOBS_CRASH_FAULT": injected})
        try:
            problems = harness.run_iteration(random.Random(7), mode, max_uploads=3)
        finally:
            harness.close()
        if injected:
            assert any(symptom in problem for problem in problems), problems
        else:
            assert problems == []
