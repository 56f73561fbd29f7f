"""From a job configuration and "some data" to chunks of bytes for the core.

``post_data`` accepts the data in every form a Python user has at hand (see
:func:`iter_chunks`); this module turns each into a stream of byte chunks so that no
upload is ever held in memory whole.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .config import JobConfig
from .errors import ApiError
from .plan import KIND_CATEGORICAL, KIND_NUMERIC, KIND_TEXT, IngestPlan
from .timeformat import compile_time_format

CHUNK_BYTES = 1 << 20
#: The chunks of an analysed upload (at most CHUNK_BYTES): the analysis works through each
#: chunk's records while the next one is read, and on two cores half-size chunks keep both
#: busier (farequote: 25.9 ms analysed against 27.3 ms with whole ones; quarter-size chunks
#: pay more in fixed costs per chunk than they gain, 29.6 ms).
ANALYSED_CHUNK_BYTES = 1 << 19
#: The first chunk of an analysed upload, and how much larger each next one is, up to
#: ANALYSED_CHUNK_BYTES: the analysis starts sooner, on a smaller chunk, while the reading
#: goes on, and the chunks read meanwhile take about as long as the analysis of the one
#: before, so that neither waits for the other (farequote, medians of 35 alternating runs:
#: 25.7 ms analysed with 320, 448, then 512 KiB chunks against 26.2 ms with 256 then 512 KiB;
#: smaller first chunks, or a smaller last one, pay more in fixed costs per chunk).
ANALYSED_FIRST_CHUNK_BYTES = 320 << 10
ANALYSED_CHUNK_GROWTH = 1.4


def plan_for(config: JobConfig) -> IngestPlan:
    """The reader's view of a job (input fields, kinds, time program, buckets)."""
    numeric = set(config.numeric_fields)
    categorical = set(config.categorical_fields)
    analysis = [name for name in config.analysis_fields if name != config.time_field]
    kinds = tuple(
        KIND_NUMERIC if name in numeric else KIND_CATEGORICAL if name in categorical else KIND_TEXT
        for name in analysis
    )
    time_format = compile_time_format(config.time_format)
    return IngestPlan(
        format="csv" if config.format == "delimited" else "json",
        input_fields=(config.time_field, *analysis),
        field_kinds=kinds,
        time_format=config.time_format,
        time_program=time_format.program,
        default_year=_dt.datetime.now(_dt.UTC).year,
        bucket_span_ms=config.bucket_span_ms,
        latency_ms=config.latency_ms,
        field_delimiter=config.field_delimiter or "\t",
        quote_character=config.quote_character or '"',
    )


def iter_chunks(data: Any, *, delimited: bool = False, chunk_bytes: int | None = None,
                first_chunk_bytes: int | None = None,
                growth: float = 1.0) -> Iterator[bytes | memoryview]:
    """Byte chunks of ``data``, of ``chunk_bytes`` (default :data:`CHUNK_BYTES`) or so, the
    first of ``first_chunk_bytes`` (default: the same), each next one ``growth`` times the
    one before until they are ``chunk_bytes``.

    ``data`` may be:

    - ``bytes``/``bytearray``/``memoryview`` or ``str`` (the data itself; a ``str`` is
      never taken as a path);
    - an ``os.PathLike`` naming a file (``"-"`` is not special here; the CLI handles it);
    - a binary file object (anything with ``readinto`` or ``read``);
    - a mapping (one document) or a list of mappings (documents, sent as NDJSON);
    - any other iterable of ``bytes``/``str`` chunks.
    """
    size = chunk_bytes or CHUNK_BYTES
    sizes = _chunk_sizes(min(first_chunk_bytes or size, size), size, growth)
    if isinstance(data, str):
        data = _utf8(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        start = 0
        while start < len(view):
            end = start + next(sizes)
            yield view[start:end]
            start = end
        return
    if isinstance(data, os.PathLike):
        yield from _file_chunks(data, size, sizes)
        return
    if hasattr(data, "readinto") or hasattr(data, "read"):
        yield from _stream_chunks(data, size, sizes)
        return
    if isinstance(data, Mapping):
        data = [data]
    if isinstance(data, Iterable):
        yield from _iterable_chunks(data, delimited, sizes)
        return
    raise ApiError(
        400,
        "illegal_argument_exception",
        f"cannot post data of type [{type(data).__name__}]; expected bytes, str, a path, "
        "a binary file, a list of objects or an iterable of byte chunks",
    )


def _chunk_sizes(first: int, size: int, growth: float) -> Iterator[int]:
    """``first``, then ``growth`` times the size before, up to ``size``; without growth (1
    or less), ``size`` right after the first."""
    current = first
    while True:
        yield current
        grown = current * growth  # a float: an unbounded growth is no overflow
        current = size if not growth > 1 or grown >= size else max(current + 1, int(grown))


def _file_chunks(path: os.PathLike, chunk_bytes: int, sizes: Iterator[int]
                 ) -> Iterator[bytes]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, generator-safe
    except OSError as error:
        raise ApiError(
            400,
            "illegal_argument_exception",
            f"cannot read data file [{os.fspath(path)}]: {error.strerror or error}",
        ) from error
    with handle:
        yield from _stream_chunks(handle, chunk_bytes, sizes)


def _stream_chunks(stream: Any, chunk_bytes: int, sizes: Iterator[int]) -> Iterator[bytes]:
    # One reusable buffer: the core copies each chunk into its own padded buffer (before the
    # next chunk is asked for). Sizes never exceed chunk_bytes.
    if hasattr(stream, "readinto") and not isinstance(stream, io.TextIOBase):
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        size = stream.readinto(view[:next(sizes)])
        while size:
            yield view[:size]
            size = stream.readinto(view[:next(sizes)])
        return
    chunk = stream.read(next(sizes))
    while chunk:
        yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
        chunk = stream.read(next(sizes))


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8. A lone surrogate, which UTF-8 cannot hold, is written as the three
    bytes Python keeps it as: invalid UTF-8, which the reader treats as in a posted body (a
    JSON document holding it is malformed, docs/ingest-semantics.md R3)."""
    return text.encode("utf-8", "surrogatepass")


def _document_line(document: Mapping) -> bytes:
    """One document as an NDJSON line. A str holding a lone surrogate is written as its
    ``\\uXXXX`` escape, which the reader takes as U+FFFD, as it does in posted JSON."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _iterable_chunks(items: Iterable, delimited: bool, sizes: Iterator[int]
                     ) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    wanted = next(sizes)
    for item in items:
        if isinstance(item, Mapping):
            if delimited:
                raise ApiError(
                    400,
                    "illegal_argument_exception",
                    "a job with format [delimited] takes delimited text, not objects",
                )
            line = _document_line(item)
        elif isinstance(item, str):
            line = _utf8(item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            line = bytes(item)
        else:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"cannot post an item of type [{type(item).__name__}]; expected objects or "
                "byte chunks",
            )
        pending.append(line)
        size += len(line)
        if size >= wanted:
            yield b"".join(pending)
            pending.clear()
            size = 0
            wanted = next(sizes)
    if pending:
        yield b"".join(pending)
