"""HTTP benchmark: ``adjobs serve`` against the library, two uploads at once, and a soak.

Run from the repository root (``make bench-http`` runs the first line)::

    python -m bench.http --json                 # full run, 30 s soak (about 3 minutes)
    python -m bench.http --json --quick         # small inputs, 5 s soak: a smoke run
    python -m bench.http --json --repeats 7     # more measured runs per configuration
    python -m bench.http --json --dir /data     # data directories under /data instead of .
    python -m bench.http --json --sections throughput,parallel

Every server is ``python -m adjobs serve`` (uvicorn + httptools) in a subprocess on a free
loopback port, with ``--max-content-length 1gb`` and its data directory in a temporary
directory under ``--dir`` (default: the current directory, so on the real disk and not on
a tmpfs, as in bench.store), removed at the end (``--keep`` keeps it, with the server logs).
Uploads send their headers with http.client and their body with ``socket.sendfile``
straight from the file, on a socket with a 4 MiB send buffer, so the client costs little
CPU (``client_cpu_seconds``). Servers are stopped with SIGTERM: their exit code is -15 because uvicorn
re-raises the signal after its graceful shutdown; ``server_log.clean_shutdown`` says
whether that shutdown completed.

Sections, each measured in the same command as its reference:

* ``throughput``: the ~112 MB NDJSON file of bench.ingest (same cache, same bytes) posted to
  ``_data`` vs ``JobService(dir).post_data(job, Path(file))`` in a worker subprocess (bench.store's
``large-store`` worker); posts
  alternate (http, library, library, http, ...), each to a fresh job, after one unmeasured
  warm-up post each. ``ratio`` = median HTTP MB/s / median library MB/s; target >= 0.70.
  ``cpu_ratio`` = library CPU seconds / server CPU seconds, which waiting for a CPU (a busy
  machine) does not change.
* ``parallel``: a ~50 MB slice of that file (cut at a newline) posted to two jobs at once by
  two client threads vs to one job alone, alternating. ``speedup`` = aggregate MB/s of the
  pair / MB/s alone; target >= 1.6. ``machine_ceiling`` is the same with two library
  processes instead of one server: what this machine gives two CPU-bound processes at the
  time. The two targets pull apart on 2 CPUs: the better one upload alone uses both CPUs
  (throughput), the less room a second upload finds (speedup).
* ``soak``: 20 client threads post ~1 MB NDJSON uploads (client i to job i; consecutive
  slices of one time-ordered file, so times increase per job) back to back for 30 s
  (``--quick``: 5 s), while another thread polls ``_stats`` of the jobs in turn every
  10 ms. Every non-202 ``_data`` answer, non-200 ``_stats`` answer or failed request is an
  unexpected error (target: 0). Afterwards every job's ``processed_record_count`` must equal
  the sum of those of its 202 responses. ``stats_latency_idle_ms`` is ``_stats`` on the
  idle server just before, for reference.
* ``environment``: CPUs, load averages before and after, CPU time that processes other than
  ours took during the run (approximate: it also holds kernel time charged to no process),
  versions (python, uvicorn, httptools, h11, SQLite), the filesystem of the data.
"""

from __future__ import annotations

import argparse
import http.client
import json
import mmap
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    REPO_ROOT,
    LineWorker,
    bench_parser,
    cache_dir,
    load_average,
    load_note,
    log,
    machine_info,
    package_version,
    ratio,
    run_and_print,
    worker_env,
)
from bench.ingest import (
    QUICK_TARGET_BYTES,
    TARGET_BYTES,
    _datagen_version,
    _scale_for,
    ensure_input,
)
from bench.store import _latency_summary, filesystem_of

