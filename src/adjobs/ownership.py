"""One owner per job: an OS file lock per open job under ``<data dir>/locks/``.

The process that opens a job holds an exclusive ``flock`` on ``locks/<job_id>.lock``
until it closes the job. The kernel drops the lock when the process dies, however it
dies, so a kill -9 never leaves a job stuck: the next ``open_job`` simply takes it.
``flock`` locks belong to an open file, so two services in one process exclude each
other too.

Job ids are validated before they get here (lowercase letters, digits, ``-`` and ``_``),
so a lock file name can never leave the locks directory; :func:`_lock_path` checks again.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .errors import ApiError

_SAFE_ID = re.compile(r"[a-z0-9][a-z0-9_-]*")

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def owned_elsewhere(job_id: str) -> ApiError:
    """409 for a job that another process (or another service) has open."""
    return ApiError(
        409,
        "status_exception",
        f"Cannot perform requested action because job [{job_id}] is opened by another "
        "process using the same data directory",
    )


class Claim:
    """Ownership of one job: an open, locked file. Release it exactly once."""

    def __init__(self, job_id: str, path: Path | None, fd: int | None) -> None:
        self.job_id = job_id
        self._path = path
        self._fd = fd

    def release(self, *, remove: bool = False) -> None:
        """Give the job up; ``remove`` also deletes the lock file (the job is gone)."""
        if self._fd is None:
            return
        try:
            if remove and self._path is not None:
                # Unlinked while still locked: whoever opens the path next gets a new
                # file, and re-checks that the job exists once it holds the lock.
                self._path.unlink(missing_ok=True)
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None


class JobOwnership:
    """Lock files for the jobs of one data directory; ``None`` for in-memory stores,
    where the owning service is the only one that can see the jobs."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory / "locks" if directory is not None else None
        if self._directory is not None:
            self._directory.mkdir(exist_ok=True)

    def claim(self, job_id: str) -> Claim:
        """Take ownership of ``job_id`` or raise 409 if someone else has it."""
        if self._directory is None:
            return Claim(job_id, None, None)
        path = _lock_path(self._directory, job_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise owned_elsewhere(job_id)
            # The previous owner may have deleted the job and unlinked this file
            # between our open and our lock; then the lock guards nothing.
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                return Claim(job_id, path, fd)
            _unlock(fd)
            os.close(fd)

    def owned_by_other(self, job_id: str) -> bool:
        """Whether another process or service holds ``job_id`` right now."""
        if self._directory is None:
            return False
        path = _lock_path(self._directory, job_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if _try_lock(fd):
                _unlock(fd)
                return False
            return True
        finally:
            os.close(fd)


def _lock_path(directory: Path, job_id: str) -> Path:
    if _SAFE_ID.fullmatch(job_id) is None:
        raise ApiError(400, "illegal_argument_exception", f"Invalid job_id; '{job_id}'")
    return directory / f"{job_id}.lock"
