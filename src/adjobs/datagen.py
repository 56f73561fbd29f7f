"""Seeded generator of farequote-shaped data for tests, examples and benchmarks.

"farequote" is the classic Elastic machine-learning demo: the response times of a
flight-comparison site, one record per search, by airline, over five days. This module
produces synthetic data of the same shape, deterministically from a seed, at any size:

* 19 airlines with the per-airline record rates, mean response times and spreads of the
  real ``farequote-2021.csv`` (86,274 rows over 5 days), see :data:`AIRLINE_PROFILES`;
* a daily pattern: the record rate swings by about ±14 % over the day (as in the real file)
  and response times by ±5 %;
* optionally one clear incident, described by :data:`INCIDENT`, that an anomaly-detection
  job should find.

Records are ``(time_ms, airline, responsetime)`` tuples in ascending time order. The writers
format whole numpy batches at once, so a 1 GB file takes seconds rather than minutes.

Only the standard library and numpy are used, so the module ships with the package.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator
from typing import IO, NamedTuple

import numpy as np

__all__ = [
    "AIRLINES",
    "AIRLINE_PROFILES",
    "FAREQUOTE_START_MS",
    "INCIDENT",
    "AirlineProfile",
    "Incident",
    "RecordBatch",
    "demo_job_config",
    "generate_batches",
    "generate_records",
    "incident_window",
    "write_csv",
    "write_ndjson",
]

_MS_PER_MINUTE = 60_000
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000

#: Start of the real farequote-2021 data: 2021-02-06T19:00:00Z, in epoch milliseconds.
FAREQUOTE_START_MS = 1_612_638_000_000


class AirlineProfile(NamedTuple):
    """Per-airline parameters of the generator.

    Attributes
    ----------
    airline : str
        Three-letter airline code, the partition value.
    records_per_5_days : int
        Expected number of records over 5 days at ``scale=1`` (ignoring the daily pattern,
        which averages out over whole days).
    mean_ms : float
        Mean response time in milliseconds.
    std_ms : float
        Standard deviation of the response time in milliseconds.
    """

    airline: str
    records_per_5_days: int
    mean_ms: float
    std_ms: float


# Calibrated on farequote-2021.csv (counts, means and standard deviations per airline). AAL's
# spread is taken from its quiet hours: its whole-file figure (36.9) is inflated by the real
# incident on 2021-02-09, and our own incident is injected separately.
AIRLINE_PROFILES: tuple[AirlineProfile, ...] = (
    AirlineProfile("AAL", 8728, 100.0, 25.0),
    AirlineProfile("ACA", 5665, 20.0, 2.5),
    AirlineProfile("AMX", 5649, 15.0, 2.5),
    AirlineProfile("ASA", 5675, 75.1, 7.4),
    AirlineProfile("AWE", 8699, 20.0, 1.0),
    AirlineProfile("BAW", 4275, 200.2, 10.0),
    AirlineProfile("DAL", 1726, 400.2, 10.2),
    AirlineProfile("EGF", 4292, 199.9, 10.0),
    AirlineProfile("FFT", 5655, 200.0, 25.2),
    AirlineProfile("JAL", 4326, 500.1, 9.9),
    AirlineProfile("JBU", 4341, 999.8, 99.2),
    AirlineProfile("JZA", 4260, 1000.0, 9.9),
    AirlineProfile("KLM", 1724, 1500.6, 100.1),
    AirlineProfile("NKS", 1738, 9996.3, 100.9),
    AirlineProfile("SWA", 3399, 251.3, 50.2),
    AirlineProfile("SWR", 4285, 1993.7, 499.5),
    AirlineProfile("TRS", 1729, 399.9, 10.0),
    AirlineProfile("UAL", 5787, 10.0, 1.0),
    AirlineProfile("VRD", 4321, 299.9, 20.5),
)

#: The 19 airline codes, in the order used for the integer codes of :class:`RecordBatch`.
AIRLINES: tuple[str, ...] = tuple(p.airline for p in AIRLINE_PROFILES)


class Incident(NamedTuple):
    """An injected incident: one airline misbehaves during ``[start_ms, end_ms)``.

    Attributes
    ----------
    airline : str
        The affected airline.
    start_ms, end_ms : int
        The window, epoch milliseconds, end excluded. Both fall on 15-minute boundaries, so
        they line up with the buckets of :func:`demo_job_config`.
    response_factor : float
        Multiplier applied to the airline's response times inside the window.
    rate_factor : float
        Multiplier applied to the airline's record rate inside the window (a count burst,
        as in the real farequote incident).
    description : str
        Human-readable summary.
    """

    airline: str
    start_ms: int
    end_ms: int
    response_factor: float
    rate_factor: float
    description: str


# Day 4 (3 days after the start) at 16:00 into the day: with the default start of 19:00Z that
# is 2021-02-10T11:00Z, the same time of day as the real AAL incident (2021-02-09T11:00Z).
_INCIDENT_OFFSET_MS = 3 * _MS_PER_DAY + 16 * _MS_PER_HOUR
_INCIDENT_DURATION_MS = 2 * _MS_PER_HOUR


def incident_window(start_ms: int = FAREQUOTE_START_MS) -> Incident:
    """Return the incident that :func:`generate_records` injects for a given start time.

    Parameters
    ----------
    start_ms : int
        The ``start_ms`` passed to the generator.

    Returns
    -------
    Incident
        The incident, shifted with ``start_ms``. It is only generated if ``days`` covers it
        (``days >= 4``).
    """
    begin = int(start_ms) + _INCIDENT_OFFSET_MS
    return Incident(
        airline="AAL",
        start_ms=begin,
        end_ms=begin + _INCIDENT_DURATION_MS,
        response_factor=6.0,
        rate_factor=3.0,
        description=(
            "AAL response times x6 (mean ~100 ms -> ~600 ms) and AAL record rate x3 for 2 "
            "hours on day 4, starting 3 days 16 hours after start_ms "
            "(2021-02-10T11:00Z-13:00Z with the default start)"
        ),
    )


#: The incident injected with the default ``start_ms`` (2021-02-10T11:00Z to 13:00Z, AAL).
INCIDENT: Incident = incident_window(FAREQUOTE_START_MS)


class RecordBatch(NamedTuple):
    """A block of consecutive records as numpy columns (all three of equal length).

    Attributes
    ----------
    time_ms : numpy.ndarray
        int64 epoch milliseconds, ascending.
    airline_code : numpy.ndarray
        uint8 index into :data:`AIRLINES`.
    responsetime : numpy.ndarray
        float64 response times, already rounded to 4 decimals (the precision the writers
        emit, so values read back from a file equal the generated ones).
    """

    time_ms: np.ndarray
    airline_code: np.ndarray
    responsetime: np.ndarray


def _daily_rate_factor(time_ms: np.ndarray) -> np.ndarray:
    # The real file is busiest around 06:00 UTC and quietest around 18:00 UTC, a ±14 % swing.
    hour = (time_ms % _MS_PER_DAY) / _MS_PER_HOUR
    return 1.0 + 0.14 * np.cos(2.0 * math.pi * (hour - 6.0) / 24.0)


def _daily_response_factor(time_ms: np.ndarray) -> np.ndarray:
    # Slower searches when the site is busy: a mild ±5 % swing in phase with the rate.
    hour = (time_ms % _MS_PER_DAY) / _MS_PER_HOUR
    return 1.0 + 0.05 * np.cos(2.0 * math.pi * (hour - 6.0) / 24.0)


def generate_batches(
    *,
    seed: int = 42,
    days: float = 5,
    start_ms: int = FAREQUOTE_START_MS,
    scale: float = 1.0,
    incident: bool = True,
) -> Iterator[RecordBatch]:
    """Generate farequote-shaped records as numpy column batches, in ascending time order.

    This is the fast form of :func:`generate_records`: same parameters, same records.

    Parameters
    ----------
    seed : int
        Seed of the numpy random generator; the output is a pure function of all arguments.
    days : float
        Length of the generated period. Whole minutes are generated.
    start_ms : int
        Start of the period, epoch milliseconds (non-negative).
    scale : float
        Multiplier of every airline's record rate: ``scale=10`` gives about 863k records over
        5 days (about 70 MB of NDJSON).
    incident : bool
        Inject :func:`incident_window` ``(start_ms)`` if the period covers it.

    Yields
    ------
    RecordBatch
        Consecutive batches of up to about 65k records (the batch size depends only on the
        arguments, so the output is deterministic).
    """
    if start_ms < 0:
        raise ValueError("start_ms must be non-negative")
    if days <= 0 or scale <= 0:
        raise ValueError("days and scale must be positive")
    rng = np.random.default_rng(seed)
    n_airlines = len(AIRLINE_PROFILES)
    per_minute = (
        np.array([p.records_per_5_days for p in AIRLINE_PROFILES], dtype=np.float64)
        * scale
        / (5 * 24 * 60)
    )
    means = np.array([p.mean_ms for p in AIRLINE_PROFILES])
    stds = np.array([p.std_ms for p in AIRLINE_PROFILES])
    # A floor keeps far-tail normal draws positive, as response times are.
    floors = means * 0.1

    spike = incident_window(start_ms) if incident else None
    spike_code = AIRLINES.index(spike.airline) if spike else -1

    total_minutes = round(days * 24 * 60)
    # Aim for ~65k records per batch: big enough that numpy overheads vanish, small enough
    # that writing a 1 GB file stays in a few tens of MB of memory.
    chunk_minutes = int(min(max(65_536 / per_minute.sum(), 1), 24 * 60))

    for first_minute in range(0, total_minutes, chunk_minutes):
        n_minutes = min(chunk_minutes, total_minutes - first_minute)
        minute_start = start_ms + (first_minute + np.arange(n_minutes, dtype=np.int64)) * (
            _MS_PER_MINUTE
        )
        rates = np.outer(_daily_rate_factor(minute_start + _MS_PER_MINUTE // 2), per_minute)
        if spike is not None:
            in_spike = (minute_start >= spike.start_ms) & (minute_start < spike.end_ms)
            rates[in_spike, spike_code] *= spike.rate_factor
        counts = rng.poisson(rates).ravel()  # row-major: minute, then airline
        total = int(counts.sum())
        codes = np.repeat(np.tile(np.arange(n_airlines, dtype=np.uint8), n_minutes), counts)
        times = np.repeat(np.repeat(minute_start, n_airlines), counts)
        times += rng.integers(0, _MS_PER_MINUTE, size=total, dtype=np.int64)
        noise = rng.standard_normal(total)

        # Stable sort: equal timestamps keep the airline order, so the output is reproducible.
        order = np.argsort(times, kind="stable")
        times = times[order]
        codes = codes[order]
        noise = noise[order]

        response = (means[codes] + stds[codes] * noise) * _daily_response_factor(times)
        response = np.maximum(response, floors[codes])
        if spike is not None:
            hit = (codes == spike_code) & (times >= spike.start_ms) & (times < spike.end_ms)
            response[hit] *= spike.response_factor
        yield RecordBatch(times, codes, np.round(response, 4))


def generate_records(
    *,
    seed: int = 42,
    days: float = 5,
    start_ms: int = FAREQUOTE_START_MS,
    scale: float = 1.0,
    incident: bool = True,
) -> Iterator[tuple[int, str, float]]:
    """Generate farequote-shaped records in ascending time order.

    Parameters are those of :func:`generate_batches`.

    Yields
    ------
    tuple of (int, str, float)
        ``(time_ms, airline, responsetime)``: epoch milliseconds, airline code, response
        time in milliseconds rounded to 4 decimals.

    Examples
    --------
    >>> from adjobs.datagen import generate_records, write_ndjson
    >>> records = list(generate_records(days=1))
    >>> write_ndjson("farequote.ndjson", records)  # doctest: +SKIP
    """
    for batch in generate_batches(
        seed=seed, days=days, start_ms=start_ms, scale=scale, incident=incident
    ):
        names = [AIRLINES[c] for c in batch.airline_code.tolist()]
        yield from zip(batch.time_ms.tolist(), names, batch.responsetime.tolist())


# --- writers ---------------------------------------------------------------------------------

_AIRLINE_BYTES = np.frombuffer("".join(AIRLINES).encode("ascii"), dtype=np.uint8).reshape(
    len(AIRLINES), 3
)
# Zero bytes mark padding in the assembled byte matrix; they never occur in our output.
_PAD = 0
_ZERO = ord("0")
_TUPLE_BATCH = 65_536


def _as_batches(records: Iterable) -> Iterator[RecordBatch]:
    """Accept either RecordBatch objects or ``(time_ms, airline, responsetime)`` tuples."""
    iterator = iter(records)
    for first in iterator:
        if isinstance(first, RecordBatch):
            yield first
            yield from iterator
            return
        # Tuples: regroup into numpy batches so the writers have a single (vectorised) path.
        code_of = {name: i for i, name in enumerate(AIRLINES)}
        pending = [first]
        for item in iterator:
            pending.append(item)
            if len(pending) == _TUPLE_BATCH:
                yield _tuples_to_batch(pending, code_of)
                pending = []
        if pending:
            yield _tuples_to_batch(pending, code_of)
        return


def _tuples_to_batch(rows: list, code_of: dict[str, int]) -> RecordBatch:
    times, names, values = zip(*rows)
    try:
        codes = np.fromiter((code_of[n] for n in names), dtype=np.uint8, count=len(rows))
    except KeyError as exc:
        raise ValueError(f"unknown airline {exc.args[0]!r}; expected one of AIRLINES") from None
    return RecordBatch(
        np.asarray(times, dtype=np.int64), codes, np.asarray(values, dtype=np.float64)
    )


def _digits(values: np.ndarray, width: int, *, keep_leading_zeros: bool = False) -> np.ndarray:
    """Right-aligned decimal digits of non-negative ints as an (n, width) uint8 matrix.

    Unless ``keep_leading_zeros``, leading zeros become padding bytes (except the last
    digit, so 0 is written as ``0``).
    """
    if values.size and (values.min() < 0 or values.max() >= 10**width):
        raise ValueError(f"value out of range for {width} digits")
    place = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    out = ((values[:, None] // place) % 10 + _ZERO).astype(np.uint8)
    if keep_leading_zeros:
        return out
    leading = values[:, None] < place
    leading[:, -1] = False
    out[leading] = _PAD
    return out


def _iso_bytes(time_ms: np.ndarray) -> np.ndarray:
    # numpy formats datetime64 in C; 'yyyy-mm-ddTHH:MM:SS.sss' is exactly 23 characters for
    # years 1000..9999.
    text = np.datetime_as_string(time_ms.astype("datetime64[ms]"), unit="ms")
    return text.astype("S23").view(np.uint8).reshape(len(time_ms), 23)


def _responsetime_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Fixed 4 decimals: integer arithmetic on ten-thousandths avoids float formatting per
    # value, and matches the rounding of RecordBatch.responsetime exactly.
    if values.size and values.min() < 0:
        raise ValueError("responsetime must be non-negative")
    units = np.rint(values * 10_000).astype(np.int64)
    return _digits(units // 10_000, 7), _digits(units % 10_000, 4, keep_leading_zeros=True)


def _assemble(n: int, parts: list) -> bytes:
    """Concatenate per-row byte pieces (constants or (n, k) uint8 matrices), drop padding."""
    widths = [len(p) if isinstance(p, bytes) else p.shape[1] for p in parts]
    matrix = np.empty((n, sum(widths)), dtype=np.uint8)
    column = 0
    for part, width in zip(parts, widths):
        if isinstance(part, bytes):
            matrix[:, column : column + width] = np.frombuffer(part, dtype=np.uint8)
        else:
            matrix[:, column : column + width] = part
        column += width
    return matrix[matrix != _PAD].tobytes()


def _check_time_format(time_format: str) -> None:
    if time_format not in ("iso", "epoch_ms"):
        raise ValueError(f"time_format must be 'iso' or 'epoch_ms', not {time_format!r}")


def _time_parts(time_ms: np.ndarray, time_format: str, quoted: bool) -> list:
    if time_format == "epoch_ms":
        return [_digits(time_ms, 15)]
    quote = b'"' if quoted else b""
    return [quote, _iso_bytes(time_ms), b"Z" + quote]


class _Sink:
    """Open a path for binary writing, or wrap a caller's binary or text file object."""

    def __init__(self, path_or_file: str | os.PathLike | IO) -> None:
        self._owned = isinstance(path_or_file, (str, os.PathLike))
        self._file = open(path_or_file, "wb") if self._owned else path_or_file  # noqa: SIM115
        self._text = isinstance(self._file, io.TextIOBase)
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._file.write(data.decode("ascii") if self._text else data)
        self.bytes_written += len(data)

    def close(self) -> None:
        if self._owned:
            self._file.close()


