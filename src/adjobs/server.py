"""``adjobs serve``: the ES-compatible HTTP server, as a plain ASGI application.

The wire rules of rest-api.md §0 live here: the product header on every response, the
JSON/NDJSON/compat media types, ES-shaped errors, the size limit (D11), gzip bodies, the
API key, and per-job FIFO ordering with a 429 past 100 waiting operations (D10).
Operations run on worker threads; ``_data`` bodies stream into the hot loop batch by
batch as they arrive, so memory stays bounded and uploads to different jobs run in
parallel (the core releases the GIL).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from . import rest
from .config import validate_job_id
from .errors import ApiError
from .service import JobService

log = logging.getLogger("adjobs.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

#: Operations allowed to wait for one job before new ones get a 429 (D10).
MAX_WAITING_PER_JOB = 100
#: How much of a ``_data`` body is handed to the core at a time.
FEED_BATCH_BYTES = 1 << 20
#: Batches of a ``_data`` body read ahead while the core parses the one before: a
#: 100 MB upload holds at most about (2 + 2) MiB of body at a time.
READ_AHEAD_BATCHES = 2
#: Largest JSON body accepted by the other endpoints, whatever ``max_content_length`` is.
MAX_JSON_BODY_BYTES = 16 << 20
DEFAULT_MAX_CONTENT_LENGTH = 100 * 1024 * 1024
#: A body that stops arriving for this long is cut off (408): a stalled client must not
#: hold its job, and the queue behind it, for ever.
BODY_IDLE_TIMEOUT_S = 120.0

_PLAIN_TYPES = {
    "application/json", "application/x-ndjson", "text/plain",
    "application/x-www-form-urlencoded", "text/csv",
}
_COMPAT_TYPES = {"application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson"}
_COMPAT_VERSIONS = {"7", "8", "9"}


def parse_size(text: str) -> int:
    """ES byte sizes: ``100mb``, ``1gb``, ``512kb``, ``1048576`` or ``1048576b``."""
    units = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
    value = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            number = value[: -len(unit)].strip()
            break
    else:
        unit, number = "b", value
    if not number.isdigit():
        raise ValueError(f"failed to parse [{text}] as a byte size (e.g. 100mb)")
    return int(number) * units[unit]


class ClientDisconnected(Exception):
    """The client went away before its request body ended: the upload is cut off."""


class _MediaType:
    def __init__(self, header: str | None) -> None:
        self.raw = header or ""
        main, _, rest_ = self.raw.partition(";")
        self.essence = main.strip().lower()
        self.params = {}
        for item in rest_.split(";"):
            key, _, value = item.partition("=")
            if key.strip():
                self.params[key.strip().lower()] = value.strip().strip('"')

    def check_request(self) -> None:
        """415 for bodies we cannot read (YAML, CBOR, SMILE, ...), 400 for a bad compat
        version (D7)."""
        if self.essence in ("",) or self.essence in _PLAIN_TYPES:
            return
        if self.essence in _COMPAT_TYPES:
            version = self.params.get("compatible-with")
            if version not in _COMPAT_VERSIONS:
                raise ApiError(
                    400,
                    "media_type_header_exception",
                    f"Invalid media-type value on headers [Content-Type]: compatible-with "
                    f"must be 7, 8 or 9, found [{version}]",
                )
            return
        raise ApiError(
            415,
            "media_type_header_exception",
            f"Content-Type header [{self.raw}] is not supported; send JSON or NDJSON "
            "(application/json, application/x-ndjson, their compatible-with forms, "
            "text/plain, text/csv or application/x-www-form-urlencoded)",
        )


def _response_type(accept: str | None) -> bytes:
    """Echo the compat form when the client asked for it, else plain JSON (§0 row 4)."""
    for part in (accept or "").split(","):
        media = _MediaType(part)
        if media.essence in _COMPAT_TYPES and media.params.get("compatible-with") in (
                _COMPAT_VERSIONS):
            return (b"application/vnd.elasticsearch+json;compatible-with="
                    + media.params["compatible-with"].encode())
    return b"application/json"


def _filter_path(body: Any, expression: str) -> Any:
    """ES's ``filter_path``: keep only the listed dotted paths (``*`` and ``**`` allowed)."""
    patterns = [part.strip().split(".") for part in expression.split(",") if part.strip()]

    def keep(node: Any, paths: list[list[str]]) -> Any:
        if not paths:
            return None
        if any(not path for path in paths):
            return node
        if isinstance(node, list):
            kept = [keep(item, paths) for item in node]
            return [item for item in kept if item is not None] or None
        if not isinstance(node, dict):
            return None
        out = {}
        for key, value in node.items():
            deeper = []
            for path in paths:
                head = path[0]
                if head == "**":
                    deeper.append(path)  # ** may swallow this level
                    deeper.append(path[1:])
                elif head == "*" or head == key:
                    deeper.append(path[1:])
            if deeper:
                result = keep(value, deeper)
                if result is not None:
                    out[key] = result
        return out or None

    return keep(body, patterns) or {}


