"""Run ``adjobs serve`` as a subprocess on a free loopback port, and talk to it raw.

:class:`Server` starts ``python -m adjobs serve --data-dir DIR --port PORT [...]``, waits
until ``GET /`` answers, captures the server's log in a file, and stops it with SIGTERM.
:func:`request` sends one HTTP request with :mod:`http.client`; :class:`RawClient` writes
bytes to a socket by hand (partial bodies, chunked bodies, disconnects) and reads the
response. Everything closes what it opens, so the tests stay free of ResourceWarnings.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Self

#: Hang guard for any single wait in these tests (never asserted on).
HANG_GUARD = 30.0


def free_port() -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    reason: str = ""
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self):
        return json.loads(self.body)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def _response_of(resp: http.client.HTTPResponse) -> Response:
    body = resp.read()
    pairs = [(name.lower(), value) for name, value in resp.getheaders()]
    return Response(resp.status, dict(pairs), body, resp.reason, pairs)


def request(port: int, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, *, timeout: float = HANG_GUARD) -> Response:
    """One request on a fresh connection. ``http.client`` adds ``Host``,
    ``Accept-Encoding: identity`` and, with a body (even empty), ``Content-Length``;
    nothing else — in particular no Content-Type unless ``headers`` has one."""
    if isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return _response_of(connection.getresponse())
    finally:
        connection.close()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


class RawClient:
    """A socket to the server for hand-written requests."""

    def __init__(self, port: int, timeout: float = HANG_GUARD) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send_chunk(self, data: bytes) -> None:
        self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def read_response(self, method: str = "POST") -> Response:
        resp = http.client.HTTPResponse(self.sock, method=method)
        try:
            resp.begin()
            return _response_of(resp)
        finally:
            resp.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Server:
    """``adjobs serve`` in a subprocess; a context manager that stops it on exit.

    ``extra`` are further command-line options (``--api-key``, ``--max-content-length``);
    ``env`` adds environment variables. The log (stdout and stderr) goes to
    ``<data_dir>.log``; :attr:`log` reads it.
    """

    def __init__(self, data_dir: str | os.PathLike, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.extra = list(extra)
        self.env = env or {}
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> Self:
        env = {key: value for key, value in os.environ.items()
               if key not in ("ADJOBS_API_KEY", "ADJOBS_DATA_DIR")}
        env.update(self.env)
        for _attempt in range(5):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "adjobs", "serve", "--data-dir", str(self.data_dir),
                     "--port", str(self.port), *self.extra],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            try:
                ready = self._wait_ready()
            except BaseException:
                self.process.kill()
                self.process.wait()
                self.process = None
                raise
            if ready:
                return self
            self.process.wait(timeout=HANG_GUARD)
            self.process = None
            if "address already in use" not in self.log.lower():
                break
        raise RuntimeError(f"adjobs serve did not start; its log:\n{self.log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                request(self.port, "GET", "/", timeout=2)
                return True  # any answer (a 401 with --api-key too) means it serves
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"adjobs serve did not answer GET /; its log:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        if self.process is None:
            return self.returncode
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        """Wait for the server to exit (hang guard: then kill it); returns the exit code."""
        if self.process is None:
            return self.returncode
        try:
            self.returncode = self.process.wait(timeout=HANG_GUARD + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.process = None
        return self.returncode

    def wait_for_log(self, text: str, count: int = 1) -> str:
        """Wait (hang guard only) until ``text`` occurs ``count`` times in the log."""
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            log = self.log
            if log.count(text) >= count:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never appeared {count}x in the server log:\n{self.log}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.stop()


# ------------------------------------------------------------------------------------
# Shared test data

#: The README's job: mean(rt) by host, 1h buckets, epoch seconds.
JOB_CONFIG = {
    "analysis_config": {
        "bucket_span": "1h",
        "detectors": [{"function": "mean", "field_name": "rt", "by_field_name": "host"}],
    },
    "data_description": {"time_field": "time", "time_format": "epoch"},
}
T0 = 1_700_000_000 // 3600 * 3600  # an hour boundary, in seconds
HOUR = 3600


def records(n: int, start_hour: int = 0, hosts: tuple[str, ...] = ("a", "b")) -> list[dict]:
    """``n`` records one per half hour from ``T0 + start_hour`` hours."""
    return [{"time": T0 + start_hour * HOUR + i * 1800, "rt": 10.0 + i,
             "host": hosts[i % len(hosts)]} for i in range(n)]


def ndjson(docs: list[dict]) -> bytes:
    return b"".join(json.dumps(doc).encode() + b"\n" for doc in docs)


def without_clock(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if k not in ("last_data_time", "log_time")}


def reference_counts(uploads: list[bytes], job_id: str = "ref") -> list[dict]:
    """What an in-process :class:`adjobs.JobService` answers for the same uploads, in
    order, to a fresh job of :data:`JOB_CONFIG` (clock fields dropped)."""
    import adjobs

    with adjobs.JobService() as service:
        service.put_job(job_id, JOB_CONFIG)
        service.open_job(job_id)
        return [without_clock(service.post_data(job_id, body)) for body in uploads]