MB = 1_000_000
MIB = 1 << 20
TARGETS = {"throughput.ratio": 0.70, "parallel.speedup": 1.6, "soak.unexpected_errors": 0}
#: SO_SNDBUF of every client socket (Linux doubles it, up to twice net.core.wmem_max).
SEND_BUFFER = 4 * MIB
MAX_CONTENT_LENGTH = "1gb"
#: Size of each of the two concurrent uploads of the parallel section.
PARALLEL_BYTES = {"full": 50 * MB, "quick": 5 * MB}
SOAK_CLIENTS = 20
SOAK_UPLOAD_BYTES = 1 * MB
SOAK_SECONDS = {"full": 30.0, "quick": 5.0}
#: Days of data in the soak file: enough ~1 MB uploads that no client runs out of them.
SOAK_DAYS = {"full": 20, "quick": 4}
#: Pause of the ``_stats`` poller between two calls.
STATS_PAUSE_S = 0.01
#: ``_stats`` calls on the idle server before the soak, for reference.
IDLE_STATS_CALLS = 100
SECTIONS = ("throughput", "parallel", "soak")
START_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 600
#: A client reconnects after this long without a request (uvicorn's keep-alive is 5 s).
IDLE_S = 2.0


# --- inputs -----------------------------------------------------------------------------------