def write_ndjson(
    path_or_file: str | os.PathLike | IO,
    records: Iterable,
    *,
    time_format: str = "iso",
    time_field: str | None = None,
) -> int:
    """Write records as NDJSON, one compact JSON object per line.

    Parameters
    ----------
    path_or_file : str, os.PathLike or file object
        Destination. A path is created or truncated; a file object (binary or text) is
        written to and left open.
    records : iterable
        ``(time_ms, airline, responsetime)`` tuples, or :class:`RecordBatch` objects from
        :func:`generate_batches` (much faster for big files).
    time_format : {"iso", "epoch_ms"}
        ``"iso"`` writes ``"2021-02-11T18:59:54.000Z"`` (UTC, milliseconds), matching the
        Java pattern ``yyyy-MM-dd'T'HH:mm:ss.SSSX``; ``"epoch_ms"`` writes an integer.
    time_field : str, optional
        Name of the time key. Defaults to ``"@timestamp"`` for ISO and ``"time"`` for epoch
        milliseconds, as :func:`demo_job_config` expects.

    Returns
    -------
    int
        The number of records written.

    Examples
    --------
    A line looks like
    ``{"@timestamp":"2021-02-11T18:59:54.000Z","airline":"AAL","responsetime":132.2046}``.
    """
    _check_time_format(time_format)
    if time_field is None:
        time_field = "@timestamp" if time_format == "iso" else "time"
    if any(c in time_field for c in '"\\') or not time_field.isprintable():
        raise ValueError("time_field must not need JSON escaping")
    head = b'{"' + time_field.encode("utf-8") + b'":'
    sink = _Sink(path_or_file)
    written = 0
    try:
        for batch in _as_batches(records):
            n = len(batch.time_ms)
            if n == 0:
                continue
            whole, fraction = _responsetime_parts(batch.responsetime)
            parts = [head, *_time_parts(batch.time_ms, time_format, quoted=True)]
            parts += [b',"airline":"', _AIRLINE_BYTES[batch.airline_code], b'","responsetime":']
            parts += [whole, b".", fraction, b"}\n"]
            sink.write(_assemble(n, parts))
            written += n
    finally:
        sink.close()
    return written


