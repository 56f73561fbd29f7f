"""The one exception type of adjobs, shaped like an Elasticsearch REST error.

Every failure in the package is an :class:`ApiError`. It carries exactly what the
REST layer needs to answer: the HTTP status, ES's error ``type`` and ``reason``, and
any extra keys ES puts in the error object (``line``/``offset`` for malformed JSON).
The helpers below build the errors that several modules raise, with ES's wording.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "illegal_argument",
    "job_already_exists",
    "job_not_found",
    "job_not_open",
    "malformed_json",
    "parse_exception",
    "x_content_parse_exception",
]


class ApiError(Exception):
    """A failure, carrying what the REST error response would contain.

    Parameters
    ----------
    status
        HTTP status code (e.g. 400, 404, 409).
    type
        ES error type, e.g. ``"illegal_argument_exception"``.
    reason
        Human-readable reason; for ES-mirrored errors this is ES's exact text.
    **extra
        Further keys of the error object (e.g. ``line=3, offset=17``).
    """

    def __init__(self, status: int, type: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.type = type
        self.reason = reason
        self.extra = dict(extra)

    def to_body(self) -> dict:
        """Return the ES error body: ``{"error": {...}, "status": status}``."""
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [dict(cause)], **cause}, "status": self.status}

    def __repr__(self) -> str:
        extra = "".join(f", {key}={value!r}" for key, value in self.extra.items())
        return f"ApiError({self.status}, {self.type!r}, {self.reason!r}{extra})"


def job_not_found(job_id: str) -> ApiError:
    """404 for an unknown job (ES ``Messages.JOB_UNKNOWN_ID``)."""
    return ApiError(
        404, "resource_not_found_exception", f"No known job with id '{job_id}'"
    )


def job_already_exists(job_id: str) -> ApiError:
    """400 for creating a job whose id is taken (ES ``Messages.JOB_CONFIG_ID_ALREADY_TAKEN``)."""
    return ApiError(
        400,
        "resource_already_exists_exception",
        f"The job cannot be created with the Id '{job_id}'. The Id is already used.",
    )


def job_and_group_clash(name: str) -> ApiError:
    """400 for a job id that is another job's group, or the reverse (ES
    ``Messages.JOB_AND_GROUP_NAMES_MUST_BE_UNIQUE``): an id expression must mean one thing."""
    return ApiError(
        400,
        "resource_already_exists_exception",
        f"job and group names must be unique but job [{name}] and group [{name}] have the "
        "same name",
    )


def job_not_open(job_id: str) -> ApiError:
    """409 for an operation that needs an open job (ES post_data / flush wording)."""
    return ApiError(
        409,
        "status_exception",
        f"Cannot perform requested action because job [{job_id}] is not open",
    )


def illegal_argument(reason: str, **extra: Any) -> ApiError:
    """400 ``illegal_argument_exception``: a value that is well-formed but not acceptable."""
    return ApiError(400, "illegal_argument_exception", reason, **extra)


def parse_exception(reason: str, **extra: Any) -> ApiError:
    """400 ``parse_exception`` (ES ``ElasticsearchParseException``)."""
    return ApiError(400, "parse_exception", reason, **extra)


def x_content_parse_exception(reason: str, **extra: Any) -> ApiError:
    """400 ``x_content_parse_exception``: unknown field or wrong JSON type in a request body."""
    return ApiError(400, "x_content_parse_exception", reason, **extra)


def malformed_json(line: int, offset: int) -> ApiError:
    """400 for an upload whose JSON could not be recovered (post-data.md D2).

    Parameters
    ----------
    line
        1-based line number of the first problem.
    offset
        Byte offset of the first problem in the request body.
    """
    return parse_exception(
        "The input JSON data is malformed.", line=line, offset=offset
    )
