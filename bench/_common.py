"""Shared helpers of the benchmark scripts: timing, peak memory, subprocesses, machine facts.

Every measured configuration runs in a fresh Python subprocess (:func:`run_worker`), so its
peak resident set size belongs to it alone and not to whatever the parent or an earlier
configuration allocated. Figures are medians of several runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Root of the repository: ``bench`` is imported from here by the worker subprocesses.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Default seed of every benchmark input; printed in every report.
DEFAULT_SEED = 20210206

MIN_REPEATS = 5


def median_seconds(
    fn: Callable[..., Any],
    *,
    repeats: int = MIN_REPEATS,
    warmup: int = 1,
    setup: Callable[[], tuple] | None = None,
    teardown: Callable[[tuple, Any], None] | None = None,
) -> tuple[float, list[float]]:
    """Time ``fn`` several times and return the median wall-clock duration.

    Parameters
    ----------
    fn : callable
        The measured work. Called as ``fn(*setup())`` (or ``fn()`` without ``setup``).
    repeats : int
        Number of measured runs.
    warmup : int
        Unmeasured runs first: they fill the page cache and let lazy imports and
        allocator pools settle, which are not what we want to measure.
    setup : callable, optional
        Called before each run, outside the timing; returns the arguments of ``fn``.
    teardown : callable, optional
        Called after each run, outside the timing, with the arguments and ``fn``'s result.
        It is the place to check the result and fail loudly.

    Returns
    -------
    median : float
        Median of the measured runs, seconds.
    runs : list of float
        Every measured run, seconds, in order.
    """
    runs = []
    for index in range(warmup + repeats):
        args = setup() if setup is not None else ()
        start = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - start
        if teardown is not None:
            teardown(args, result)
        if index >= warmup:
            runs.append(elapsed)
    return statistics.median(runs), runs


def peak_rss_mb() -> float:
    """Return this process's peak resident set size so far, in MB (10**6 bytes).

    Reads ``VmHWM`` from ``/proc/self/status`` (Linux); falls back to ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource

    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def worker_env() -> dict:
    """The environment of a worker subprocess: ours, with the repository on ``PYTHONPATH``.

    The worker imports ``bench`` from the repository; ``adjobs`` comes from the same
    environment as ours (installed, or ``PYTHONPATH=src``).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_worker(module: str, args: Sequence[str]) -> dict:
    """Run ``python -m module *args`` in a fresh process and return its JSON result.

    The worker prints one JSON object on stdout; its stderr passes through. The child is
    reaped with ``os.wait4`` so that the kernel's peak RSS of *that* process is known
    (``RUSAGE_CHILDREN`` would mix all children); it is added as ``peak_rss_mb``.

    Parameters
    ----------
    module : str
        Module to run with ``-m``, e.g. ``"bench.ingest"``.
    args : sequence of str
        Its command-line arguments.

    Returns
    -------
    dict
        The worker's JSON object plus ``peak_rss_mb``.

    Raises
    ------
    RuntimeError
        If the worker fails or prints no JSON.
    """
    command = [sys.executable, "-m", module, *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.PIPE)
    with process.stdout:
        output = process.stdout.read()
    # wait4 rather than Popen.wait: it also returns the resource usage of this one child.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(
            f"worker failed with exit code {process.returncode} (its stderr is above): "
            + " ".join(command)
        )
    try:
        result = json.loads(output)
    except ValueError:
        raise RuntimeError(f"worker printed no JSON: {command}\n{output[:2000]!r}") from None
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    result["peak_rss_mb"] = round(usage.ru_maxrss * scale / 1e6, 1)
    return result


class LineWorker:
    """A worker subprocess that stays alive across measurements, driven one line at a time.

    Like :func:`run_worker`, but the posts of two configurations can alternate one by one
    while each keeps its own warm process. The worker prints one JSON line when ready
    (kept as ``ready``) and one per ``run`` line it reads; ``quit`` (or the end of its
    stdin) makes it print a last line and exit.
    """

    def __init__(self, module: str, args: Sequence[str]) -> None:
        self.command = [sys.executable, "-m", module, *args]
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=worker_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self.reply()

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("worker died (its stderr is above): " + " ".join(self.command))
        return json.loads(line)

    def run(self) -> dict:
        """One measurement: send ``run``, return the worker's line."""
        self.send("run")
        return self.reply()

    def close(self) -> float:
        """Stop the worker; return its peak RSS in MB, as the kernel measured it."""
        self.send("quit")
        self.process.stdin.close()
        self.reply()  # its own last line; the kernel's figure below is the one reported
        self.process.stdout.close()
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        if self.process.returncode != 0:
            raise RuntimeError(f"worker exited with {self.process.returncode}")
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        return round(usage.ru_maxrss * scale / 1e6, 1)


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simdjson_kernel() -> str | None:
    """Return the simdjson kernel chosen at run time (e.g. ``"haswell"``), if ``_core`` loads."""
    try:
        from adjobs import _core
    except ImportError:
        return None
    return _core.simdjson_kernel()