def write_csv(
    path_or_file: str | os.PathLike | IO,
    records: Iterable,
    *,
    time_format: str = "iso",
) -> int:
    """Write records as CSV with the header ``time,airline,responsetime``.

    The time column is ISO 8601 UTC with milliseconds by default (``2021-02-11T18:59:54.000Z``,
    the same text as :func:`write_ndjson`, so one ``time_format`` pattern serves both), or
    integer epoch milliseconds. Lines end with ``\\n``; no field needs quoting.

    Parameters
    ----------
    path_or_file : str, os.PathLike or file object
        Destination, as for :func:`write_ndjson`.
    records : iterable
        Tuples or :class:`RecordBatch` objects, as for :func:`write_ndjson`.
    time_format : {"iso", "epoch_ms"}
        Format of the ``time`` column.

    Returns
    -------
    int
        The number of records written (the header is not counted).
    """
    _check_time_format(time_format)
    sink = _Sink(path_or_file)
    written = 0
    try:
        sink.write(b"time,airline,responsetime\n")
        for batch in _as_batches(records):
            n = len(batch.time_ms)
            if n == 0:
                continue
            whole, fraction = _responsetime_parts(batch.responsetime)
            parts = _time_parts(batch.time_ms, time_format, quoted=False)
            parts += [b",", _AIRLINE_BYTES[batch.airline_code], b",", whole, b".", fraction]
            parts.append(b"\n")
            sink.write(_assemble(n, parts))
            written += n
    finally:
        sink.close()
    return written


