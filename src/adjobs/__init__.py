"""adjobs: Elasticsearch-style anomaly-detection jobs with a native ingest core.

The public API is small: :class:`JobService` (mirrors the ``_ml`` REST API),
:class:`Job` (a handle on one job) and :class:`ApiError` (every failure, shaped
like the REST error). Names are resolved lazily so that importing a pure-Python
submodule (``adjobs.config``) does not load the compiled core.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ApiError", "Job", "JobService", "__version__"]


def __getattr__(name: str):
    if name == "ApiError":
        from .errors import ApiError

        return ApiError
    if name in ("JobService", "Job"):
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module 'adjobs' has no attribute {name!r}")
