"""Store benchmark: what the durable SQLite job store costs ``post_data``.

Run from the repository root::

    python -m bench.store --json               # full run: 2000 uploads per repeat, ~100 MB file
    python -m bench.store --json --quick       # fewer uploads, ~5 MB file, smoke run
    python -m bench.store --json --dir /data   # data directories under /data instead of .

Two questions, each answered against an in-memory ``JobService()`` measured in the same
command:

* ``small_uploads``: a store-backed job (``JobService(path=...)``: every ``post_data``
  is one fsynced transaction, WAL with ``synchronous=FULL``) receives many ~1 KB NDJSON
  uploads, one ``post_data`` call each, with increasing times. Reported: uploads/s (the
  median over repeats), p50/p99 latency per call (over every measured call), and the share
  of each call spent in ``Store.commit_upload``. Target: >= 500 uploads/s.
* ``large_file``: the ~100 MB NDJSON file of ``bench.ingest`` (same cache, same bytes) is
  posted in one call to a store-backed job and to an in-memory job. Reported: MB/s of
  each (the median over all posts) and ``ratio`` = store / in-memory of those. Target:
  >= 0.90. As diagnostics on a noisy machine: ``ratio_runs`` and ``ratio_pairs_median``
  (the ratios of posts run back to back), ``cpu_ratio`` (from process CPU time, which
  excludes waiting for a CPU) and the duration of the one ``Store.commit_upload`` of a
  post, which is all the store adds to it.

The data directories are temporary directories under ``--dir`` (default: the current
directory, so on the real disk and not on a tmpfs, where fsync costs nothing); they are
removed at the end. The environment section names the filesystem they were on and how
many plain ``write`` + ``fsync`` calls per second it takes, the ceiling of any durable
upload rate.

Every repeat of every configuration runs in a fresh subprocess (its peak RSS is its own),
with one unmeasured warm-up run first (so the file comes from the page cache and imports
have settled). The store and in-memory configurations alternate, store first on even
repeats and in-memory first on odd ones, so that a drift in the machine's load hits both
alike. For the large file, whose speed swings by up to 2x from one second to the next on a
shared machine, the two subprocesses of a repeat stay alive and post 4 times each,
alternating post by post.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import (
    LineWorker,
    bench_parser,
    cache_dir,
    load_average,
    load_note,
    log,
    machine_info,
    peak_rss_mb,
    ratio,
    run_and_print,
    run_worker,
    throughput,
)
from bench.ingest import QUICK_TARGET_BYTES, TARGET_BYTES, _scale_for, ensure_input

MB = 1_000_000
#: Measured ``post_data`` calls per repeat of the small-upload case.
UPLOADS_PER_REPEAT = 2000
QUICK_UPLOADS_PER_REPEAT = 300
#: Unmeasured uploads of the warm-up run, on a job of its own.
WARMUP_UPLOADS = 200
#: Upper bound of one small upload's size: whole records are packed up to it.
UPLOAD_BYTES = 1024
#: Measured posts of the large file per worker subprocess (after one warm-up post).
LARGE_INNER_RUNS = 4
TARGETS = {"small_uploads.uploads_per_s": 500, "large_file.ratio": 0.90}
#: Filesystems on which fsync does not reach a disk.
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


# --- inputs -----------------------------------------------------------------------------------


def small_uploads(count: int, seed: int) -> list[bytes]:
    """``count`` NDJSON uploads of about 1 KB each, farequote records in ascending time.

    Whole lines are packed greedily up to :data:`UPLOAD_BYTES`; consecutive uploads hold
    consecutive records, so every record is in order for the job. A pure function of its
    arguments: every worker builds the same uploads.
    """
    from adjobs import datagen

    buffer = io.BytesIO()
    # ~17k records a day at scale 1; 12 or so records per upload.
    days = max(1.0, count * 14 / 15_000)
    datagen.write_ndjson(buffer, datagen.generate_batches(seed=seed, days=days))
    uploads: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for line in buffer.getvalue().splitlines(keepends=True):
        if size + len(line) > UPLOAD_BYTES and pending:
            uploads.append(b"".join(pending))
            if len(uploads) == count:
                return uploads
            pending, size = [], 0
        pending.append(line)
        size += len(line)
    raise SystemExit(f"generated data holds only {len(uploads)} uploads of {count}")


# --- workers: each runs in its own subprocess ---------------------------------------------------


def _service(backend: str, data_dir: Path):
    import adjobs

    if backend == "store":
        return adjobs.JobService(path=data_dir)
    return adjobs.JobService()


def _new_job(service, job_id: str) -> None:
    from adjobs.datagen import demo_job_config

    service.put_job(job_id, demo_job_config())
    service.open_job(job_id)


def _processed(service, job_id: str) -> int:
    stats = service.get_job_stats(job_id)["jobs"][0]
    return stats["data_counts"]["processed_record_count"]


def _time_commits(service) -> list[float]:
    """Record the duration of every ``Store.commit_upload`` of ``service`` in the list returned.

    A wrapper on this one store instance (src is not touched): two perf_counter calls per
    upload, well under a microsecond.
    """
    store = service.store
    commit = store.commit_upload
    seconds: list[float] = []

    def timed_commit(*args, **kwargs):
        start = time.perf_counter()
        try:
            return commit(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    store.commit_upload = timed_commit
    return seconds


def _worker_small(backend: str, data_dir: Path, count: int, seed: int) -> dict:
    uploads = small_uploads(count, seed)
    expected = sum(upload.count(b"\n") for upload in uploads)
    service = _service(backend, data_dir)
    commit_seconds = _time_commits(service)
    try:
        _new_job(service, "bench-store-warmup")
        for upload in uploads[:WARMUP_UPLOADS]:
            service.post_data("bench-store-warmup", upload)
        service.close_job("bench-store-warmup")
        commit_seconds.clear()

        job_id = "bench-store-small"
        _new_job(service, job_id)
        post = service.post_data
        clock = time.perf_counter
        latencies = []
        begin = clock()
        for upload in uploads:
            start = clock()
            post(job_id, upload)
            latencies.append(clock() - start)
        seconds = clock() - begin
        processed = _processed(service, job_id)
        service.close_job(job_id)
    finally:
        service.close()
    if processed != expected:
        raise SystemExit(f"{backend}: processed {processed} records of {expected}")
    return {
        "seconds": seconds,
        "uploads": len(uploads),
        "upload_bytes": sum(len(upload) for upload in uploads),
        "records": expected,
        "latencies_ms": [round(s * 1e3, 4) for s in latencies],
        "commit_ms": [round(s * 1e3, 4) for s in commit_seconds],
    }


def _serve_large(backend: str, data_dir: Path, path: Path, records: int) -> None:
    """Post the large file once per ``run`` line on stdin; one JSON line per post on stdout.

    One warm-up post comes first (its line says ``"ready"``). ``quit`` (or the end of
    stdin) closes the service and prints this process's peak RSS as the last line.
    """
    service = _service(backend, data_dir)
    commit_seconds = _time_commits(service)

    def post(index: int) -> dict:
        job_id = f"bench-store-large-{index}"
        _new_job(service, job_id)
        cpu_start = time.process_time()
        # time.monotonic: one clock for every process, so bench.http can span two workers.
        start = time.monotonic()
        counts = service.post_data(job_id, path)
        end = time.monotonic()
        cpu_seconds = time.process_time() - cpu_start
        if counts["processed_record_count"] != records:
            raise SystemExit(
                f"{backend}: processed {counts['processed_record_count']} records of "
                f"{records} in {path}"
            )
        service.close_job(job_id)
        service.delete_job(job_id)
        return {
            "seconds": end - start,
            "start": start,
            "end": end,
            "cpu_seconds": cpu_seconds,
            "commit_seconds": commit_seconds[-1],
        }

    try:
        print(json.dumps({"ready": True, **post(0)}), flush=True)
        for index, line in enumerate(sys.stdin, 1):
            if line.strip() != "run":
                break
            print(json.dumps(post(index)), flush=True)
    finally:
        service.close()
    print(json.dumps({"vm_hwm_mb": round(peak_rss_mb(), 1)}), flush=True)


CASES = ("small-store", "small-memory", "large-store", "large-memory")


def _run_worker_main(options: argparse.Namespace) -> None:
    kind, backend = options.worker.split("-")
    if kind == "large":
        _serve_large(backend, options.data_dir, options.file, options.records)
        return
    result = _worker_small(backend, options.data_dir, options.uploads, options.seed)
    result["case"] = options.worker
    result["vm_hwm_mb"] = round(peak_rss_mb(), 1)
    json.dump(result, sys.stdout)


# --- environment ------------------------------------------------------------------------------


def filesystem_of(path: Path) -> dict | None:
    """The mount that holds ``path``, from ``/proc/mounts`` (``None`` where unavailable)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        # /proc/mounts escapes blanks and backslashes as octal (\040).
        mount_point = fields[1].encode().decode("unicode_escape")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # The longest prefix wins; among equal ones the last, which is mounted on top.
        if inside and (best is None or len(mount_point) >= len(best["mount_point"])):
            best = {
                "mount_point": mount_point,
                "device": fields[0],
                "type": fields[2],
                "options": fields[3],
            }
    return best