_JAVA_ISO_PATTERN = "yyyy-MM-dd'T'HH:mm:ss.SSSX"


def demo_job_config(
    *,
    time_format: str = "iso",
    delimited: bool = False,
    bucket_span: str = "15m",
) -> dict:
    """Return the ``put_job`` body of the farequote demo job for data from this module.

    The job is ``mean(responsetime)`` partitioned on ``airline``, with ``airline`` as
    influencer: the standard Elastic demo, in which the injected :data:`INCIDENT` shows up
    as an anomaly of AAL.

    Parameters
    ----------
    time_format : {"iso", "epoch_ms"}
        The ``time_format`` the data was written with.
    delimited : bool
        ``True`` for data written by :func:`write_csv` (``format: delimited``, comma
        delimiter, time column ``time``); ``False`` for :func:`write_ndjson` with its default
        ``time_field``.
    bucket_span : str
        The job's bucket span.

    Returns
    -------
    dict
        A fresh dict, safe to modify.
    """
    _check_time_format(time_format)
    java_format = _JAVA_ISO_PATTERN if time_format == "iso" else "epoch_ms"
    if delimited:
        data_description = {
            "format": "delimited",
            "field_delimiter": ",",
            "time_field": "time",
            "time_format": java_format,
        }
    else:
        data_description = {
            "time_field": "@timestamp" if time_format == "iso" else "time",
            "time_format": java_format,
        }
    return {
        "description": "farequote demo: mean response time per airline (adjobs.datagen)",
        "analysis_config": {
            "bucket_span": bucket_span,
            "detectors": [
                {
                    "function": "mean",
                    "field_name": "responsetime",
                    "partition_field_name": "airline",
                }
            ],
            "influencers": ["airline"],
        },
        "data_description": data_description,
    }
