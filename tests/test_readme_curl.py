"""The README's "As an Elasticsearch server" examples, run as written against a live server.

The ``sh`` block after the ``<!-- curl-examples: ... -->`` marker runs in bash with only its
``ES=`` line pointed at the test server; the ``python`` block right after it runs with the
official client, its URL pointed the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from server_harness import HANG_GUARD, Server

README = ROOT / "README.md"
MARKER = "<!-- curl-examples:"


def readme_blocks() -> tuple[str, str]:
    """The sh block that follows the marker, and the python block after it."""
    text = README.read_text()
    start = text.index(MARKER)
    sh = re.compile(r"```sh\n(.*?)```", re.DOTALL).search(text, start)
    assert sh is not None, "no ```sh block after the curl-examples marker"
    assert text[start:sh.start()].count("\n") == 1, "the sh block must follow the marker"
    python = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, sh.end())
    assert python is not None, "no ```python block after the curl examples"
    return sh.group(1), python.group(1)


def json_documents(output: str) -> list:
    """Every JSON document in ``output``: curl -s prints them back to back."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while True:
        while position < len(output) and output[position].isspace():
            position += 1
        if position == len(output):
            return documents
        document, position = decoder.raw_decode(output, position)
        documents.append(document)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("readme") / "data") as running:
        yield running


def test_readme_curl_block_then_python_snippet(server):
    sh, python = readme_blocks()
    lines = sh.splitlines()
    es_lines = [i for i, line in enumerate(lines) if line.startswith("ES=")]
    assert len(es_lines) == 1
    assert "curl" in sh and "$ES" in sh
    lines[es_lines[0]] = f"ES={server.url}"
    script = "\n".join(lines) + "\n"

    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=HANG_GUARD, check=False)
    assert done.returncode == 0, done.stderr
    created, opened, posted, flushed, stats, closed = json_documents(done.stdout)

    assert created["job_id"] == "it-ops"
    assert created["analysis_config"]["bucket_span"] == "1h"
    assert created["analysis_config"]["detectors"][0]["detector_description"] == (
        "mean(rt) by host")
    assert created["data_description"] == {"time_field": "time", "time_format": "epoch"}
    assert opened == {"opened": True, "node": "adjobs"}
    assert posted["job_id"] == "it-ops"
    assert posted["processed_record_count"] == 2
    assert posted["input_record_count"] == 2
    assert posted["processed_field_count"] == 4
    assert posted["input_bytes"] == 82
    assert posted["invalid_date_count"] == posted["out_of_order_timestamp_count"] == 0
    assert posted["earliest_record_timestamp"] == 1700000000000
    assert posted["latest_record_timestamp"] == 1700003600000
    assert flushed == {"flushed": True, "last_finalized_bucket_end": 1700002800000}
    assert stats == {"jobs": [{"data_counts": {"processed_record_count": 2},
                               "state": "opened"}]}
    assert closed == {"closed": True}
    # The server logged the upload with its 202.
    assert "POST /_ml/anomaly_detectors/it-ops/_data 202" in server.log

    # The Python snippet continues the same job: it reopens it, posts one record and
    # prints the total processed count.
    default_url = "http://127.0.0.1:9200"
    assert default_url in python
    snippet = python.replace(default_url, server.url)
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          timeout=HANG_GUARD * 2, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n"

    # The snippet closed the job again, with its totals stored.
    check = subprocess.run(["curl", "-s", f"{server.url}/_ml/anomaly_detectors/it-ops/_stats"],
                           capture_output=True, text=True, timeout=HANG_GUARD, check=True)
    job = json.loads(check.stdout)["jobs"][0]
    assert job["state"] == "closed"
    assert job["data_counts"]["processed_record_count"] == 3
    assert job["data_counts"]["latest_record_timestamp"] == 1700007200000