def ensure_soak_input(*, seed: int, scale: float, days: float, directory: Path) -> dict:
    """Generate (or reuse from the cache) the NDJSON file of the soak: ``days`` of records.

    The same generator and naming as :func:`bench.ingest.ensure_input`, with the number of
    days in the name.
    """
    from adjobs import datagen

    stem = f"farequote-seed{seed}-scale{scale:g}-days{days:g}-{_datagen_version()}"
    path = directory / f"{stem}.ndjson"
    meta_path = path.with_suffix(".ndjson.json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == path.stat().st_size:
            return meta
    log(f"generating {path.name} (seed={seed}, scale={scale:g}, days={days:g}) ...")
    partial = path.with_suffix(".ndjson.partial")
    records = datagen.write_ndjson(
        partial, datagen.generate_batches(seed=seed, scale=scale, days=days)
    )
    partial.replace(path)
    meta = {"path": str(path), "bytes": path.stat().st_size, "records": records}
    meta_path.write_text(json.dumps(meta))
    return meta


def cut_at_newlines(path: Path, size: int, limit: int | None = None) -> list[tuple[int, int, int]]:
    """``(offset, length, records)`` of consecutive slices of ``path``, each ending at the
    first newline at or after ``size`` bytes (the last one at the end of the file)."""
    slices = []
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        total = len(m)
        start = 0
        while start < total and (limit is None or len(slices) < limit):
            newline = m.find(b"\n", min(start + size, total) - 1)
            end = total if newline < 0 else newline + 1
            slices.append((start, end - start, m[start:end].count(b"\n")))
            start = end
    return slices


def write_slice(source: Path, target: Path, size: int) -> dict:
    """Copy the first ``size`` bytes of ``source`` (to the next newline) to ``target``."""
    offset, length, records = cut_at_newlines(source, size, limit=1)[0]
    with open(source, "rb") as src, open(target, "wb") as dst:
        src.seek(offset)
        remaining = length
        while remaining:
            block = src.read(min(remaining, 8 * MIB))
            dst.write(block)
            remaining -= len(block)
    return {"path": str(target), "bytes": length, "records": records}


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float:
    """utime + stime of a ``/proc/.../stat`` file, in seconds."""
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class Server:
    """One ``adjobs serve`` subprocess on a free loopback port.

    Its output goes to ``<log_dir>/<name>.log``.
    """

    def __init__(self, name: str, data_dir: Path, log_dir: Path):
        self.name = name
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "adjobs", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(data_dir)]
        command += ["--max-content-length", MAX_CONTENT_LENGTH]
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(
                    f"server {self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/")
                connection.getresponse().read()
                connection.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server {self.name} did not answer within {START_TIMEOUT_S} s")

    def cpu(self) -> dict:
        """CPU seconds so far: of the event-loop (main) thread, of the others, in all."""
        pid = self.process.pid
        total = _stat_cpu(f"/proc/{pid}/stat")
        loop = _stat_cpu(f"/proc/{pid}/task/{pid}/stat")
        return {"loop": loop, "threads": total - loop, "total": total}

    def peak_rss_mb(self) -> float | None:
        """Its peak resident set size so far (``VmHWM``), MB."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) * 1024 / 1e6, 1)
        except OSError:
            pass
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> dict:
        """Lines of its log that report an error or a traceback."""
        text = self.log_path.read_text(errors="replace")
        lines = text.splitlines()
        bad = [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
        # uvicorn re-raises the SIGTERM it caught once shut down: the exit code is -15 even
        # when the shutdown was clean, which its log tells.
        clean = any("Application shutdown complete" in line for line in lines)
        return {"error_lines": len(bad), "first": bad[:3], "clean_shutdown": clean}

    def stop(self) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), then wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# --- HTTP client --------------------------------------------------------------------------------


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data[:500].decode("utf-8", "replace")


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/_ml/anomaly_detectors/{job_id}{suffix}"


class Client:
    """One keep-alive HTTP/1.1 connection: JSON calls, and uploads sent with sendfile."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None
        self.send_buffer: int | None = None
        self.last_used = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        # uvicorn closes a keep-alive connection idle for 5 s: start afresh well before.
        if self.connection is not None and time.monotonic() - self.last_used > IDLE_S:
            self.close()
        self.last_used = time.monotonic()
        if self.connection is None or self.connection.sock is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
            connection.connect()
            sock = connection.sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self.send_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.connection = connection
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = self._connection()
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return response.status, _decode(data)

    def expect(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, data = self.call(method, path, body)
        if got != status:
            raise RuntimeError(f"{method} {path}: expected {status}, got {got}: {data}")
        return data

    def post_file(self, path: str, file: Any, offset: int, count: int) -> dict:
        """POST ``count`` bytes of ``file`` from ``offset`` as the body, with sendfile.

        Returns ``status``, ``body`` (decoded JSON), ``seconds`` (from the first byte of the
        request to the last of the response), ``start`` and ``end`` (``time.monotonic``,
        comparable across threads and processes) and ``client_cpu_seconds`` (this thread's).
        """
        connection = self._connection()
        try:
            connection.putrequest("POST", path, skip_accept_encoding=True)
            connection.putheader("Content-Type", "application/x-ndjson")
            connection.putheader("Content-Length", str(count))
            cpu = time.thread_time()
            start = time.monotonic()
            connection.endheaders()
            connection.sock.sendfile(file, offset, count)
            response = connection.getresponse()
            data = response.read()
            end = time.monotonic()
            cpu = time.thread_time() - cpu
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return {
            "status": response.status,
            "body": _decode(data),
            "seconds": end - start,
            "start": start,
            "end": end,
            "client_cpu_seconds": cpu,
        }


def open_new_job(client: Client, job_id: str) -> None:
    from adjobs.datagen import demo_job_config

    client.expect("PUT", job_path(job_id), demo_job_config())
    client.expect("POST", job_path(job_id, "/_open"))


def drop_job(client: Client, job_id: str) -> None:
    client.expect("POST", job_path(job_id, "/_close"))
    client.expect("DELETE", job_path(job_id))


def post_whole_file(client: Client, path: str, data: dict) -> dict:
    """Post all of ``data["path"]``; check the answer (202, every record counted)."""
    with open(data["path"], "rb") as file:
        result = client.post_file(path, file, 0, data["bytes"])
    body = result["body"]
    good = result["status"] == 202 and isinstance(body, dict)
    good = good and body.get("processed_record_count") == data["records"]
    if not good:
        raise RuntimeError(f"POST {path}: {result['status']} {str(body)[:500]}")
    return result


class _Timed:
    """Server CPU and client figures of one HTTP post (or pair of posts)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.before = server.cpu()

    def finish(self, posts: list[dict]) -> dict:
        after = self.server.cpu()
        start = min(post["start"] for post in posts)
        end = max(post["end"] for post in posts)
        return {
            "seconds": end - start,
            "post_seconds": [post["seconds"] for post in posts],
            "client_cpu_seconds": sum(post["client_cpu_seconds"] for post in posts),
            "server_cpu_seconds": after["total"] - self.before["total"],
            "server_loop_cpu_seconds": after["loop"] - self.before["loop"],
            "server_threads_cpu_seconds": after["threads"] - self.before["threads"],
        }


def _run_threads(functions: list[Callable[[], dict]]) -> list[dict]:
    """Run each function in its own thread, all released at once; their results."""
    barrier = threading.Barrier(len(functions))
    results: list[Any] = [None] * len(functions)

    def body(index: int) -> None:
        barrier.wait()
        try:
            results[index] = functions[index]()
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller
            results[index] = error

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


# --- sections -------------------------------------------------------------------------------------


def _mb_per_s(n_bytes: int, seconds: float) -> float:
    return round(n_bytes / MB / seconds, 1)


def _median(values: list[float], digits: int = 4) -> float:
    return round(statistics.median(values), digits)


def _http_figures(runs: list[dict], n_bytes: int) -> dict:
    seconds = [run["seconds"] for run in runs]
    return {
        "mb_per_s": _mb_per_s(n_bytes, statistics.median(seconds)),
        "mb_per_s_runs": [_mb_per_s(n_bytes, s) for s in seconds],
        "seconds_median": _median(seconds),
        "client_cpu_seconds_median": _median([run["client_cpu_seconds"] for run in runs]),
        "server_cpu_seconds_median": _median([run["server_cpu_seconds"] for run in runs]),
        "server_loop_cpu_seconds_median": _median([run["server_loop_cpu_seconds"] for run in runs]),
        "server_threads_cpu_seconds_median": _median(
            [run["server_threads_cpu_seconds"] for run in runs]
        ),
    }


def _library_figures(runs: list[dict], n_bytes: int) -> dict:
    seconds = [run["seconds"] for run in runs]
    return {
        "mb_per_s": _mb_per_s(n_bytes, statistics.median(seconds)),
        "mb_per_s_runs": [_mb_per_s(n_bytes, s) for s in seconds],
        "seconds_median": _median(seconds),
        "cpu_seconds_median": _median([run["cpu_seconds"] for run in runs]),
    }


def _http_post_job(server: Server, client: Client, data: dict, job_id: str) -> dict:
    open_new_job(client, job_id)
    timed = _Timed(server)
    result = post_whole_file(client, job_path(job_id, "/_data"), data)
    figures = timed.finish([result])
    drop_job(client, job_id)
    return figures


def library_worker(data: dict, data_dir: Path) -> LineWorker:
    """bench.store's ``large-store`` worker: posts ``data`` with ``JobService(data_dir)``
    once per ``run``, each to a fresh job, after one warm-up post."""
    args = ["--worker", "large-store", "--data-dir", str(data_dir)]
    args += ["--file", data["path"], "--records", str(data["records"])]
    return LineWorker("bench.store", args)


def measure_throughput(data: dict, repeats: int, root: Path) -> dict:
    """HTTP vs library on the whole file, posts alternating; see the module docstring."""
    server = Server("throughput", root / "throughput", root)
    try:
        library = library_worker(data, root / "throughput-library")
    except BaseException:
        server.stop()
        raise
    client = Client(server.port)
    runs: dict[str, list[dict]] = {"http": [], "library": []}
    pair_ratios = []
    try:
        _http_post_job(server, client, data, "throughput-warmup")
        for index in range(repeats):
            order = ("http", "library") if index % 2 == 0 else ("library", "http")
            log(f"throughput: repeat {index + 1}/{repeats} ({' then '.join(order)}) ...")
            pair = {}
            for kind in order:
                if kind == "http":
                    pair[kind] = _http_post_job(server, client, data, f"throughput-{index}")
                else:
                    pair[kind] = library.run()
                runs[kind].append(pair[kind])
            pair_ratios.append(pair["library"]["seconds"] / pair["http"]["seconds"])
    finally:
        client.close()
        library_rss = library.close()
        server_rss = server.peak_rss_mb()
        exit_code = server.stop()
    section: dict = {
        "input": data,
        "posts_per_side": repeats,
        "send_buffer_bytes": client.send_buffer,
        "http": {**_http_figures(runs["http"], data["bytes"]), "server_peak_rss_mb": server_rss},
        "library": {**_library_figures(runs["library"], data["bytes"]), "peak_rss_mb": library_rss},
    }
    section["ratio"] = ratio(section["http"]["mb_per_s"], section["library"]["mb_per_s"])
    section["ratio_runs"] = [round(r, 3) for r in pair_ratios]
    section["ratio_pairs_median"] = round(statistics.median(pair_ratios), 3)
    # CPU seconds the library needs for the file over those the server needs: 1.0 means the
    # HTTP path costs no CPU beyond the library's, whatever the machine's load.
    section["cpu_ratio"] = ratio(
        section["library"]["cpu_seconds_median"], section["http"]["server_cpu_seconds_median"]
    )
    section["server_exit_code"] = exit_code
    section["server_log"] = server.log_problems()
    section["target"] = TARGETS["throughput.ratio"]
    section["met"] = section["ratio"] is not None and section["ratio"] >= section["target"]
    return section


def _measure_pairs(
    repeats: int, solo: Callable[[str], dict], pair: Callable[[str], dict], label: str
) -> tuple[list[dict], list[dict], list[float]]:
    """Warm up, then alternate solo and pair runs; the runs and the ratio of each repeat."""
    solo("warmup")
    pair("warmup")
    solos, pairs, speedups = [], [], []
    for index in range(repeats):
        order = ("solo", "pair") if index % 2 == 0 else ("pair", "solo")
        log(f"{label}: repeat {index + 1}/{repeats} ({' then '.join(order)}) ...")
        done = {}
        for kind in order:
            done[kind] = solo(str(index)) if kind == "solo" else pair(str(index))
        solos.append(done["solo"])
        pairs.append(done["pair"])
        # Aggregate MB/s of the pair over MB/s alone = 2 * t_solo / t_pair.
        speedups.append(2 * done["solo"]["seconds"] / done["pair"]["seconds"])
    return solos, pairs, speedups


def measure_parallel(data: dict, repeats: int, root: Path) -> dict:
    """One upload alone vs two at once to two jobs; the same with two library processes."""
    server = Server("parallel", root / "parallel", root)
    clients = [Client(server.port), Client(server.port)]
    n_bytes = data["bytes"]

    def http_solo(tag: str) -> dict:
        return _http_post_job(server, clients[0], data, f"parallel-solo-{tag}")

    def http_pair(tag: str) -> dict:
        jobs = [f"parallel-pair-{tag}-{i}" for i in range(2)]
        for client, job_id in zip(clients, jobs, strict=True):
            open_new_job(client, job_id)
        timed = _Timed(server)
        posts = _run_threads(
            [
                lambda c=client, j=job_id: post_whole_file(c, job_path(j, "/_data"), data)
                for client, job_id in zip(clients, jobs, strict=True)
            ]
        )
        figures = timed.finish(posts)
        for client, job_id in zip(clients, jobs, strict=True):
            drop_job(client, job_id)
        return figures

    try:
        solos, pairs, speedups = _measure_pairs(repeats, http_solo, http_pair, "parallel/http")
    finally:
        for client in clients:
            client.close()
        exit_code = server.stop()

    workers = [library_worker(data, root / f"parallel-library-{i}") for i in range(2)]

    def library_solo(tag: str) -> dict:
        return workers[0].run()

    def library_pair(tag: str) -> dict:
        for worker in workers:
            worker.send("run")
        posts = [worker.reply() for worker in workers]
        start = min(post["start"] for post in posts)
        end = max(post["end"] for post in posts)
        return {"seconds": end - start, "cpu_seconds": sum(p["cpu_seconds"] for p in posts)}

    try:
        lib_solos, lib_pairs, lib_speedups = _measure_pairs(
            repeats, library_solo, library_pair, "parallel/library"
        )
    finally:
        for worker in workers:
            worker.close()

    solo_median = statistics.median(run["seconds"] for run in solos)
    pair_median = statistics.median(run["seconds"] for run in pairs)
    section: dict = {
        "input": data,
        "rounds": repeats,
        "solo": _http_figures(solos, n_bytes),
        "pair": {
            **_http_figures(pairs, 2 * n_bytes),
            "per_upload_mb_per_s_runs": [
                [_mb_per_s(n_bytes, s) for s in run["post_seconds"]] for run in pairs
            ],
        },
        "speedup": round(2 * solo_median / pair_median, 3),
        "speedup_runs": [round(s, 3) for s in speedups],
        "speedup_pairs_median": round(statistics.median(speedups), 3),
        "server_exit_code": exit_code,
        "server_log": server.log_problems(),
    }
    lib_solo = statistics.median(run["seconds"] for run in lib_solos)
    lib_pair = statistics.median(run["seconds"] for run in lib_pairs)
    section["machine_ceiling"] = {
        "what": "the same with two library processes (JobService.post_data) instead of HTTP",
        "solo_mb_per_s": _mb_per_s(n_bytes, lib_solo),
        "pair_mb_per_s": _mb_per_s(2 * n_bytes, lib_pair),
        "speedup": round(2 * lib_solo / lib_pair, 3),
        "speedup_runs": [round(s, 3) for s in lib_speedups],
        "pair_cpu_seconds_median": _median([run["cpu_seconds"] for run in lib_pairs]),
    }
    section["target"] = TARGETS["parallel.speedup"]
    section["met"] = section["speedup"] >= section["target"]
    return section


class _SoakTally:
    """What the soak threads record; one lock for all (a few hundred calls a second)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: Counter = Counter()
        self.error_samples: list[str] = []
        self.upload_ms: list[float] = []
        self.stats_ms: list[float] = []
        self.uploaded_bytes = 0
        self.uploads = 0

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{kind}: {detail[:300]}")


def measure_soak(data: dict, seconds: float, root: Path) -> dict:
    """20 clients x 20 jobs of ~1 MB uploads for ``seconds``, a ``_stats`` poller; checks."""
    slices = cut_at_newlines(Path(data["path"]), SOAK_UPLOAD_BYTES)
    server = Server("soak", root / "soak", root)
    setup = Client(server.port)
    try:
        jobs = [f"soak-{i:02d}" for i in range(SOAK_CLIENTS)]
        for job_id in jobs:
            open_new_job(setup, job_id)
        idle_ms = []
        for index in range(IDLE_STATS_CALLS):
            start = time.perf_counter()
            setup.expect("GET", job_path(jobs[index % len(jobs)], "/_stats"))
            idle_ms.append((time.perf_counter() - start) * 1e3)
        tally = _SoakTally()
        accepted = dict.fromkeys(jobs, 0)  # sum of processed_record_count of 202 answers
        uploads = dict.fromkeys(jobs, 0)
        exhausted = []
        stop = threading.Event()

        def upload_loop(job_id: str) -> None:
            client = Client(server.port)
            path = job_path(job_id, "/_data")
            with open(data["path"], "rb") as file:
                for offset, length, _records in slices:
                    if stop.is_set():
                        break
                    try:
                        result = client.post_file(path, file, offset, length)
                    except (OSError, http.client.HTTPException) as error:
                        tally.error(f"_data:{type(error).__name__}", f"{job_id}: {error}")
                        continue
                    body = result["body"]
                    ms = result["seconds"] * 1e3
                    with tally.lock:
                        tally.upload_ms.append(ms)
                        tally.uploads += 1
                        tally.uploaded_bytes += length
                    uploads[job_id] += 1
                    if result["status"] == 202 and isinstance(body, dict):
                        accepted[job_id] += body.get("processed_record_count", 0)
                    else:
                        tally.error(f"_data:{result['status']}", f"{job_id}: {body}")
                else:
                    exhausted.append(job_id)
            client.close()

        def stats_loop() -> None:
            client = Client(server.port)
            index = 0
            while not stop.is_set():
                job_id = jobs[index % len(jobs)]
                index += 1
                start = time.perf_counter()
                try:
                    status, body = client.call("GET", job_path(job_id, "/_stats"))
                except (OSError, http.client.HTTPException) as error:
                    tally.error(f"_stats:{type(error).__name__}", f"{job_id}: {error}")
                    stop.wait(STATS_PAUSE_S)
                    continue
                ms = (time.perf_counter() - start) * 1e3
                if status == 200:
                    with tally.lock:
                        tally.stats_ms.append(ms)
                else:
                    tally.error(f"_stats:{status}", f"{job_id}: {body}")
                stop.wait(STATS_PAUSE_S)
            client.close()

        log(f"soak: {SOAK_CLIENTS} clients, {seconds:g} s ...")
        threads = [threading.Thread(target=upload_loop, args=(job_id,)) for job_id in jobs]
        threads.append(threading.Thread(target=stats_loop))
        cpu_before = server.cpu()
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_after = server.cpu()

        mismatches = []
        out_of_order = 0
        for job_id in jobs:
            stats = setup.expect("GET", job_path(job_id, "/_stats"))
            counts = stats["jobs"][0]["data_counts"]
            processed = counts["processed_record_count"]
            out_of_order += counts["out_of_order_timestamp_count"]
            if processed != accepted[job_id]:
                mismatches.append(
                    {"job_id": job_id, "processed": processed, "sum_of_202": accepted[job_id]}
                )
        for job_id in jobs:
            setup.expect("POST", job_path(job_id, "/_close"))

    finally:
        setup.close()
        server_rss = server.peak_rss_mb()
        exit_code = server.stop()

    unexpected = sum(tally.errors.values())
    client_cpu = (self_after.ru_utime + self_after.ru_stime) - (
        self_before.ru_utime + self_before.ru_stime
    )
    return {
        "clients": SOAK_CLIENTS,
        "jobs": len(jobs),
        "seconds": round(elapsed, 2),
        "upload_bytes_mean": round(statistics.fmean(length for _, length, _ in slices)),
        "uploads": tally.uploads,
        "uploads_per_s": round(tally.uploads / elapsed, 1),
        "uploads_per_job": {"min": min(uploads.values()), "max": max(uploads.values())},
        "mb": round(tally.uploaded_bytes / MB, 1),
        "mb_per_s": round(tally.uploaded_bytes / MB / elapsed, 1),
        "records_accepted": sum(accepted.values()),
        "errors_by_status": dict(sorted(tally.errors.items())),
        "error_samples": tally.error_samples,
        "upload_latency_ms": _latency_summary(tally.upload_ms) if tally.upload_ms else None,
        "stats_latency_ms": _latency_summary(tally.stats_ms) if tally.stats_ms else None,
        "stats_latency_idle_ms": _latency_summary(idle_ms),
        "clients_out_of_data": len(exhausted),
        "server_cpu_seconds": round(cpu_after["total"] - cpu_before["total"], 2),
        "server_loop_cpu_seconds": round(cpu_after["loop"] - cpu_before["loop"], 2),
        "client_process_cpu_seconds": round(client_cpu, 2),
        "verification": {
            "jobs_checked": len(jobs),
            "mismatches": mismatches,
            "all_match": not mismatches,
            # Every client posts its job consecutive slices of one time-ordered file.
            "out_of_order_timestamp_count": out_of_order,
        },
        "server_peak_rss_mb": server_rss,
        "server_exit_code": exit_code,
        "server_log": server.log_problems(),
        "zero_errors": {
            "target": TARGETS["soak.unexpected_errors"],
            "unexpected_errors": unexpected,
            "met": unexpected == 0 and not mismatches,
        },
    }


# --- environment ------------------------------------------------------------------------------


def _machine_cpu() -> dict:
    """Busy and steal CPU seconds of the whole machine so far, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return {"busy": 0.0, "steal": 0.0}
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / _CLOCK_TICKS,
        "steal": steal / _CLOCK_TICKS,
    }


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def environment(root: Path, load_before: list[float], load_after: list[float], cpu: dict) -> dict:
    import httptools
    import uvicorn

    filesystem = filesystem_of(root)
    info = {
        "cpu_count": os.cpu_count(),
        "load_average": {
            "before": load_before,
            "after": load_after,
            "note": load_note(load_before, load_after),
        },
        "other_processes": cpu,
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "httptools": getattr(httptools, "__version__", None) or package_version("httptools"),
        "h11": package_version("h11"),
        "uvloop": package_version("uvloop"),
        "sqlite_version": sqlite3.sqlite_version,
        "data_root": str(root),
        "filesystem": filesystem,
        "machine": machine_info(),
    }
    if filesystem and filesystem["type"] in ("tmpfs", "ramfs"):
        info["warning"] = f"the data directories are on {filesystem['type']}: fsync is free"
    return info


# --- driver ---------------------------------------------------------------------------------------


def run(options: argparse.Namespace) -> dict:
    """Generate the inputs, measure every section and assemble the report."""
    mode = "quick" if options.quick else "full"
    repeats = options.repeats
    seed = options.seed
    log(f"bench.http seed={seed}")
    load_before = load_average()
    machine_before, own_before, wall_before = _machine_cpu(), _own_cpu(), time.monotonic()

    targets = QUICK_TARGET_BYTES if options.quick else TARGET_BYTES
    # The scale bench.ingest picks, so that every benchmark posts the same cached file.
    scale = _scale_for(targets, ["ndjson", "csv"], seed)
    directory = cache_dir(options.cache_dir)
    data = ensure_input("ndjson", scale=scale, seed=seed, directory=directory)
    if data["bytes"] < targets["ndjson"]:
        raise SystemExit(f"ndjson input is {data['bytes']} bytes, below {targets['ndjson']}")
    # The soak's uploads are ~1 MB whatever the mode: its file has the records of a full run.
    soak_scale = _scale_for(TARGET_BYTES, ["ndjson", "csv"], seed) if options.quick else scale
    soak_data = ensure_soak_input(
        seed=seed, scale=soak_scale, days=SOAK_DAYS[mode], directory=directory
    )

    parent = Path(options.dir).resolve() if options.dir else Path.cwd()
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".bench-http-", dir=parent))
    report: dict = {
        "benchmark": "http",
        "seed": seed,
        "quick": options.quick,
        "repeats": repeats,
        "targets": TARGETS,
    }
    try:
        log(f"data directories and server logs under {root}")
        slice_data = write_slice(Path(data["path"]), root / "slice.ndjson", PARALLEL_BYTES[mode])
        report["inputs"] = {"file": data, "parallel_slice": slice_data, "soak_file": soak_data}
        sections = options.sections
        if "throughput" in sections:
            report["throughput"] = measure_throughput(data, repeats, root)
        if "parallel" in sections:
            report["parallel"] = measure_parallel(slice_data, repeats, root)
        if "soak" in sections:
            report["soak"] = measure_soak(soak_data, SOAK_SECONDS[mode], root)
        load_after = load_average()
        machine_after, own_after = _machine_cpu(), _own_cpu()
        elapsed = time.monotonic() - wall_before
        others = (machine_after["busy"] - machine_before["busy"]) - (own_after - own_before)
        cpu = {
            "seconds": round(elapsed, 1),
            "cpu_seconds": round(max(others, 0.0), 1),
            "share_of_machine": round(max(others, 0.0) / (elapsed * (os.cpu_count() or 1)), 3),
            "steal_seconds": round(machine_after["steal"] - machine_before["steal"], 1),
        }
        report["environment"] = environment(root, load_before, load_after, cpu)
    finally:
        if options.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = report["summary"] = {}
    if "throughput" in report:
        summary["throughput_ratio"] = report["throughput"]["ratio"]
        summary["throughput_met"] = report["throughput"]["met"]
    if "parallel" in report:
        summary["parallel_speedup"] = report["parallel"]["speedup"]
        summary["parallel_met"] = report["parallel"]["met"]
    if "soak" in report:
        summary["soak_zero_errors_met"] = report["soak"]["zero_errors"]["met"]
    return report


def _print_table(report: dict) -> None:
    env = report["environment"]
    print(f"http benchmark, seed {report['seed']}, {env['machine']['cpu']}")
    print(f"{env['load_average']['note']}; other processes: {env['other_processes']}")
    if "throughput" in report:
        t = report["throughput"]
        print(
            f"\nthroughput: http {t['http']['mb_per_s']} MB/s, library "
            f"{t['library']['mb_per_s']} MB/s, ratio {t['ratio']} "
            f"(target >= {t['target']}: {'met' if t['met'] else 'MISSED'})"
        )
    if "parallel" in report:
        p = report["parallel"]
        print(
            f"parallel: solo {p['solo']['mb_per_s']} MB/s, pair {p['pair']['mb_per_s']} MB/s, "
            f"speedup {p['speedup']} (target >= {p['target']}: "
            f"{'met' if p['met'] else 'MISSED'}; machine ceiling "
            f"{p['machine_ceiling']['speedup']})"
        )
    if "soak" in report:
        s = report["soak"]
        stats = s["stats_latency_ms"] or {}
        print(
            f"soak: {s['uploads']} uploads, {s['mb_per_s']} MB/s, errors "
            f"{s['errors_by_status']}, _stats p50/p99 {stats.get('p50')}/{stats.get('p99')} ms, "
            f"counts verified: {s['verification']['all_match']}"
        )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m bench.http --help``)."""
    parser = bench_parser("bench.http", __doc__.split("\n")[0], "small inputs, 5 s soak")
    parser.add_argument(
        "--dir", default=None, help="where the temporary data directories go (default: .)"
    )
    parser.add_argument(
        "--sections",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data directories and server logs"
    )
    options = parser.parse_args(argv)
    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    run_and_print(parser, options, run, _print_table)


if __name__ == "__main__":
    main()