class _Inflater:
    """gzip/deflate request bodies, with the size limit on what comes out (no bombs)."""

    def __init__(self, limit: int) -> None:
        self._inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header
        self._limit = limit
        self.produced = 0

    def feed(self, data: bytes) -> bytes:
        out = []
        pending = data
        try:
            while pending:
                piece = self._inflater.decompress(pending, FEED_BATCH_BYTES)
                pending = self._inflater.unconsumed_tail
                self.produced += len(piece)
                if self.produced > self._limit:
                    raise _too_large(self._limit)
                out.append(piece)
                if not piece and not pending:
                    break
        except zlib.error as error:
            raise ApiError(400, "parse_exception",
                           f"the gzip request body is corrupt: {error}") from None
        return b"".join(out)

    def finish(self) -> None:
        if not self._inflater.eof:
            raise ApiError(400, "parse_exception", "the gzip request body is truncated")


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "content_too_long_exception",
        f"the request body is larger than the maximum content length of [{limit}] bytes; "
        "split the data into several uploads or raise --max-content-length",
    )


class _Body:
    """One request body, read on the event loop, optionally inflated, within the limit."""

    def __init__(self, receive: Receive, limit: int, gzip: bool,
                 idle_timeout: float = BODY_IDLE_TIMEOUT_S) -> None:
        self._receive = receive
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._inflater = _Inflater(limit) if gzip else None
        self.received = 0
        self.done = False

    async def next_batch(self, size: int) -> bytes:
        """Up to about ``size`` bytes of the body, or ``b""`` at its end."""
        parts: list[bytes] = []
        collected = 0
        while collected < size and not self.done:
            try:
                message = await asyncio.wait_for(self._receive(), self._idle_timeout)
            except TimeoutError:
                raise ApiError(
                    408,
                    "timeout_exception",
                    f"no request body arrived for {self._idle_timeout:g} s; the upload was "
                    "cut off and counted nothing",
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self._limit:
                raise _too_large(self._limit)
            if not message.get("more_body", False):
                self.done = True
            if self._inflater is not None:
                chunk = self._inflater.feed(chunk)
                if self.done:
                    self._inflater.finish()
            if chunk:
                parts.append(chunk)
                collected += len(chunk)
        return b"".join(parts)

    async def read_all(self) -> bytes:
        return await self.next_batch(self._limit + 1)

    def stream_from(self, loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
        """Iterate the body from a worker thread, read ahead on the loop.

        A task on the loop keeps up to ``READ_AHEAD_BATCHES`` batches ready while the
        thread feeds the core (which releases the GIL), so receiving and parsing overlap
        instead of taking turns. Errors of the body (413, 408, a disconnect, bad gzip)
        reach the thread after the batches before them. Closing the iterator early stops
        the reading.
        """
        ready: asyncio.Queue = asyncio.Queue(READ_AHEAD_BATCHES)

        async def read_ahead() -> None:
            try:
                while not self.done:
                    batch = await self.next_batch(FEED_BATCH_BYTES)
                    if batch:
                        await ready.put(batch)
            except Exception as error:  # noqa: BLE001 - raised in the thread, in order
                await ready.put(error)
                return
            await ready.put(None)

        reader = asyncio.run_coroutine_threadsafe(read_ahead(), loop)
        try:
            while True:
                item = asyncio.run_coroutine_threadsafe(ready.get(), loop).result()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()


class _JobQueue:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: waiters are served in arrival order
        self.waiting = 0


class RestApp:
    """The ASGI application. ``service`` is shared by every request."""

    def __init__(
        self,
        service: JobService,
        *,
        api_key: str | None = None,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        body_idle_timeout: float = BODY_IDLE_TIMEOUT_S,
        workers: int = 64,
    ) -> None:
        self.service = service
        self.api_key = api_key
        self.max_content_length = max_content_length
        self.body_idle_timeout = body_idle_timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adjobs")
        self._queues: dict[str, _JobQueue] = {}
        where = str(service.path.resolve()) if service.path is not None else "memory"
        self.cluster_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"adjobs:{where}"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # Closing commits what is due (stored results waiting to be rescored; the
                # uploads are committed as they end) and releases every job's ownership and
                # the database cleanly. A failure is logged: the shutdown completes anyway.
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self.service.close)
                    log.info("closed every open job; bye")
                except Exception:  # the server is going away: logged, not raised
                    log.exception("closing the open jobs failed")
                finally:
                    self._executor.shutdown(wait=False)
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # --------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        path = scope["path"]  # already percent-decoded by the server, exactly once
        headers = {key.decode("latin-1").lower(): value.decode("latin-1")
                   for key, value in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True))
        content_type = _response_type(headers.get("accept"))
        status, body, note = 500, None, ""
        try:
            self._authorize(headers, path)
            route, path_params = rest.match(method, path)
            status, body, note = await self._dispatch(
                route, path_params, path, query, headers, receive)
        except ClientDisconnected:
            log.info('%s %s - client disconnected mid-body; the upload counted nothing '
                     '(%.1f ms)', method, path, (time.perf_counter() - started) * 1000)
            return
        except ApiError as error:
            status, body, note = error.status, error.to_body(), error.type
        except Exception:  # a bug: still an ES-shaped answer, and the traceback in the log
            log.exception("%s %s failed", method, path)
            error = ApiError(500, "exception", "internal error; see the adjobs server log")
            status, body, note = 500, error.to_body(), "exception"
        payload = b""
        if method != "HEAD" and body is not None:
            if isinstance(body, dict) and "filter_path" in query and status < 300:
                body = _filter_path(body, query["filter_path"])
            indent = 2 if query.get("pretty") in ("", "true") else None
            payload = json.dumps(body, indent=indent).encode()
            if indent:
                payload += b"\n"
        response_headers = [
            (b"x-elastic-product", b"Elasticsearch"),
            (b"content-type", content_type),
            (b"content-length", str(len(payload)).encode()),
        ]
        if status == 401:
            response_headers.append((b"www-authenticate", b'ApiKey, Basic realm="adjobs"'))
        await send({"type": "http.response.start", "status": status,
                    "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        log.info("%s %s %d %.1f ms%s", method, path, status,
                 (time.perf_counter() - started) * 1000, f" {note}" if note else "")

    def _authorize(self, headers: dict[str, str], path: str) -> None:
        if self.api_key is None:
            return
        sent = headers.get("authorization", "")
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() == "apikey" and hmac.compare_digest(
                credentials.strip().encode(), self.api_key.encode()):
            return
        # ES's two wordings: nothing was sent, or what was sent did not authenticate
        reason = ("unable to authenticate with provided credentials and anonymous access is "
                  "not allowed for this request" if sent.strip()
                  else f"missing authentication credentials for REST request [{path}]")
        raise ApiError(401, "security_exception", reason,
                       header={"WWW-Authenticate": ["ApiKey"]})

    async def _dispatch(self, route: rest.Route, path_params: dict[str, str], path: str,
                        query: dict[str, str], headers: dict[str, str],
                        receive: Receive) -> tuple[int, Any, str]:
        if route.name == "info":
            return 200, rest.info_document(self.cluster_uuid), ""
        if route.name == "ping":
            return 200, None, ""
        if route.name == "ml_info":
            return 200, rest.ml_info(), ""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > (
                self.max_content_length):
            raise _too_large(self.max_content_length)
        has_body = declared != "0" and (declared is not None
                                        or "chunked" in headers.get("transfer-encoding", ""))
        if has_body:
            _MediaType(headers.get("content-type")).check_request()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate", ""):
            raise ApiError(415, "illegal_argument_exception",
                           f"Content-Encoding [{encoding}] is not supported; use gzip")
        body = _Body(receive, self.max_content_length, gzip=encoding in ("gzip", "deflate"),
                     idle_timeout=self.body_idle_timeout)
        if not has_body:
            body.done = True
        loop = asyncio.get_running_loop()
        if route.name == "post_data":
            params = rest.merge_params(route, path, query, None)
            job_id = path_params["job_id"]
            validate_job_id(job_id)

            def upload() -> dict:
                return self.service.post_data(job_id, body.stream_from(loop),
                                              reset_start=params.get("reset_start"),
                                              reset_end=params.get("reset_end"))

            counts = await self._run(job_id, upload, dedicated_thread=True)
            return route.status, counts, f"{counts['processed_record_count']} processed"
        raw = await body.read_all() if has_body else b""
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise _too_large(MAX_JSON_BODY_BYTES)
        parsed = _parse_json_body(raw) if raw.strip() else None
        params = rest.merge_params(route, path, query, parsed)
        job_id = path_params.get("job_id")
        queued = route.name in rest.QUEUED and job_id is not None and not any(
            mark in job_id for mark in ",*") and job_id != "_all"

        def operation() -> dict:
            return rest.call(self.service, route, path_params, params, parsed)

        if queued:
            return route.status, await self._run(job_id, operation), ""
        return route.status, await loop.run_in_executor(self._executor, operation), ""

    async def _run(self, job_id: str, operation: Callable[[], dict], *,
                   dedicated_thread: bool = False) -> dict:
        """Run one job's operation after those that arrived before it (D10).

        An upload gets a thread of its own: it spends its life waiting for the client's
        body, and stalled clients must not use up the pool that every other job's
        operations run on. The FIFO allows one upload per job at a time, and the body
        idle timeout bounds how long a stalled one lives.
        """
        queue = self._queues.setdefault(job_id, _JobQueue())
        if queue.waiting >= MAX_WAITING_PER_JOB:
            raise ApiError(
                429,
                "es_rejected_execution_exception",
                f"rejected execution: more than {MAX_WAITING_PER_JOB} operations are waiting "
                f"for job [{job_id}]",
            )
        queue.waiting += 1
        try:
            await queue.lock.acquire()
        finally:
            queue.waiting -= 1
        try:
            if dedicated_thread:
                return await _in_own_thread(operation, f"adjobs-upload-{job_id}")
            return await asyncio.get_running_loop().run_in_executor(self._executor, operation)
        finally:
            queue.lock.release()


async def _in_own_thread(operation: Callable[[], dict], name: str) -> dict:
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the request was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = operation()
        except BaseException as error:  # noqa: BLE001 - handed to the request, which answers
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _parse_json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError as error:
        raise ApiError(400, "x_content_parse_exception",
                       f"the request body is not valid UTF-8 (byte offset {error.start})"
                       ) from None
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            "x_content_parse_exception",
            f"[{error.lineno}:{error.colno}] failed to parse the request body as JSON: "
            f"{error.msg}",
            line=error.lineno,
            col=error.colno,
        ) from None


def serve(
    service: JobService,
    *,
    host: str = "127.0.0.1",
    port: int = 9200,
    api_key: str | None = None,
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    body_idle_timeout: float = BODY_IDLE_TIMEOUT_S,
    log_level: str = "info",
) -> None:
    """Run the server until SIGINT or SIGTERM, then close the service's open jobs."""
    import uvicorn

    app = RestApp(service, api_key=api_key, max_content_length=max_content_length,
                  body_idle_timeout=body_idle_timeout)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # RestApp logs one line per request, with its outcome
        lifespan="on",
        http="auto",
        # Pinned: with uvloop installed, "auto" would pick it, and it measured no faster
        # on large bodies here (bench/http.py); one loop means one set of figures.
        loop="asyncio",
        timeout_graceful_shutdown=30,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down cleanly; with
    # these handlers in place that ends the process with status 0 instead of -15.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    uvicorn.Server(config).run()
