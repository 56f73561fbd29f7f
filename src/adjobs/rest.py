"""The REST surface: which method and path call which :class:`JobService` operation, with
which parameters. No HTTP here; :mod:`adjobs.server` does the wire.

Routes exist under ``/_ml/`` and the old ``/_xpack/ml/`` (D9). Parameters come from the
query string and the JSON body, merged with the body winning (rest-api.md §0 row 6); a
parameter an endpoint does not know is a 400 naming it, as in ES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .config import JOB_VERSION, validate_job_id
from .errors import ApiError, illegal_argument
from .service import JobService
from .service import parse_boolean as boolean

#: Parameters every endpoint accepts: they shape the response, not the operation.
GENERIC_PARAMS = frozenset({"pretty", "human", "error_trace", "filter_path", "format"})
#: Routes that act on one job run one at a time per job, in arrival order (D10).
QUEUED = frozenset({"post_data", "flush_job", "close_job", "reset_job", "delete_job",
                    "update_job", "open_job"})


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    pattern: re.Pattern
    params: frozenset[str]
    #: 200 unless the API answers otherwise (post_data: 202).
    status: int = 200
    #: Whether the body is a JSON object of parameters / a config (False: data or none).
    json_body: bool = True


_JOB = r"(?P<job_id>[^/]+)"
_PREFIXES = ("/_ml/anomaly_detectors", "/_xpack/ml/anomaly_detectors")

_ROUTE_SPECS: list[tuple[str, str, str, tuple[str, ...], int, bool]] = [
    # name, method, path after the prefix, parameters, status, JSON body
    ("put_job", "PUT", f"/{_JOB}", ("ignore_unavailable", "allow_no_indices",
                                    "ignore_throttled", "expand_wildcards"), 200, True),
    ("get_jobs", "GET", f"/{_JOB}", ("allow_no_match", "exclude_generated"), 200, False),
    ("get_jobs", "GET", "/?", ("allow_no_match", "exclude_generated"), 200, False),
    ("delete_job", "DELETE", f"/{_JOB}", ("force", "wait_for_completion",
                                          "delete_user_annotations"), 200, False),
    ("open_job", "POST", f"/{_JOB}/_open", ("timeout",), 200, True),
    ("close_job", "POST", f"/{_JOB}/_close", ("allow_no_match", "force", "timeout"), 200, True),
    ("flush_job", "POST", f"/{_JOB}/_flush", ("calc_interim", "start", "end", "advance_time",
                                              "skip_time"), 200, True),
    ("post_data", "POST", f"/{_JOB}/_data", ("reset_start", "reset_end"), 202, False),
    ("reset_job", "POST", f"/{_JOB}/_reset", ("wait_for_completion",
                                              "delete_user_annotations"), 200, True),
    ("update_job", "POST", f"/{_JOB}/_update", (), 200, True),
    ("get_job_stats", "GET", f"/{_JOB}/_stats", ("allow_no_match",), 200, False),
    ("get_job_stats", "GET", "/_stats", ("allow_no_match",), 200, False),
]
# The results APIs answer GET and POST alike (elasticsearch-py uses POST, curl GET).
_BUCKETS_PARAMS = ("expand", "exclude_interim", "from", "size", "start", "end", "anomaly_score",
                   "sort", "desc", "page", "timestamp")
_RECORDS_PARAMS = ("exclude_interim", "from", "size", "start", "end", "record_score", "sort",
                   "desc", "page")
_INFLUENCERS_PARAMS = ("exclude_interim", "from", "size", "start", "end", "influencer_score",
                       "sort", "desc", "page")
_OVERALL_PARAMS = ("top_n", "bucket_span", "overall_score", "exclude_interim", "start", "end",
                   "allow_no_match")
for _method in ("GET", "POST"):
    _ROUTE_SPECS += [
        ("get_buckets", _method, f"/{_JOB}/results/buckets/(?P<timestamp>[^/]+)",
         _BUCKETS_PARAMS, 200, True),
        ("get_buckets", _method, f"/{_JOB}/results/buckets", _BUCKETS_PARAMS, 200, True),
        ("get_records", _method, f"/{_JOB}/results/records", _RECORDS_PARAMS, 200, True),
        ("get_influencers", _method, f"/{_JOB}/results/influencers", _INFLUENCERS_PARAMS, 200,
         True),
        ("get_overall_buckets", _method, f"/{_JOB}/results/overall_buckets", _OVERALL_PARAMS,
         200, True),
    ]


def _build_routes() -> list[Route]:
    routes = [
        Route("info", "GET", re.compile(r"/?"), frozenset(), 200, False),
        Route("ping", "HEAD", re.compile(r"/?"), frozenset(), 200, False),
        Route("ml_info", "GET", re.compile(r"/_ml/info"), frozenset(), 200, False),
        Route("ml_info", "GET", re.compile(r"/_xpack/ml/info"), frozenset(), 200, False),
    ]
    for prefix in _PREFIXES:
        # /_stats before /{job_id} so that "_stats" is never taken for a job id.
        ordered = sorted(_ROUTE_SPECS, key=lambda spec: spec[2] != "/_stats")
        for name, method, path, params, status, json_body in ordered:
            routes.append(Route(name, method, re.compile(re.escape(prefix) + path),
                                frozenset(params), status, json_body))
    return routes


ROUTES = _build_routes()


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for ``method path`` and its path parameters.

    Raises
    ------
    ApiError
        405 when the path exists for other methods, 400 when nothing serves it (ES's
        wording for both).
    """
    allowed = []
    lookup = "GET" if method == "HEAD" and path not in ("", "/") else method
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == lookup:
            return route, found.groupdict()
        allowed.append(route.method)
    if allowed:
        raise ApiError(
            405,
            "method_not_allowed_exception",
            f"Incorrect HTTP method for uri [{path}] and method [{method}], allowed: "
            f"[{', '.join(sorted(set(allowed)))}]",
        )
    raise ApiError(400, "illegal_argument_exception",
                   f"no handler found for uri [{path}] and method [{method}]")


