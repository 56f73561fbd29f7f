"""Kill -9 harness for the durable job store: the worker process and the parent's checks.

Run as a script, this is the *worker*::

    python tests/store_crash_worker.py DIR SEED BASE_MS [--max-uploads N] [--last stall|held]

It opens (creating if needed) the job ``crash`` in the data directory ``DIR`` and posts
uploads ``0, 1, 2, ...``, each deterministic from ``(SEED, BASE_MS, i)`` (see
:func:`make_upload`). It prints, flushing each line::

    READY                      the job is open
    START <i>                  upload i is about to be posted
    ACK <i> <json counts>      post_data returned (or raised the 400 of malformed data)
    DONE                       N uploads were acknowledged; the worker now waits to be killed

With ``--last stall`` the last upload's data stops half way (``STALLED``: post_data is
reading it); with ``--last held`` post_data returns but the ACK is never printed (``HELD``).

For a 202 the counts are the response minus its wall-clock fields; for a 400 they are the
change of the job's counters across the call (what the failed upload committed).

Imported, this module is the *parent's* side (:class:`CrashHarness`): it starts the worker,
SIGKILLs it at a random moment, then checks the store against an uninterrupted in-memory
reference service fed the same uploads, and against independent expectations (sums of the
acknowledged counts, the categorical values of the counted records, the latest processed
time). ``tests/test_store_crash.py`` and ``bench/soak_store.py`` both use it.

``ADJOBS_CRASH_FAULT`` in the worker's environment injects a store bug, to show that the
checks catch one: ``late-commit`` commits each upload only after its response (at the next
call), ``half-commit`` posts the last upload's first half as an upload of its own and then
hangs, as if it had been killed half way through with that half committed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from adjobs.counts import COUNTERS

WORKER_PATH = Path(__file__).resolve()
JOB_ID = "crash"
JOB_CONFIG = {
    "analysis_config": {
        "bucket_span": "5m",
        "detectors": [
            {"function": "metric", "field_name": "responsetime", "by_field_name": "airline"}
        ],
    },
    "data_description": {"time_field": "time", "time_format": "epoch_ms"},
}
#: Every upload of a run covers its own window of this many ms: [base + i*W, base + (i+1)*W).
WINDOW_MS = 6 * 3600 * 1000
#: Out-of-order records are this far before their upload's window.
OUT_OF_ORDER_MS = 24 * 3600 * 1000
#: The first window of a fresh job: 2000-01-01T00:00:00Z.
T0_MS = 946_684_800_000
MIN_BYTES, MAX_BYTES = 200, 2_000_000
MALFORMED_RATE = 0.08
DEFAULT_MAX_UPLOADS = 40
CLOCK_FIELDS = ("last_data_time", "log_time")
COMMON_VALUES = [f"c{k:02d}" for k in range(24)]


# ------------------------------------------------------------------------------------
# Uploads


@dataclass
class Upload:
    """One generated upload and what a correct reader must make of it."""

    body: bytes
    #: "ok", "truncated" (the body ends inside a document) or "junk" (100 malformed docs).
    kind: str
    #: Categorical values of the counted records with a valid time, in order (interned).
    strings: list[str]
    #: Largest time of the counted in-order records (the job's new latest), or None.
    latest_ms: int | None
    #: Byte offset of a line start near the middle (where ``half-commit`` splits).
    middle: int

    @property
    def malformed(self) -> bool:
        return self.kind != "ok"


@dataclass
class Transport:
    """How the worker sends upload i (it does not change what the upload counts)."""

    #: 0: built before START and posted whole; else built inside post_data (the data
    #: iterable builds it on its first step) and streamed in chunks of this many bytes, ...
    chunk: int
    #: ... pausing this many seconds after each chunk, like a slow client.
    pause: float
    #: Seconds between post_data returning and the ACK line (the response is on its way).
    ack_delay: float


def transport(seed: int, base_ms: int, i: int) -> Transport:
    rng = random.Random(f"transport:{seed}:{base_ms}:{i}")
    chunk = rng.choice((4096, 65536, 262144)) if rng.random() < 0.5 else 0
    pause = rng.uniform(0, 0.002) if chunk else 0.0
    return Transport(chunk, pause, rng.uniform(0, 0.004) if rng.random() < 0.3 else 0.0)


def _streamed(seed: int, base_ms: int, i: int, how: Transport):
    body = make_upload(seed, base_ms, i).body
    for offset in range(0, len(body), how.chunk):
        yield body[offset : offset + how.chunk]
        time.sleep(how.pause)


def _stalled(body: bytes):
    """The first half of ``body``, then a client that never sends the rest."""
    yield body[: len(body) // 2]
    _emit("STALLED")
    while True:
        time.sleep(3600)


def _json_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def make_upload(seed: int, base_ms: int, i: int) -> Upload:
    """Upload ``i`` of the run ``(seed, base_ms)``: NDJSON of ~200 B to ~2 MB.

    Records are in order within the upload's window, with some out-of-order records
    (valid times a day before the window: their values are interned too), invalid dates
    (their values are not), missing fields, and new categorical values. About one upload
    in twelve is malformed: it fails with a 400 after counting what came before.
    """
    rng = random.Random(f"{seed}:{base_ms}:{i}")
    start = base_ms + i * WINDOW_MS
    size = int(math.exp(rng.uniform(math.log(MIN_BYTES), math.log(MAX_BYTES))))
    n = max(2, size // 50)
    kind = "ok"
    kinds = random.Random(f"kind:{seed}:{i}")  # not from base_ms: fixed by the seed alone
    if kinds.random() < MALFORMED_RATE:
        kind = kinds.choice(("truncated", "junk"))
    new_values = [f"s{seed}-{i}-{k}" for k in range(rng.randrange(0, 10))]
    if rng.random() < 0.2:
        new_values.append(f"é{seed}-{i}-ü")
    encoded = {v: _json_str(v) for v in COMMON_VALUES + new_values}
    # Records fall in 1-3 clusters of the window, so buckets are busy, sparse or empty.
    segments = []
    for _ in range(rng.randint(1, 3)):
        lo = start + rng.randrange(0, WINDOW_MS - 1000)
        segments.append((lo, min(start + WINDOW_MS, lo + rng.randrange(1000, WINDOW_MS // 2))))
    times = sorted(rng.randrange(*rng.choice(segments)) for _ in range(n))

    lines: list[str] = []
    strings: list[str] = []
    latest: int | None = None
    fresh = iter(new_values)

    def value(r: float) -> str:
        if r < 0.03:
            new = next(fresh, None)
            if new is not None:
                return new
        return COMMON_VALUES[int(r * 997) % len(COMMON_VALUES)]

    def record(j: int) -> None:
        nonlocal latest
        r = rng.random()
        t = times[j]
        if j == 0 or r >= 0.08:  # in order, processed
            v = value(rng.random())
            if r < 0.11:  # no responsetime: one missing field
                lines.append(f'{{"time":{t},"airline":{encoded[v]}}}')
            elif r < 0.13:  # no airline: one missing field, no value
                lines.append(f'{{"time":{t},"responsetime":{j % 1000}.5}}')
                v = ""
            else:
                lines.append(f'{{"time":{t},"airline":{encoded[v]},"responsetime":{j % 1000}.5}}')
            if v:
                strings.append(v)
            latest = t
        elif r < 0.03:  # out of order: a valid time, so its value is interned
            v = f"o{seed}-{i}" if r < 0.005 else value(rng.random())
            lines.append(f'{{"time":{start - OUT_OF_ORDER_MS - j},"airline":{_json_str(v)}}}')
            strings.append(v)
        elif r < 0.055:  # invalid date: the value is never interned
            lines.append(f'{{"time":"n/a","airline":"x{seed}-{i}-{j}","responsetime":1}}')
        else:  # no time field at all: invalid date and a missing field
            lines.append(f'{{"airline":"y{seed}-{i}-{j}","responsetime":2}}')

    if kind == "junk":
        # After `cut` records, 100 junk lines (each a malformed document with no fields)
        # with a record after each; the 100th junk fails the upload, so the record after
        # it and everything later is not counted.
        cut = rng.randrange(1, n)
        for j in range(cut):
            record(j)
        extra = sorted(rng.randrange(times[cut - 1], start + WINDOW_MS) for _ in range(100))
        for k in range(100):
            lines.append(f"#junk {k}")
            t = extra[k]
            v = f"j{seed}-{i}-{k}"
            lines.append(f'{{"time":{t},"airline":{_json_str(v)},"responsetime":{k}}}')
            if k < 99:
                strings.append(v)
                latest = t
        lines.append(f'{{"time":{start + WINDOW_MS - 1},"airline":"after-{seed}-{i}"}}')
    else:
        for j in range(n):
            record(j)
        if kind == "truncated":
            lines.append(f'{{"time":{start + WINDOW_MS - 1},"airline":"t{seed}-{i}","respon')
    body = "\n".join(lines)
    if kind != "truncated" and rng.random() < 0.7:
        body += "\n"
    data = body.encode("utf-8")
    middle = data.rfind(b"\n", 0, max(1, len(data) // 2)) + 1
    return Upload(data, kind, strings, latest, middle)


def post_upload(service, job_id: str, data) -> dict:
    """Post one upload; its committed counts (see the module docstring) and its status."""
    from adjobs.errors import ApiError

    before = _counters(service, job_id)
    try:
        response = service.post_data(job_id, data)
    except ApiError as error:
        if error.status != 400:
            raise
        after = _counters(service, job_id)
        counts = {name: after[name] - before[name] for name in COUNTERS}
        counts["status"] = 400
        return counts
    counts = {k: v for k, v in response.items() if k not in CLOCK_FIELDS and k != "job_id"}
    counts["status"] = 202
    return counts


def _counters(service, job_id: str) -> dict:
    return service.get_job_stats(job_id)["jobs"][0]["data_counts"]


# ------------------------------------------------------------------------------------
# The worker


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _inject_fault(fault: str) -> None:
    from adjobs.service import JobService

    if fault == "late-commit":
        commit = JobService._commit
        post = JobService.post_data
        owed: list = []

        def deferred_post(self, job_id, data, *args, **kwargs):
            while owed:  # the previous upload's commit, after its response
                commit(self, owed.pop())
            JobService._commit = lambda _self, job, *_: owed.append(job)
            try:
                return post(self, job_id, data, *args, **kwargs)
            finally:
                JobService._commit = commit

        JobService.post_data = deferred_post
    elif fault != "half-commit":
        raise SystemExit(f"unknown fault {fault!r}")


def worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("seed", type=int)
    parser.add_argument("base_ms", type=int)
    parser.add_argument("--max-uploads", type=int, default=DEFAULT_MAX_UPLOADS)
    parser.add_argument(
        "--last", choices=("stall", "held"),
        help="the last upload stalls half way (prints STALLED), or returns and its ACK is "
        "held back (prints HELD); either way the worker then waits to be killed",
    )
    args = parser.parse_args(argv)
    fault = os.environ.get("ADJOBS_CRASH_FAULT", "")
    if fault:
        _inject_fault(fault)

    import adjobs
    from adjobs.errors import ApiError

    service = adjobs.JobService(args.dir)
    try:
        service.put_job(JOB_ID, JOB_CONFIG)
    except ApiError as error:
        if error.type != "resource_already_exists_exception":
            raise
    service.open_job(JOB_ID)
    _emit("READY")
    for i in range(args.max_uploads):
        last = args.last if i == args.max_uploads - 1 else None
        how = transport(args.seed, args.base_ms, i)
        if last == "stall":
            data = _stalled(make_upload(args.seed, args.base_ms, i).body)
        elif how.chunk:
            data = _streamed(args.seed, args.base_ms, i, how)
        else:
            data = make_upload(args.seed, args.base_ms, i).body
        _emit(f"START {i}")
        if fault == "half-commit" and i == args.max_uploads - 1:
            upload = make_upload(args.seed, args.base_ms, i)
            service.post_data(JOB_ID, upload.body[: upload.middle])
            _emit("STALLED")
            while True:  # "killed" half way through; the half is committed
                time.sleep(3600)
        counts = post_upload(service, JOB_ID, data)
        if last == "held":
            _emit("HELD")  # post_data returned, but the client never sees the response
            while True:
                time.sleep(3600)
        if how.ack_delay:
            time.sleep(how.ack_delay)
        _emit(f"ACK {i} {json.dumps(counts, sort_keys=True)}")
    _emit("DONE")
    while True:
        time.sleep(3600)


# ------------------------------------------------------------------------------------
# The parent


#: Kills at a random moment: any time after the start (even before the job is open), a
#: moment after upload k started, right after upload k was acknowledged, a moment after
#: the job was opened.
KILL_MODES = ("early", "start", "ack", "timed")
KILL_WEIGHTS = (0.2, 0.35, 0.25, 0.2)
#: Kills at a set point, with 1-5 uploads: the last one stalled half way through (it must
#: count nothing), the last one returned but not acknowledged (it must count whole), all
#: acknowledged and the job still open.
SET_MODES = ("stall", "held", "done")


@dataclass
class Outcome:
    """What one worker run printed before it was killed."""

    mode: str
    max_uploads: int
    acks: list[tuple[int, dict]]
    in_flight: int | None
    ready: bool
    done: bool
    lines: list[str]


@dataclass
class Figures:
    iterations: int = 0
    acked_uploads: int = 0
    acked_malformed: int = 0
    in_flight_counted: int = 0
    in_flight_lost: int = 0
    killed_between_uploads: int = 0
    killed_before_ready: int = 0
    test_process_reopens: int = 0
    kill_modes: dict = field(default_factory=lambda: dict.fromkeys(KILL_MODES + SET_MODES, 0))


class CrashHarness:
    """Runs the kill loop on one data directory and checks the store after every kill.

    State accumulates in the directory across iterations; ``self.reference`` is an
    in-memory service fed exactly the uploads the store must hold, without crashes, and
    closed and reopened whenever the parent closes and reopens the real job.
    """

    def __init__(self, directory: str | os.PathLike, *, env: dict | None = None) -> None:
        import adjobs

        self.directory = Path(directory)
        self.env = {**os.environ, **(env or {})}
        self.reference = adjobs.JobService()
        self.reference.put_job(JOB_ID, JOB_CONFIG)
        self.reference_open = False
        self.job_created = False
        self.sums = dict.fromkeys(COUNTERS, 0)
        self.strings: list[str] = []
        self._known: set[str] = set()
        self.latest_ms: int | None = None
        self.base_ms = T0_MS
        self.figures = Figures()
        self.violations: list[str] = []

    def close(self) -> None:
        self.reference.close()

    # -- one iteration -----------------------------------------------------------------

    def run_iteration(self, rng: random.Random, mode: str | None = None,
                      max_uploads: int | None = None) -> list[str]:
        """Start a worker, kill it, check the store; the violations of this iteration.

        ``mode`` is one of :data:`KILL_MODES` or :data:`SET_MODES` (default: a random
        kill mode). Every random choice comes from ``rng``, whatever the timing.
        """
        seed = self.figures.iterations
        base = self.base_ms
        mode = mode or rng.choices(KILL_MODES, KILL_WEIGHTS)[0]
        if max_uploads is None:
            max_uploads = rng.randint(1, 5) if mode in SET_MODES else DEFAULT_MAX_UPLOADS
        outcome, problems = self._run_worker(seed, base, mode, rng, max_uploads)
        self.figures.iterations += 1
        self.figures.kill_modes[mode] += 1
        if not problems:
            problems = self._check(seed, base, outcome, reopen=rng.random() < 0.5)
        problems = [f"iteration {seed} ({mode} kill): {p}" for p in problems]
        self.violations.extend(problems)
        latest = self.latest_ms if self.latest_ms is not None else T0_MS - WINDOW_MS
        self.base_ms = (latest // WINDOW_MS + 1 + rng.randrange(0, 2)) * WINDOW_MS
        return problems

    def _run_worker(self, seed: int, base: int, mode: str, rng: random.Random,
                    max_uploads: int) -> tuple[Outcome, list[str]]:
        command = [sys.executable, str(WORKER_PATH), str(self.directory), str(seed), str(base),
                   "--max-uploads", str(max_uploads)]
        if mode in ("stall", "held"):
            command += ["--last", mode]
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                       env=self.env)
            lines: queue.Queue = queue.Queue()
            reader = threading.Thread(target=_read_lines, args=(process.stdout, lines))
            reader.start()
            seen: list[str] = []
            try:
                if mode == "early":
                    time.sleep(rng.uniform(0, 0.4))
                elif mode == "start":
                    _wait_for(lines, seen, f"START {rng.randrange(0, 5)}")
                    time.sleep(rng.uniform(0, 0.05))
                elif mode == "ack":
                    _wait_for(lines, seen, f"ACK {rng.randrange(0, 5)} ")
                elif mode == "timed":
                    _wait_for(lines, seen, "READY")
                    time.sleep(rng.uniform(0, 0.5))
                else:
                    _wait_for(lines, seen, {"stall": "STALLED", "held": "HELD"}.get(mode, "DONE"))
            finally:
                alive = process.poll() is None
                process.send_signal(signal.SIGKILL)
                process.wait()
                reader.join()
            while True:
                line = lines.get()
                if line is None:
                    break
                seen.append(line)
            stderr.seek(0)
            errors = stderr.read().decode("utf-8", "replace")
        problems = []
        if not alive or process.returncode != -signal.SIGKILL:
            problems.append(f"the worker exited by itself ({process.returncode}): {errors}")
        outcome, protocol = _parse(mode, max_uploads, seen)
        return outcome, problems + protocol

    # -- the checks --------------------------------------------------------------------

    def _feed_reference(self, upload: Upload) -> dict:
        if not self.reference_open:
            self.reference.open_job(JOB_ID)
            self.reference_open = True
        return post_upload(self.reference, JOB_ID, upload.body)

    def _count(self, upload: Upload, counts: dict) -> None:
        for name in COUNTERS:
            self.sums[name] += counts[name]
        for value in upload.strings:
            if value not in self._known:
                self._known.add(value)
                self.strings.append(value)
        if upload.latest_ms is not None:
            self.latest_ms = upload.latest_ms

    def _check(self, seed: int, base: int, outcome: Outcome, *, reopen: bool) -> list[str]:
        import adjobs

        problems: list[str] = []
        figures = self.figures
        # Every acknowledged upload, in order, through the uninterrupted reference: its
        # response must be what the worker saw (so a reopen after a kill continued the
        # diagnostics window where the last upload left it).
        for i, acked in outcome.acks:
            upload = make_upload(seed, base, i)
            expected = self._feed_reference(upload)
            if acked != expected:
                problems.append(f"upload {i} was acknowledged with {acked}, but an "
                                f"uninterrupted job answers {expected}")
            self._count(upload, acked)
            figures.acked_uploads += 1
            figures.acked_malformed += upload.malformed
        if outcome.acks:
            self.job_created = True
        if not outcome.ready:
            figures.killed_before_ready += 1
        elif outcome.in_flight is None:
            figures.killed_between_uploads += 1

        service = adjobs.JobService(self.directory)
        try:
            integrity = service.store.integrity_check()
            if integrity != ["ok"]:
                problems.append(f"PRAGMA integrity_check: {integrity}")
            stored = service.store.load(JOB_ID)
            if stored is None:
                if self.job_created or outcome.ready:
                    problems.append("the job is gone from the store")
                return problems
            self.job_created = True
            stats = service.get_job_stats(JOB_ID)["jobs"][0]
            if stats["state"] != "closed":
                problems.append(f"the killed worker still owns the job ({stats['state']})")
            durable = _strip(stats["data_counts"])
            reference = _strip(_counters(self.reference, JOB_ID))
            in_flight_counts = None
            if durable != reference and outcome.in_flight is not None:
                # Not what the acknowledged uploads make: the in-flight upload, whole?
                upload = make_upload(seed, base, outcome.in_flight)
                in_flight_counts = self._feed_reference(upload)
                self._count(upload, in_flight_counts)
                reference = _strip(_counters(self.reference, JOB_ID))
            if outcome.in_flight is not None:
                if in_flight_counts is None:
                    figures.in_flight_lost += 1
                else:
                    figures.in_flight_counted += 1
            if outcome.mode == "held" and in_flight_counts is None:
                problems.append(f"upload {outcome.in_flight} returned from post_data, but the "
                                "store does not hold it")
            if outcome.mode == "stall" and in_flight_counts is not None:
                problems.append(f"upload {outcome.in_flight} was cut off half way, but the "
                                "store counts it")
            if durable != reference:
                problems.append(
                    f"stored counts {durable} are neither the acknowledged uploads' nor those "
                    f"plus the whole in-flight upload {outcome.in_flight}: {reference}"
                )
            sums = {name: durable[name] for name in COUNTERS}
            if sums != self.sums:
                problems.append(f"stored counters {sums} != sum of the counted uploads' "
                                f"counts {self.sums}")
            if durable.get("latest_record_timestamp") != self.latest_ms:
                problems.append(f"latest_record_timestamp {durable.get('latest_record_timestamp')}"
                                f" != {self.latest_ms}, the last counted in-order record")
            values = service.string_values(JOB_ID)
            if values != self.strings:
                problems.append(f"{len(values)} stored categorical values != the "
                                f"{len(self.strings)} of the counted uploads; first difference: "
                                f"{_first_difference(values, self.strings)}")
            if stored.string_count != len(values):
                problems.append(f"string_count {stored.string_count} != {len(values)} values")
            problems += self._check_window(stored.diagnostics)
            if reopen and not problems:
                problems += self._reopen(service, stored.diagnostics, durable)
        finally:
            service.close()
        return problems

    def _check_window(self, window: dict | None) -> list[str]:
        """The stored diagnostics window is the one the reference committed last."""
        if window is None:
            if self.reference_open:
                return ["the diagnostics window of an open job is missing"]
            return []
        if not self.reference_open:  # a worker opened the closed job: the phantom seed
            self.reference.open_job(JOB_ID)
            self.reference_open = True
        expected = self.reference.store.load(JOB_ID).diagnostics
        if window != expected:
            return [f"stored diagnostics window {window} != {expected}"]
        return []

    def _reopen(self, service, window: dict | None, durable: dict) -> list[str]:
        """Open the job here (no clean-up after the kill), then close it for the next run."""
        problems = []
        service.open_job(JOB_ID)
        self.figures.test_process_reopens += 1
        reopened = service.store.load(JOB_ID)
        if window is not None and reopened.diagnostics != window:
            problems.append(f"open_job after the kill did not restore the committed window "
                            f"{window}: {reopened.diagnostics}")
        counts = _strip(_counters(service, JOB_ID))
        if counts != durable:
            problems.append(f"the reopened job counts {counts}, the store holds {durable}")
        if service.string_values(JOB_ID) != self.strings:
            problems.append("the reopened job's categorical values differ from the store's")
        service.close_job(JOB_ID)
        if self.reference_open:
            self.reference.close_job(JOB_ID)
            self.reference_open = False
        return problems


def _strip(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if k not in CLOCK_FIELDS}


def _first_difference(got: list[str], want: list[str]) -> str:
    for k, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"at {k}: {a!r} != {b!r}"
    return f"at {min(len(got), len(want))}: one list ends"


def _read_lines(stream, lines: queue.Queue) -> None:
    for raw in stream:
        lines.put(raw.decode("utf-8", "replace"))
    stream.close()
    lines.put(None)


def _wait_for(lines: queue.Queue, seen: list[str], prefix: str) -> None:
    """Collect the worker's lines until one starts with ``prefix`` (or the output ends)."""
    while True:
        try:
            line = lines.get(timeout=120)  # a hang guard, not a timing check
        except queue.Empty:
            return
        if line is None:
            lines.put(None)
            return
        seen.append(line)
        if line.startswith(prefix):
            return


