"""The command line over the store: where jobs go, continuing a job, replacing it."""

from __future__ import annotations

import json
import sqlite3

import pytest

from adjobs import cli

CONFIG = {
    "analysis_config": {
        "bucket_span": "1h",
        "detectors": [{"function": "mean", "field_name": "rt", "by_field_name": "airline"}],
    },
    "data_description": {"time_field": "time", "time_format": "epoch"},
}


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "daily.json"
    path.write_text(json.dumps(CONFIG))
    return path


def _run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    return code, json.loads(capsys.readouterr().out)


def test_run_creates_then_continues_the_stored_job(tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    day1 = _write(tmp_path, "day1.ndjson",
                  [{"time": 3600 * h, "rt": 1.0, "airline": "AAL"} for h in range(3)])
    day2 = _write(tmp_path, "day2.ndjson",
                  [{"time": 3600 * h, "rt": 2.0, "airline": "JZA"} for h in (1, 3, 4)])
    code, first = _run(capsys, "run", "--data-dir", data_dir, job_file, day1)
    assert code == 0
    assert first["job"] == "created" and first["job_id"] == "daily"
    assert first["data_dir"] == str(data_dir)
    assert first["totals"]["processed_record_count"] == 3
    # The second day continues: its first record (1h) is before the stored latest (2h).
    code, second = _run(capsys, "run", "--data-dir", data_dir, job_file, day2)
    assert code == 0 and second["job"] == "continued"
    upload = second["uploads"][0]["data_counts"]
    assert upload["processed_record_count"] == 2
    assert upload["out_of_order_timestamp_count"] == 1
    assert second["totals"]["processed_record_count"] == 5
    assert second["totals"]["latest_record_timestamp"] == 4 * 3600 * 1000
    code, stats = _run(capsys, "stats", "--data-dir", data_dir)
    assert code == 0 and stats["count"] == 1
    assert stats["jobs"][0]["state"] == "closed"
    assert stats["jobs"][0]["data_counts"]["input_record_count"] == 6


def test_run_refuses_a_stored_job_with_other_settings_unless_replaced(
        tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    day1 = _write(tmp_path, "d.ndjson", [{"time": 0, "rt": 1.0, "airline": "AAL"}])
    assert _run(capsys, "run", "--data-dir", data_dir, job_file, day1)[0] == 0
    changed = dict(CONFIG, analysis_config=dict(CONFIG["analysis_config"], bucket_span="2h"))
    job_file.write_text(json.dumps(changed))
    code, error = _run(capsys, "run", "--data-dir", data_dir, job_file, day1)
    assert code == 1
    assert error["status"] == 400
    assert "analysis_config" in error["error"]["reason"]
    assert "--replace" in error["error"]["reason"]
    code, replaced = _run(capsys, "run", "--replace", "--data-dir", data_dir, job_file, day1)
    assert code == 0 and replaced["job"] == "replaced"
    assert replaced["totals"]["processed_record_count"] == 1
    assert replaced["totals"]["bucket_count"] == 0


def test_data_dir_comes_from_the_environment_then_the_default(
        tmp_path, job_file, capsys, monkeypatch):
    data = _write(tmp_path, "d.ndjson", [{"time": 0, "rt": 1.0, "airline": "AAL"}])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADJOBS_DATA_DIR", str(tmp_path / "from-env"))
    assert _run(capsys, "run", job_file, data)[1]["data_dir"] == str(tmp_path / "from-env")
    assert (tmp_path / "from-env" / "adjobs.db").is_file()
    monkeypatch.delenv("ADJOBS_DATA_DIR")
    assert _run(capsys, "run", job_file, data)[1]["data_dir"] == "adjobs-data"
    assert (tmp_path / "adjobs-data" / "adjobs.db").is_file()
    code, report = _run(capsys, "run", "--in-memory", job_file, data)
    assert code == 0 and report["data_dir"] is None and report["job"] == "created"


def test_reset_delete_and_backup_commands(tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    data = _write(tmp_path, "d.ndjson",
                  [{"time": 3600 * h, "rt": 1.0, "airline": "AAL"} for h in range(4)])
    _run(capsys, "run", "--data-dir", data_dir, job_file, data)
    backup = tmp_path / "copy.db"
    assert _run(capsys, "backup", "--data-dir", data_dir, backup) == (0, {"backup": str(backup)})
    with sqlite3.connect(backup) as copy:
        (counts,) = copy.execute("SELECT counts FROM jobs WHERE job_id = 'daily'").fetchone()
    assert json.loads(counts)["processed_record_count"] == 4
    assert _run(capsys, "reset", "--data-dir", data_dir, "daily") == (0, {"acknowledged": True})
    stats = _run(capsys, "stats", "--data-dir", data_dir, "daily")[1]
    assert stats["jobs"][0]["data_counts"]["processed_record_count"] == 0
    assert _run(capsys, "delete", "--data-dir", data_dir, "daily") == (0, {"acknowledged": True})
    code, error = _run(capsys, "stats", "--data-dir", data_dir, "daily")
    assert code == 1 and error["status"] == 404


def test_an_unusable_data_dir_is_a_clear_error(tmp_path, job_file, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    data = _write(tmp_path, "d.ndjson", [{"time": 0, "rt": 1.0, "airline": "AAL"}])
    code, error = _run(capsys, "run", "--data-dir", not_a_dir, job_file, data)
    assert code == 1
    assert error["error"]["type"] == "store_exception"
    assert str(not_a_dir) in error["error"]["reason"]


def test_store_commands_never_create_a_store(tmp_path, capsys):
    missing = tmp_path / "typo"
    for argv in (["stats"], ["reset", "x"], ["delete", "x"], ["backup", tmp_path / "b.db"]):
        code, error = _run(capsys, *argv, "--data-dir", missing)
        assert code == 1
        assert error["status"] == 404
        assert str(missing / "adjobs.db") in error["error"]["reason"]
    assert not missing.exists()


def test_backup_to_an_unwritable_place_is_a_store_error(tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    data = _write(tmp_path, "d.ndjson", [{"time": 0, "rt": 1.0, "airline": "AAL"}])
    _run(capsys, "run", "--data-dir", data_dir, job_file, data)
    code, error = _run(capsys, "backup", "--data-dir", data_dir, tmp_path / "no" / "x.db")
    assert code == 1
    assert error["error"]["type"] == "store_exception"
    assert "backup" in error["error"]["reason"]


def test_a_missing_file_posts_nothing_and_creates_no_job(tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    day1 = _write(tmp_path, "day1.ndjson", [{"time": 0, "rt": 1.0, "airline": "AAL"}])
    code, error = _run(capsys, "run", "--data-dir", data_dir, job_file, day1,
                       tmp_path / "typo.ndjson")
    assert code == 1
    assert error["status"] == 400
    assert "typo.ndjson" in error["error"]["reason"]
    assert "nothing was posted" in error["error"]["reason"]
    code, stats = _run(capsys, "stats", "--data-dir", data_dir)
    assert (code, stats) == (0, {"count": 0, "jobs": []})


def test_the_first_failed_upload_stops_the_run(tmp_path, job_file, capsys):
    data_dir = tmp_path / "store"
    day1 = _write(tmp_path, "day1.ndjson",
                  [{"time": 3600 * h, "rt": 1.0, "airline": "AAL"} for h in range(2)])
    broken = tmp_path / "day2.ndjson"
    broken.write_text('{"time": 7200, "rt": 2.0, "airline": "AAL"}\n{"time": 10800, "rt')
    day3 = _write(tmp_path, "day3.ndjson", [{"time": 3600 * 5, "rt": 1.0, "airline": "AAL"}])
    code, report = _run(capsys, "run", "--data-dir", data_dir, job_file, day1, broken, day3)
    assert code == 1
    assert [upload["file"] for upload in report["uploads"]] == [str(day1), str(broken)]
    assert report["uploads"][1]["error"]["reason"] == "The input JSON data is malformed."
    assert report["not_posted"] == [str(day3)]
    # Day 2's whole record before the truncated one stays counted (D2, D6); the truncated
    # one is not a record, and day 3 was never sent.
    assert report["totals"]["processed_record_count"] == 3
    assert report["totals"]["latest_record_timestamp"] == 7200 * 1000