def merge_params(route: Route, path: str, query: dict[str, str], body: Any) -> dict[str, Any]:
    """Query and body parameters merged (the body wins), each checked against the route."""
    # a job's own body is its configuration; every other body is an object of parameters
    body_params = route.name not in ("put_job", "update_job")
    if body_params and body is not None and not isinstance(body, dict):
        token = "START_ARRAY" if isinstance(body, list) else "VALUE"
        raise ApiError(400, "x_content_parse_exception",
                       f"[1:1] [{route.name}] Expected START_OBJECT but was: {token}")
    params: dict[str, Any] = {}
    for source in (query, body if body_params and isinstance(body, dict) else {}):
        for key, value in source.items():
            if key in GENERIC_PARAMS:
                continue
            if key not in route.params:
                raise illegal_argument(
                    f"request [{path}] contains unrecognized parameter: [{key}]"
                )
            params[key] = value
    return params


def _job_id(path_params: dict[str, str]) -> str:
    job_id = path_params["job_id"]
    validate_job_id(job_id)
    return job_id


def _expression(path_params: dict[str, str]) -> str | None:
    """An id expression (ids, wildcards, comma lists, ``_all``): each part checked."""
    expression = path_params.get("job_id")
    if expression is None:
        return None
    for part in expression.split(","):
        part = part.strip()
        if part in ("", "_all", "*") or "*" in part:
            continue
        validate_job_id(part)
    return expression


def info_document(cluster_uuid: str) -> dict:
    """``GET /``: what clients check before talking to "Elasticsearch" (§0 row 2)."""
    return {
        "name": "adjobs",
        "cluster_name": "adjobs",
        "cluster_uuid": cluster_uuid,
        "version": {
            "number": JOB_VERSION,
            "build_flavor": "default",
            "build_type": "adjobs",
            "build_hash": "adjobs",
            "build_date": "2026-01-01T00:00:00.000Z",
            "build_snapshot": False,
            "lucene_version": "10.2.2",
            "minimum_wire_compatibility_version": "8.19.0",
            "minimum_index_compatibility_version": "8.0.0",
        },
        "tagline": "You Know, for Search",
    }


def ml_info() -> dict:
    """``GET _ml/info``: the defaults and limits typed clients require."""
    return {
        "defaults": {
            "anomaly_detectors": {
                "model_memory_limit": "1gb",
                "categorization_examples_limit": 4,
                "model_snapshot_retention_days": 10,
                "daily_model_snapshot_retention_after_days": 1,
            },
            "datafeeds": {"scroll_size": 1000},
        },
        "upgrade_mode": False,
        "native_code": {"version": JOB_VERSION, "build_hash": "adjobs"},
        "limits": {"max_single_ml_node_processors": 2, "total_ml_processors": 2},
    }


def call(service: JobService, route: Route, path_params: dict[str, str],
         params: dict[str, Any], body: Any) -> dict:
    """Run a route's operation (everything but ``post_data``, whose body streams)."""
    name = route.name
    if name == "put_job":
        if not isinstance(body, dict):
            raise ApiError(400, "parse_exception", "request body is required")
        return service.put_job(_job_id(path_params), body)
    if name == "update_job":
        if not isinstance(body, dict):
            raise ApiError(400, "parse_exception", "request body is required")
        return service.update_job(_job_id(path_params), body)
    if name == "get_jobs":
        return service.get_jobs(_expression(path_params),
                                allow_no_match=boolean("allow_no_match",
                                                       params.get("allow_no_match"), True))
    if name == "get_job_stats":
        return service.get_job_stats(_expression(path_params),
                                     allow_no_match=boolean("allow_no_match",
                                                            params.get("allow_no_match"), True))
    if name == "delete_job":
        return service.delete_job(_job_id(path_params),
                                  force=boolean("force", params.get("force"), False))
    if name == "reset_job":
        return service.reset_job(_job_id(path_params))
    if name == "open_job":
        return service.open_job(_job_id(path_params))
    if name == "close_job":
        return service.close_job(
            _expression(path_params),
            force=boolean("force", params.get("force"), False),
            allow_no_match=boolean("allow_no_match", params.get("allow_no_match"), True),
        )
    if name == "flush_job":
        return service.flush_job(
            _job_id(path_params),
            calc_interim=boolean("calc_interim", params.get("calc_interim"), False),
            start=params.get("start"),
            end=params.get("end"),
            advance_time=params.get("advance_time"),
            skip_time=params.get("skip_time"),
        )
    if name == "get_buckets":
        # The timestamp of the path wins over the body's (rest-api §5).
        in_body = params.pop("timestamp", None)
        timestamp = path_params.get("timestamp") or in_body
        return service.get_buckets(_job_id(path_params), timestamp, **params)
    if name == "get_records":
        return service.get_records(_job_id(path_params), **params)
    if name == "get_influencers":
        return service.get_influencers(_job_id(path_params), **params)
    if name == "get_overall_buckets":
        params["allow_no_match"] = boolean("allow_no_match", params.get("allow_no_match"), True)
        return service.get_overall_buckets(_expression(path_params), **params)
    raise AssertionError(f"no handler for route {name}")
