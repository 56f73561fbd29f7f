"""pytest-benchmark suite over the ingest hot paths, on ~5 MB inputs from adjobs.datagen.

Not part of the default test run: the module is marked ``perf`` and skips itself unless the
marker expression asks for it, so run it with::

    pytest tests/perf -m perf

These tests assert correctness (record counts) only, never timings: speed claims come from
``python -m bench.ingest``, which reports ratios against baselines measured in the same run.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from adjobs import datagen

pytestmark = pytest.mark.perf

_REPO_ROOT = Path(__file__).resolve().parents[2]

SEED = 20210206
ROUNDS = 5


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    # Guard in depth: even without a project-wide `-m "not perf"`, a plain `pytest` run must
    # not spend time here.
    expression = request.config.getoption("markexpr") or ""
    if not re.search(r"(?<!not )\bperf\b", expression):
        pytest.skip("performance suite: run with `pytest tests/perf -m perf`")


@pytest.fixture(scope="module")
def baselines():
    """The baseline implementations of ``bench.ingest``, shared with the benchmark script."""
    # bench/ sits at the repository root and is not an installed package.
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))
    return importlib.import_module("bench.ingest")


@pytest.fixture(scope="module")
def ndjson_input(tmp_path_factory) -> tuple[Path, int]:
    print(f"datagen seed={SEED}")
    path = tmp_path_factory.mktemp("perf") / "farequote.ndjson"
    # scale 0.7 over the default 5 days is about 5 MB.
    records = datagen.write_ndjson(path, datagen.generate_batches(seed=SEED, scale=0.7))
    return path, records


@pytest.fixture(scope="module")
def csv_input(tmp_path_factory) -> tuple[Path, int]:
    print(f"datagen seed={SEED}")
    path = tmp_path_factory.mktemp("perf") / "farequote.csv"
    # CSV lines are about half as long: scale 1.5 is about 5 MB.
    records = datagen.write_csv(path, datagen.generate_batches(seed=SEED, scale=1.5))
    return path, records


def _post_file(benchmark, path: Path, body: dict) -> list[dict]:
    """Benchmark post_data on a fresh open job per round; return every round's counts."""
    import adjobs

    service = adjobs.JobService()
    job_ids = iter(f"perf-{i}" for i in range(1_000_000))
    results: list[dict] = []

    def setup():
        job_id = next(job_ids)
        service.put_job(job_id, body)
        service.open_job(job_id)
        return (job_id,), {}

    def post(job_id):
        counts = service.post_data(job_id, path)
        results.append(counts)
        return counts

    def teardown(job_id):
        # Closing and deleting are not what we measure: teardown runs outside the timing.
        service.close_job(job_id)
        service.delete_job(job_id)

    benchmark.pedantic(
        post, setup=setup, teardown=teardown, rounds=ROUNDS, warmup_rounds=1, iterations=1
    )
    return results


def test_adjobs_post_ndjson(benchmark, ndjson_input):
    path, records = ndjson_input
    benchmark.extra_info["mb"] = path.stat().st_size / 1e6
    counts = _post_file(benchmark, path, datagen.demo_job_config())
    assert all(c["processed_record_count"] == records for c in counts)


def test_adjobs_post_csv(benchmark, csv_input):
    path, records = csv_input
    benchmark.extra_info["mb"] = path.stat().st_size / 1e6
    counts = _post_file(benchmark, path, datagen.demo_job_config(delimited=True))
    assert all(c["processed_record_count"] == records for c in counts)


def test_bare_simdjson_scan(benchmark, ndjson_input):
    from adjobs import _core

    path, records = ndjson_input
    data = path.read_bytes()
    benchmark.extra_info["mb"] = len(data) / 1e6
    benchmark.extra_info["simdjson_kernel"] = _core.simdjson_kernel()
    fields = benchmark(_core.bare_simdjson_scan, data)
    assert fields == 3 * records


def test_orjson_loop_baseline(benchmark, ndjson_input, baselines):
    pytest.importorskip("orjson")
    pytest.importorskip("ciso8601")
    path, records = ndjson_input
    data = path.read_bytes()
    benchmark.extra_info["mb"] = len(data) / 1e6
    counts = benchmark.pedantic(baselines.orjson_loop, args=(data,), rounds=ROUNDS, warmup_rounds=1)
    assert counts["processed_record_count"] == records


def test_pandas_csv_baseline(benchmark, csv_input, baselines):
    pytest.importorskip("pandas")
    path, records = csv_input
    benchmark.extra_info["mb"] = path.stat().st_size / 1e6
    rows = benchmark.pedantic(baselines.pandas_csv, args=(path,), rounds=ROUNDS, warmup_rounds=1)
    assert rows == records


def test_datagen_write_ndjson(benchmark, tmp_path):
    # The generator feeds every benchmark; keep an eye on it too.
    path = tmp_path / "out.ndjson"

    def write():
        return datagen.write_ndjson(path, datagen.generate_batches(seed=SEED, scale=0.7))

    records = benchmark.pedantic(write, rounds=ROUNDS, warmup_rounds=1)
    assert records > 50_000