def fsync_rate(directory: Path, count: int = 200) -> float:
    """Plain ``write`` of 100 bytes + ``fsync`` per second, in ``directory``."""
    probe = directory / "fsync-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 100)
            os.fsync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        probe.unlink()
    return round(count / seconds)


# --- driver ---------------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _latency_summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": round(_percentile(ordered, 0.50), 3),
        "p99": round(_percentile(ordered, 0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
        "calls": len(ordered),
    }


def _orders(repeats: int) -> list[tuple[str, str]]:
    return [("store", "memory") if i % 2 == 0 else ("memory", "store") for i in range(repeats)]


def _worker_args(case: str, data_dir: Path, **extra: object) -> list[str]:
    args = ["--worker", case, "--data-dir", str(data_dir)]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def measure_small(repeats: int, count: int, seed: int, root: Path) -> dict:
    """The small-upload case: ``repeats`` alternating pairs of worker subprocesses."""
    results: dict[str, list[dict]] = {"store": [], "memory": []}
    for index, order in enumerate(_orders(repeats)):
        for backend in order:
            log(f"small uploads: {backend}, repeat {index + 1}/{repeats} ({count} uploads) ...")
            data_dir = root / f"small-{backend}-{index}"
            args = _worker_args(f"small-{backend}", data_dir, uploads=count, seed=seed)
            results[backend].append(run_worker("bench.store", args))
            if backend == "store":
                shutil.rmtree(data_dir, ignore_errors=True)
    first = results["store"][0]
    section: dict = {
        "uploads_per_repeat": first["uploads"],
        "upload_bytes_mean": round(first["upload_bytes"] / first["uploads"], 1),
        "records_per_upload_mean": round(first["records"] / first["uploads"], 2),
        "order": [list(order) for order in _orders(repeats)],
    }
    for backend, runs in results.items():
        rates = [run["uploads"] / run["seconds"] for run in runs]
        latencies = [ms for run in runs for ms in run["latencies_ms"]]
        commits = [ms for run in runs for ms in run["commit_ms"]]
        figures = {
            "uploads_per_s": round(statistics.median(rates)),
            "uploads_per_s_runs": [round(rate) for rate in rates],
            "mb_per_s": round(
                statistics.median(run["upload_bytes"] / MB / run["seconds"] for run in runs), 3
            ),
            "latency_ms": _latency_summary(latencies),
            # Store.commit_upload alone: the transaction, and for the store its fsync.
            "commit_upload_ms": _latency_summary(commits),
            "commit_share": round(sum(commits) / sum(latencies), 3),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        }
        section[backend] = figures
    store_rate = section["store"]["uploads_per_s"]
    section["store_vs_memory"] = ratio(store_rate, section["memory"]["uploads_per_s"])
    section["target"] = TARGETS["small_uploads.uploads_per_s"]
    section["met"] = store_rate >= section["target"]
    return section


def measure_large(repeats: int, data: dict, root: Path) -> dict:
    """The large-file case: ``repeats`` pairs of worker subprocesses, posts alternating.

    Each repeat starts a fresh subprocess per backend, warms both up, then posts
    :data:`LARGE_INNER_RUNS` times in each, alternating post by post (store, memory,
    memory, store, ...; memory first on odd repeats), so that the two posts of a pair run
    back to back under the same machine conditions.
    """
    runs: dict[str, list[dict]] = {"store": [], "memory": []}
    rss: dict[str, list[float]] = {"store": [], "memory": []}
    pair_ratios = []
    for index, order in enumerate(_orders(repeats)):
        log(f"large file: repeat {index + 1}/{repeats} ({LARGE_INNER_RUNS} posts each) ...")
        servers = {}
        try:
            for backend in order:
                args = _worker_args(
                    f"large-{backend}",
                    root / f"large-{backend}-{index}",
                    file=Path(data["path"]).resolve(),
                    records=data["records"],
                )
                servers[backend] = LineWorker("bench.store", args)
            for inner in range(LARGE_INNER_RUNS):
                pair = {}
                for backend in order if inner % 2 == 0 else order[::-1]:
                    pair[backend] = servers[backend].run()
                    runs[backend].append(pair[backend])
                pair_ratios.append(pair["memory"]["seconds"] / pair["store"]["seconds"])
            for backend in order:
                rss[backend].append(servers.pop(backend).close())
        finally:
            for server in servers.values():
                server.process.kill()
                server.process.wait()
        shutil.rmtree(root / f"large-store-{index}", ignore_errors=True)
    section: dict = {"input": data, "posts_per_backend": len(runs["store"])}
    for backend, posts in runs.items():
        seconds = [post["seconds"] for post in posts]
        median = statistics.median(seconds)
        section[backend] = {
            "seconds_median": round(median, 4),
            "seconds_runs": [round(s, 4) for s in seconds],
            **throughput(median, data["bytes"], data["records"]),
            "mb_per_s_runs": [round(data["bytes"] / MB / s, 1) for s in seconds],
            "cpu_seconds_median": round(statistics.median(p["cpu_seconds"] for p in posts), 4),
            # The one Store.commit_upload at the end of each post.
            "commit_upload_ms_median": round(
                statistics.median(p["commit_seconds"] for p in posts) * 1e3, 3
            ),
            "peak_rss_mb": max(rss[backend]),
        }
    section["ratio"] = ratio(section["store"]["mb_per_s"], section["memory"]["mb_per_s"])
    # Diagnostics only (``met`` is on ``ratio``): the ratio of each back-to-back pair,
    # their median, and the ratio of CPU times (waiting for a CPU is not CPU time).
    section["ratio_runs"] = [round(r, 3) for r in pair_ratios]
    section["ratio_pairs_median"] = round(statistics.median(pair_ratios), 3)
    section["cpu_ratio"] = ratio(
        section["memory"]["cpu_seconds_median"], section["store"]["cpu_seconds_median"]
    )
    section["target"] = TARGETS["large_file.ratio"]
    section["met"] = section["ratio"] is not None and section["ratio"] >= section["target"]
    return section


def environment(data_root: Path, load_before: list[float], load_after: list[float]) -> dict:
    filesystem = filesystem_of(data_root)
    info = {
        "cpu_count": os.cpu_count(),
        "load_average": {
            "before": load_before,
            "after": load_after,
            "note": load_note(load_before, load_after),
        },
        "python": platform.python_version(),
        "sqlite_version": sqlite3.sqlite_version,
        "data_root": str(data_root),
        "filesystem": filesystem,
        "raw_fsync_per_s": fsync_rate(data_root),
        "machine": machine_info(),
    }
    if filesystem and filesystem["type"] in MEMORY_FILESYSTEMS:
        info["warning"] = (
            f"the data directories are on {filesystem['type']}: fsync reaches no disk, so the "
            "store figures are not those of a durable store"
        )
    return info


def run(options: argparse.Namespace) -> dict:
    """Generate the inputs, measure every configuration and assemble the report."""
    repeats = options.repeats
    seed = options.seed
    count = options.uploads or (QUICK_UPLOADS_PER_REPEAT if options.quick else UPLOADS_PER_REPEAT)
    targets = QUICK_TARGET_BYTES if options.quick else TARGET_BYTES
    log(f"bench.store seed={seed}")
    load_before = load_average()

    # The scale bench.ingest picks, so that both benchmarks post one cached file.
    scale = _scale_for(targets, ["ndjson", "csv"], seed)
    data = ensure_input("ndjson", scale=scale, seed=seed, directory=cache_dir(options.cache_dir))
    if data["bytes"] < targets["ndjson"]:
        raise SystemExit(f"ndjson input is {data['bytes']} bytes, below {targets['ndjson']}")

    parent = Path(options.dir).resolve() if options.dir else Path.cwd()
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".bench-store-", dir=parent))
    try:
        env_root = filesystem_of(root)
        log(f"data directories under {root} ({env_root and env_root['type']})")
        small = measure_small(repeats, count, seed, root)
        large = measure_large(repeats, data, root)
        load_after = load_average()
        env = environment(root, load_before, load_after)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "store",
        "seed": seed,
        "quick": options.quick,
        "repeats": repeats,
        "targets": TARGETS,
        "environment": env,
        "small_uploads": small,
        "large_file": large,
    }


