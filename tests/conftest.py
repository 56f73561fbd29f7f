"""Shared test helpers: jobs from spec-shaped configs, and paths to the real data."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

import adjobs

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The shared data beside the repository, or where ``$ADJOBS_SHARED_DIR`` says (.ci/run sets
#: it for a clone made elsewhere).
SHARED = pathlib.Path(os.environ.get("ADJOBS_SHARED_DIR") or ROOT.parent / "shared")
SPEC_EXAMPLES = SHARED / "spec" / "examples.json"
FAREQUOTE = SHARED / "data" / "farequote-2021.csv"


def pytest_configure(config):
    # Say where the shared data was looked for, rather than fail at collection on a path.
    if not SPEC_EXAMPLES.is_file():
        raise pytest.UsageError(
            f"the tests read the shared data in place and found none at {SHARED}: put this "
            "checkout beside the shared directory, or set ADJOBS_SHARED_DIR to it")


def strip_clock(counts: dict) -> dict:
    """Data counts without the wall-clock fields."""
    return {k: v for k, v in counts.items() if k not in ("last_data_time", "log_time")}


@pytest.fixture
def service():
    return adjobs.JobService()


def open_job(service, body: dict, job_id: str = "job") -> str:
    service.put_job(job_id, body)
    service.open_job(job_id)
    return job_id


def metric_job(span: str = "1h", time_format: str = "epoch", **extra) -> dict:
    """`metric(responsetime) by airline` as in the post_data YAML tests (spec §7.1)."""
    return {
        "analysis_config": {
            "bucket_span": span,
            "detectors": [
                {"function": "metric", "field_name": "responsetime", "by_field_name": "airline"}
            ],
            **extra,
        },
        "data_description": {"time_field": "time", "time_format": time_format},
    }


def spec_cases() -> list[dict]:
    return json.loads(SPEC_EXAMPLES.read_text())["cases"]