def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Describe the machine and the software versions a figure depends on."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "numpy": package_version("numpy"),
        "adjobs": package_version("adjobs"),
        "simdjson_kernel": simdjson_kernel(),
        "orjson": package_version("orjson"),
        "ciso8601": package_version("ciso8601"),
        "pandas": package_version("pandas"),
    }


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages (zeros where unsupported)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


def load_note(before: Sequence[float], after: Sequence[float]) -> str:
    """Say whether other work on the machine may have disturbed the figures.

    The benchmarks themselves keep one core busy, so a 1-minute load of about 1 during the
    run is expected (and lingers for a minute after a previous run); more than that means
    other processes competed for the CPUs.
    """
    cpus = os.cpu_count() or 1
    # Busy means that, before we started, other work already left no CPU idle for us.
    if before[0] > max(0.5, cpus - 1):
        return (
            f"machine was busy before the run (load {before[0]} on {cpus} CPUs): "
            "figures may be noisy; ratios are less affected than absolute speeds"
        )
    if after[0] > cpus:
        return (
            f"load rose to {after[0]} on {cpus} CPUs during the run: something else was "
            "running; figures may be noisy"
        )
    return f"machine quiet (load {before[0]} before, {after[0]} after, {cpus} CPUs)"


def cache_dir(root: Path | None = None) -> Path:
    """Return the directory for generated inputs, ``bench/.cache`` by default.

    Generated files are big; a ``.gitignore`` holding ``*`` is written inside the
    directory so that git never picks them up, whatever the repository's own rules.
    """
    directory = Path(root) if root is not None else REPO_ROOT / "bench" / ".cache"
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated benchmark inputs\n*\n")
    return directory


def fingerprint(*parts: object) -> str:
    """Return a short stable hash of ``parts``, to name cached files after what made them."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()
    return digest[:12]


def throughput(seconds: float, n_bytes: int, n_records: int) -> dict:
    """Return MB/s (10**6 bytes) and records/s for one median duration."""
    return {
        "mb_per_s": round(n_bytes / 1e6 / seconds, 1),
        "records_per_s": round(n_records / seconds),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded, or ``None`` when either side was not measured."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the JSON document."""
    print(message, file=sys.stderr, flush=True)


def bench_parser(module: str, description: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--json``, ``--quick``, ``--seed``, ``--repeats``,
    ``--cache-dir``; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"measured runs (>= {MIN_REPEATS})"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: bench/.cache")
    return parser


def run_and_print(
    parser: argparse.ArgumentParser,
    options: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict],
    print_table: Callable[[dict], None],
) -> None:
    """Check ``--repeats`` (3 for ``--quick``, else at least MIN_REPEATS), run the benchmark
    and print its report: JSON with ``--json``, else a table."""
    if options.repeats is None:
        options.repeats = 3 if options.quick else MIN_REPEATS
    elif options.repeats < MIN_REPEATS and not options.quick:
        parser.error(f"--repeats must be at least {MIN_REPEATS} (medians of fewer runs are noise)")
    report = run(options)
    if options.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_table(report)