def _print_table(report: dict) -> None:
    env = report["environment"]
    fs = env["filesystem"] or {}
    print(f"store benchmark, seed {report['seed']}, {env['machine']['cpu']}")
    print(
        f"data on {fs.get('type')} ({fs.get('device')}), {env['raw_fsync_per_s']} fsync/s, "
        f"SQLite {env['sqlite_version']}; {env['load_average']['note']}"
    )
    small = report["small_uploads"]
    print(f"\nsmall uploads ({small['upload_bytes_mean']:.0f} B each)")
    for backend in ("store", "memory"):
        figures = small[backend]
        latency = figures["latency_ms"]
        print(
            f"  {backend:<7} {figures['uploads_per_s']:>8,} uploads/s  "
            f"p50 {latency['p50']:.3f} ms  p99 {latency['p99']:.3f} ms  "
            f"commit share {figures['commit_share']:.0%}"
        )
    print(f"  target >= {small['target']} uploads/s: {'met' if small['met'] else 'MISSED'}")
    large = report["large_file"]
    print(f"\nlarge file ({large['input']['bytes'] / MB:.0f} MB)")
    for backend in ("store", "memory"):
        figures = large[backend]
        print(
            f"  {backend:<7} {figures['mb_per_s']:>8.1f} MB/s  peak RSS "
            f"{figures['peak_rss_mb']:.0f} MB"
        )
    print(
        f"  ratio {large['ratio']} (target >= {large['target']}: "
        f"{'met' if large['met'] else 'MISSED'})"
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m bench.store --help``)."""
    parser = bench_parser("bench.store", __doc__.split("\n")[0], "fewer uploads, ~5 MB file")
    parser.add_argument(
        "--dir",
        default=None,
        help="where the temporary data directories go (default: the current directory)",
    )
    parser.add_argument("--uploads", type=int, default=None, help="small uploads per repeat")
    # Internal: one configuration, in a subprocess started by the driver.
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.worker:
        _run_worker_main(options)
        return
    if options.uploads is not None and options.uploads < 1:
        parser.error("--uploads must be positive")
    run_and_print(parser, options, run, _print_table)


if __name__ == "__main__":
    main()