def _parse(mode: str, max_uploads: int, seen: list[str]) -> tuple[Outcome, list[str]]:
    """Acknowledged uploads and the in-flight one, checking the line protocol."""
    problems: list[str] = []
    acks: list[tuple[int, dict]] = []
    started: int | None = None
    ready = done = False
    for line in seen:
        if not line.endswith("\n"):
            problems.append(f"a torn line: {line!r}")
            continue
        word, _, rest = line.rstrip("\n").partition(" ")
        if word == "READY" and not ready:
            ready = True
        elif word == "START" and ready and started is None and int(rest) == len(acks):
            started = int(rest)
        elif word == "ACK" and started is not None and rest.startswith(f"{started} "):
            acks.append((started, json.loads(rest.partition(" ")[2])))
            started = None
        elif word == "DONE" and ready and started is None:
            done = True
        elif word in ("STALLED", "HELD") and started is not None:
            pass
        else:
            problems.append(f"unexpected worker output {line!r}")
    if mode in SET_MODES:
        wanted = max_uploads if mode == "done" else max_uploads - 1
        if len(acks) != wanted or (started is None) != (mode == "done"):
            problems.append(f"expected {wanted} acknowledged uploads and "
                            f"{'none' if mode == 'done' else 'one'} in flight: {seen}")
    return Outcome(mode, max_uploads, acks, started, ready, done, seen), problems


if __name__ == "__main__":
    worker_main()
