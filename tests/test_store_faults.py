"""Faults of the durable job store: files it must refuse (a newer schema, another program's
SQLite database, corrupted or non-SQLite files) and leave byte-for-byte intact, data
directories it cannot use, a full disk during an upload, and job ids that try to leave the
data directory.

Root ignores permission bits, so the permission checks run in a child process that drops to
uid 65534 (nobody) after importing the package. The full disk is an ``RLIMIT_FSIZE`` in a child
process that ignores ``SIGXFSZ``, so SQLite's write fails with an error instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import sqlite3
import subprocess
import sys

import pytest
from conftest import metric_job, strip_clock

import adjobs
from adjobs import store as store_module
from adjobs.errors import ApiError
from adjobs.store import StoreError

COUNT_JOB = {
    "analysis_config": {"bucket_span": "1h", "detectors": [{"function": "count"}]},
    "data_description": {"time_format": "epoch"},
}
T0 = 1699999200
HOUR = 3600
DB = store_module.DATABASE_NAME


def make_store(directory) -> None:
    """A real store with two jobs, some counts and categorical values, cleanly closed."""
    with adjobs.JobService(directory) as service:
        service.put_job("counting", COUNT_JOB)
        service.put_job("metric", metric_job())
        service.open_job("metric")
        service.post_data(
            "metric",
            '{"time":1403481600,"airline":"AAL","responsetime":1}\n'
            '{"time":1403485200,"airline":"JZA","responsetime":2}\n',
        )


def refused(directory, *, then_read: bool = False) -> StoreError:
    """The StoreError of opening ``directory`` (and, with ``then_read``, reading its jobs)."""
    with pytest.raises(StoreError) as raised:
        service = adjobs.JobService(directory)
        try:
            if then_read:
                service.get_job_stats()
                service.string_values("metric")
        finally:
            service.close()
    return raised.value


def check_error(error: StoreError, *names: str) -> None:
    assert isinstance(error, ApiError)
    assert (error.status, error.type) == (500, "store_exception")
    body = error.to_body()
    assert body["status"] == 500
    assert body["error"]["type"] == "store_exception"
    assert body["error"]["root_cause"][0]["reason"] == error.reason
    for name in names:
        assert name in error.reason, error.reason


def test_store_error_is_an_api_error():
    error = StoreError("the store is gone")
    assert isinstance(error, ApiError)
    assert (error.status, error.type, error.reason) == (500, "store_exception", "the store is gone")
    assert error.to_body() == {
        "error": {
            "root_cause": [{"type": "store_exception", "reason": "the store is gone"}],
            "type": "store_exception",
            "reason": "the store is gone",
        },
        "status": 500,
    }


# --------------------------------------------------------------------------------------------
# Files the store refuses and leaves intact


def test_newer_schema_version_is_refused_and_left_intact(tmp_path):
    make_store(tmp_path)
    database = tmp_path / DB
    db = sqlite3.connect(database)
    db.execute(f"PRAGMA user_version={store_module.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = database.read_bytes()
    for _ in range(2):  # refusing does not "fix" anything: a second attempt is refused too
        error = refused(tmp_path)
        check_error(error, str(database), "newer")
        assert f"schema version {store_module.SCHEMA_VERSION + 1}" in error.reason
        assert database.read_bytes() == before


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE notes (text TEXT)", "INSERT INTO notes VALUES ('mine')"],
        ["PRAGMA application_id=1234"],
        ["PRAGMA application_id=1234", "CREATE TABLE jobs (job_id TEXT)"],
        ["CREATE TABLE jobs (job_id TEXT)", f"PRAGMA user_version={store_module.SCHEMA_VERSION}"],
    ],
    ids=["tables", "other-application-id", "both", "look-alike-tables"],
)
def test_another_programs_database_is_refused_and_left_intact(tmp_path, statements):
    database = tmp_path / DB
    db = sqlite3.connect(database)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    before = database.read_bytes()
    error = refused(tmp_path)
    check_error(error, str(database), "not an adjobs job store")
    assert database.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database\n" * 300,
        random.Random(7).randbytes(12288),
        json.dumps({"jobs": ["a", "b"]}).encode() * 50,
        b"SQLite format 3\x00" + b"\xee" * 4080,
    ],
    ids=["text", "random", "json", "fake-header"],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_intact(tmp_path, content):
    database = tmp_path / DB
    database.write_bytes(content)
    error = refused(tmp_path)
    check_error(error, str(database))
    assert database.read_bytes() == content


def _corrupt_magic(data: bytearray, _root: int, _page: int) -> bytearray:
    data[0:16] = b"not SQLite at all"[:16]
    return data


def _corrupt_schema_page(data: bytearray, _root: int, page: int) -> bytearray:
    data[100:page] = random.Random(3).randbytes(page - 100)
    return data


def _truncate(data: bytearray, _root: int, page: int) -> bytearray:
    return data[: page + page // 4]


def _corrupt_jobs_table(data: bytearray, root: int, page: int) -> bytearray:
    start = (root - 1) * page
    data[start : start + page] = b"\xff" * page
    return data


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_magic, _corrupt_schema_page, _truncate, _corrupt_jobs_table],
    ids=["magic", "schema-page", "truncated", "jobs-table-page"],
)
def test_a_corrupted_store_is_refused_and_left_intact(tmp_path, corrupt):
    make_store(tmp_path)
    database = tmp_path / DB
    db = sqlite3.connect(database)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    db.close()
    assert root > 1
    damaged = bytes(corrupt(bytearray(database.read_bytes()), root, page))
    database.write_bytes(damaged)
    error = refused(tmp_path, then_read=True)
    check_error(error, str(database))
    assert "restore it from a backup" in error.reason
    assert database.read_bytes() == damaged


def test_missing_categorical_values_are_a_store_error(tmp_path):
    """A store whose string table lost rows cannot open that job; other jobs still work, and
    the failed open leaves the job free to try again."""
    make_store(tmp_path)
    db = sqlite3.connect(tmp_path / DB)
    db.execute("DELETE FROM job_strings WHERE job_id = 'metric' AND code = 1")
    db.commit()
    db.close()
    with adjobs.JobService(tmp_path) as service:
        for _ in range(2):
            with pytest.raises(StoreError) as raised:
                service.open_job("metric")
            check_error(
                raised.value,
                str(tmp_path / DB),
                "job [metric] should have 2 categorical values but 1 are stored",
            )
        assert service.get_job_stats("metric")["jobs"][0]["state"] == "closed"
        assert service.open_job("counting") == {"opened": True, "node": "adjobs"}
        assert service.post_data("counting", '{"time": 1699999200}')["processed_record_count"] == 1


# --------------------------------------------------------------------------------------------
# Data directories the store cannot use


def test_a_data_directory_that_is_a_regular_file(tmp_path):
    path = tmp_path / "data"
    path.write_text("my notes\n")
    check_error(refused(path), str(path))
    check_error(refused(path / "below"), str(path / "below"))
    assert path.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_store_path_that_is_a_directory(tmp_path):
    (tmp_path / DB).mkdir()
    (tmp_path / DB / "keep").write_text("x")
    check_error(refused(tmp_path), str(tmp_path / DB))
    assert [p.name for p in (tmp_path / DB).iterdir()] == ["keep"]


# Argv: the directory to run in, then a JSON list of data directories relative to it. Prints
# {"euid": ..., "dac_override": ..., name: result} with result ["ok", job count] or
# [status, type, reason].
PERMISSION_CHILD = r"""
import json, os, sys
import adjobs, adjobs.service, adjobs.store
from adjobs.store import StoreError

os.chdir(sys.argv[1])
with open("/proc/self/status") as status:
    effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
results = {"euid": os.geteuid(), "dac_override": bool(effective & 0b110)}
for name in json.loads(sys.argv[2]):
    try:
        with adjobs.JobService(name) as service:
            results[name] = ["ok", service.get_jobs()["count"]]
    except StoreError as error:
        results[name] = [error.status, error.type, error.reason]
print(json.dumps(results))
"""

PR_CAPBSET_DROP = 24
# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore permission bits.
ROOT_BYPASS_CAPS = (1, 2, 3)


def _without_permission_bypass() -> None:
    """preexec_fn: drop root's permission-bypassing capabilities from the bounding set, so the
    child that is exec'd next runs as root with the permission bits applying to it. (Switching
    to nobody instead would not do: SQLite opens files by their absolute path, and pytest's
    temporary directories are private to root.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in ROOT_BYPASS_CAPS:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_data_directory_that_is_not_writable(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "read-only").mkdir()
    make_store(tmp_path / "read-only-store")
    make_store(tmp_path / "read-only-file")
    (tmp_path / "read-only-file" / DB).chmod(0o444)
    (tmp_path / "read-only-store").chmod(0o555)
    (tmp_path / "read-only").chmod(0o555)
    kept = {
        name: (tmp_path / name / DB).read_bytes() for name in ("read-only-store", "read-only-file")
    }
    names = ["ok", "read-only", "read-only/below", "read-only-store", "read-only-file"]
    proc = subprocess.run(
        [sys.executable, "-c", PERMISSION_CHILD, str(tmp_path), json.dumps(names)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=_without_permission_bypass if os.geteuid() == 0 else None,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results["dac_override"] is False  # the permission bits apply to the child
    assert results["ok"] == ["ok", 0]  # and it can use a directory it may write
    for name in names[1:]:
        status, kind, reason = results[name]
        assert (status, kind) == (500, "store_exception"), results[name]
        assert f"'{name}" in reason
    assert "'read-only' is not writable" in results["read-only"][2]
    assert "cannot create the data directory 'read-only/below'" in results["read-only/below"][2]
    assert "'read-only-store' is not writable" in results["read-only-store"][2]
    assert f"'read-only-file/{DB}' is not readable and writable" in results["read-only-file"][2]
    for name, content in kept.items():
        assert (tmp_path / name / DB).read_bytes() == content
    assert list((tmp_path / "read-only").iterdir()) == []
    assert (tmp_path / "ok" / DB).is_file()


# --------------------------------------------------------------------------------------------
# A full disk during an upload


# Argv: data directory, mode ("die" or "recover"), job config, upload 1, upload 2. Prints one
# JSON line [name, value] per step. Upload 2 hits a file size limit just above the store's
# current files, twice; then the child is killed ("die") or lifts the limit and retries.
DISK_FULL_CHILD = r"""
import json, os, resource, signal, sys
import adjobs
from adjobs.store import StoreError

directory, mode, config, upload_1, upload_2 = sys.argv[1:]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def emit(name, value):
    print(json.dumps([name, value]), flush=True)


def state(service):
    emit("stats", service.get_job_stats("job")["jobs"][0]["data_counts"])
    emit("stored", service.store.load("job").counts)
    emit("strings", service.string_values("job"))


service = adjobs.JobService(directory)
service.put_job("job", json.loads(config))
service.open_job("job")
emit("first", service.post_data("job", upload_1))
state(service)
largest = max(
    os.path.getsize(os.path.join(directory, name))
    for name in os.listdir(directory) if name.startswith("adjobs.db")
)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (largest, hard))
for _ in range(2):
    try:
        emit("unexpected success", service.post_data("job", upload_2))
    except StoreError as error:
        emit("failure", [error.status, error.type, error.reason])
    state(service)
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
emit("second", service.post_data("job", upload_2))
state(service)
service.close()
emit("closed", True)
"""

UPLOAD_1 = (
    '{"time":1403481600,"airline":"AAL","responsetime":1}\n'
    '{"time":1403485200,"airline":"AAL","responsetime":2}\n'
)
UPLOAD_2 = (
    '{"time":1403488800,"airline":"JZA","responsetime":3}\n'
    '{"time":1403488900,"airline":"KLM","responsetime":4}\n'
)


def run_disk_full(directory, mode: str) -> tuple[int, list]:
    proc = subprocess.run(
        [
            sys.executable, "-c", DISK_FULL_CHILD, str(directory), mode,
            json.dumps(metric_job()), UPLOAD_1, UPLOAD_2,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, -9), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def reference_responses() -> list[dict]:
    """The two uploads on an in-memory job that never saw a failure."""
    with adjobs.JobService() as memory:
        memory.put_job("job", metric_job())
        memory.open_job("job")
        return [strip_clock(memory.post_data("job", body)) for body in (UPLOAD_1, UPLOAD_2)]


def check_failures(steps: list, directory) -> tuple[dict, dict]:
    """The steps up to and including the two failed uploads; returns the totals before."""
    names = [name for name, _ in steps]
    assert names[:4] == ["first", "stats", "stored", "strings"]
    assert names[4:12] == ["failure", "stats", "stored", "strings"] * 2, names
    first, before, stored_before, strings_before = (value for _, value in steps[:4])
    assert strip_clock(first) == reference_responses()[0]
    assert strings_before == ["AAL"]
    assert before["processed_record_count"] == 2 and before["bucket_count"] == 1
    for offset in (4, 8):
        status, kind, reason = steps[offset][1]
        assert (status, kind) == (500, "store_exception")
        assert str(directory / DB) in reason
        assert "storing an upload to job [job]" in reason
        # nothing of the upload is counted, in memory or in the store
        assert steps[offset + 1][1] == before
        assert steps[offset + 2][1] == stored_before
        assert steps[offset + 3][1] == ["AAL"]
    return before, stored_before


def test_disk_full_during_an_upload_then_the_process_dies(tmp_path):
    code, steps = run_disk_full(tmp_path, "die")
    assert code == -9
    before, _ = check_failures(steps, tmp_path)
    assert len(steps) == 12

    db = sqlite3.connect(tmp_path / DB)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    with adjobs.JobService(tmp_path) as service:
        assert service.store.integrity_check() == ["ok"]
        stats = service.get_job_stats("job")["jobs"][0]
        assert stats["state"] == "closed"
        assert stats["data_counts"] == before  # the pre-failure totals, clock fields included
        assert service.string_values("job") == ["AAL"]
        service.open_job("job")
        # the job carries on as if the failed upload had never been sent
        assert strip_clock(service.post_data("job", UPLOAD_2)) == reference_responses()[1]
        assert service.string_values("job") == ["AAL", "JZA", "KLM"]


def test_disk_full_during_an_upload_then_space_comes_back(tmp_path):
    code, steps = run_disk_full(tmp_path, "recover")
    assert code == 0
    check_failures(steps, tmp_path)
    names = [name for name, _ in steps[12:]]
    assert names == ["second", "stats", "stored", "strings", "closed"]
    second, after, _, strings_after = (value for _, value in steps[12:16])
    assert strip_clock(second) == reference_responses()[1]
    assert strings_after == ["AAL", "JZA", "KLM"]
    assert after["processed_record_count"] == 4
    assert after["input_bytes"] == len(UPLOAD_1) + len(UPLOAD_2)
    with adjobs.JobService(tmp_path) as service:
        assert service.store.integrity_check() == ["ok"]
        assert service.get_job_stats("job")["jobs"][0]["data_counts"] == after
        assert service.string_values("job") == ["AAL", "JZA", "KLM"]


# --------------------------------------------------------------------------------------------
# Job ids that try to leave the data directory


def tree(root) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


TRICKY_IDS = ["../x", "a/b", "..", ".", "x/../y", "locks/../z", "UPPER", "Job", "a\x00b", ""]


@pytest.mark.parametrize("job_id", [*TRICKY_IDS, "<absolute>"])
def test_job_ids_with_path_tricks_create_nothing(tmp_path, monkeypatch, job_id):
    directory = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    if job_id == "<absolute>":
        job_id = str(outside / "abs")
    with adjobs.JobService(directory) as service:
        service.put_job("real", COUNT_JOB)
        service.open_job("real")
        before = tree(tmp_path)

        error = error_of(service.put_job, job_id, COUNT_JOB)
        assert (error.status, error.type) == (400, "illegal_argument_exception")
        if job_id:
            assert error.reason.startswith("Invalid job_id;")
        calls = [
            (service.open_job, (), {}),
            (service.delete_job, (), {}),
            (service.delete_job, (), {"force": True}),
            (service.reset_job, (), {}),
            (service.update_job, ({"description": "x"},), {}),
            (service.string_values, (), {}),
            (service.add_record_listener, (lambda *_: None,), {}),
        ]
        if job_id:  # an empty expression means all jobs
            calls += [(service.get_jobs, (), {}), (service.get_job_stats, (), {}),
                      (service.close_job, (), {})]
        for call, args, kwargs in calls:
            error = error_of(call, job_id, *args, **kwargs)
            assert (error.status, error.type, error.reason) == (
                404, "resource_not_found_exception", f"No known job with id '{job_id}'"
            ), call
        if job_id:
            assert service.get_jobs(f"{job_id}*") == {"count": 0, "jobs": []}
            assert service.get_job_stats(f"real,{job_id}*")["count"] == 1
        for call, args in ((service.post_data, ('{"time": 1699999200}',)), (service.flush_job, ())):
            error = error_of(call, job_id, *args)
            assert (error.status, error.type) == (409, "status_exception")  # §6.2: not open
            assert error.reason.endswith("is not open")
        assert tree(tmp_path) == before
        assert service.get_jobs()["count"] == 1
    assert list(outside.iterdir()) == []
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in (directory / "locks").iterdir()) == ["real.lock"]


def error_of(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args, **kwargs)
    return raised.value
