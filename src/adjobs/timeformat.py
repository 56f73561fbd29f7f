"""Compile ``data_description.time_format`` once per job, then parse timestamps.

A job's ``time_format`` is ``epoch``, ``epoch_ms`` or a Java ``DateTimeFormatter``
pattern. :func:`compile_time_format` turns it into a :class:`TimeFormat` whose
``program`` (a flat native-endian int32 array) is what the C function
``adjobs_time_parse`` in ``ext/adjobs_time.h`` executes per record.
:meth:`TimeFormat.parse` is the pure-Python reference implementation of the same
semantics; the two must agree on every input.

What ES does, and what we reproduce
-----------------------------------
ES (``DateTimeFormatterTimestampConverter.ofPattern``) builds the parser as::

    new DateTimeFormatterBuilder().parseLenient().appendPattern(pattern)
        .parseDefaulting(ChronoField.YEAR_OF_ERA, <current year>).toFormatter()

then formats the instant 1970-01-01T00:00:00Z with it, parses that text back,
and rejects the pattern (``Invalid Time format string '<fmt>'``) if the parsed
result cannot give a ``LocalDateTime`` (or an ``Instant`` when the pattern has
an offset). We do exactly that with our own formatter and parser. Consequences:

* a date (year + month + day-of-month, or year + day-of-year) and an hour are
  required; minutes, seconds and fraction are optional but may not skip a
  level (``HH:ss`` is rejected, as in Java's ``resolveTimeLenient``);
* ``h``/``K`` need ``a``; a missing year defaults to the caller's year;
* ``u`` (proleptic year) is rejected: the defaulted ``YEAR_OF_ERA`` conflicts
  with it (ES's own test ``testOfPattern_GivenPatternIsUsingYearInsteadOfYearOfEra``).

Parsing follows ``parseLenient()`` (JDK 11+ ``DateTimeFormatterBuilder``):

* a numeric field that is not part of an adjacent run (``yyyyMMdd``) reads 1 to
  9 digits whatever its letter count: ``MM`` accepts ``7`` and ``007``;
  ``HH`` accepts ``1`` (ES test ``GivenTimestampRequiresLenientParsing``).
  Adjacent runs use Java's ``subsequentWidth`` algorithm: the fixed-width
  fields after the first are exactly their width.
* single-letter fields (``M``, ``d``, ``H``...) and ``y``/``yyyy`` accept a
  leading ``+``/``-``; two-letter fixed fields (``MM``, ``dd``...) and ``yy``
  do not.
* ``yy`` with exactly two digits means 2000..2099; with any other digit count
  the number is the year itself (``yy`` with ``2021`` is 2021, with ``5`` is 5).
* ``S``...``SSSSSSSSS`` all read 0 to 9 fraction digits (a decimal fraction of
  a second, truncated to milliseconds); the letter count does not matter.
* text fields (``MMM``, ``MMMM``, ``E``..``EEEE``, ``a``) accept the English
  full or short name, case-sensitively (ES never calls
  ``parseCaseInsensitive``), and fall back to a number (``MMM`` accepts ``02``).
* offsets (``X``, ``x``, ``Z``): the zero text (``Z`` for ``X``/``ZZZZZ``;
  ``+00``, ``+0000`` or ``+00:00`` for ``x``/``Z``) is matched first, as a
  prefix; otherwise ``+HH`` with optional minutes and seconds, colon-separated
  when the pattern has a colon (``XXX``, ``xxx``, ``XXXXX``...), else not.
  Hours above 23 are invalid, and offsets beyond +-18:00 are invalid.
* the whole text must be consumed; literals match byte for byte.

Resolution is Java's default ``ResolverStyle.SMART``: month 1-12, day 1-31
then clamped to the month's length (Feb 30 -> Feb 28/29, Apr 31 -> Apr 30),
day-of-year 1-365/366, hour 0-23 or ``24:00:00.0`` = next midnight, clock
hours ``k`` 0-24 (24 = 0 h) and ``h`` 0-12 (12 = 0 h), minutes and seconds 0-59
(a leap second ``60`` is invalid). A field given twice must have the same value
both times; a day-of-week (``E``) or ``a`` that contradicts the date or hour is
invalid. No offset in the pattern means UTC.

Decisions where ES is ambiguous or where we stop short
------------------------------------------------------
* Month, weekday and AM/PM names are the English (``en``) ones: ``Jan`` ..
  ``Dec``, ``January`` .., ``Mon`` .., ``Monday`` .., ``AM``/``PM``. ES uses the
  JVM's default locale, which is English on practically every deployment.
* Narrow forms (``MMMMM``, ``EEEEE``) are rejected at compile time, and single
  letter names such as ``J`` are not accepted in lenient parsing: the JDK
  resolves ``J`` to an arbitrary month (July) and we do not copy that.
* Pattern letters other than ``y M L d D E a H k K h m s S X x Z`` (for example
  ``G Q w Y e n A V z O``), optional sections ``[ ]``, padding ``p`` and the
  localized offset ``ZZZZ`` are not supported: compiling them raises
  :class:`TimeFormatError`. ES accepts some of them.
* Results must lie in years 1..9999 (-62135596800000 .. 253402300799999 ms),
  as for epoch values (decision D1); the year-of-era must also be >= 1 as in Java.

Epoch formats (decision D1)
---------------------------
The text, after removing leading and trailing bytes <= 0x20 (Java ``trim``),
must be ``[+-]? (digits [. digits*] | . digits) ([eE] [+-]? digits)?``. It is
read as the correctly rounded IEEE double (``float()``/``strtod``), truncated
toward zero (``epoch``: the seconds first, then times 1000) and must fall in
years 1..9999. ``NaN``, ``Infinity``, hex floats, ``d``/``f`` suffixes,
``1,000``, empty text and ``true`` are invalid. Decision of ours: a number text
longer than :data:`MAX_EPOCH_TEXT_LENGTH` bytes after trimming is invalid (the C
side parses a NUL-terminated copy in a fixed stack buffer).

Program layout
--------------
``program`` is native-endian int32: ``[PROGRAM_VERSION, kind, ops...]`` with
``kind`` one of :data:`KIND_EPOCH`, :data:`KIND_EPOCH_MS`, :data:`KIND_PATTERN`.
Only patterns have ops:

* ``OP_LITERAL n b1 .. bn``: the next n text bytes must equal b1..bn.
* ``OP_NUMBER field min max subsequent sign_allowed reduced_width reduced_base``:
  Java's lenient ``NumberPrinterParser`` with the effective widths already
  resolved; ``subsequent`` > 0 triggers the adjacent-value second pass;
  ``reduced_width`` > 0 (``yy``) maps exactly that many digits into the
  century starting at ``reduced_base``.
* ``OP_FRACTION``: 0..9 digits of fraction of a second (nano-of-second).
* ``OP_TEXT field``: English full or short name of ``field`` (month,
  day-of-week, AM/PM), else a 1..9 digit signed number.
* ``OP_OFFSET colon n b1 .. bn``: offset with zero text b1..bn.

Field numbers are the ``FIELD_*`` constants; they index the parser's value
slots on both sides.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_EPOCH_TEXT_LENGTH",
    "MAX_MS",
    "MIN_MS",
    "TimeFormat",
    "TimeFormatError",
    "compile_time_format",
]

PROGRAM_VERSION = 1

KIND_EPOCH = 0
KIND_EPOCH_MS = 1
KIND_PATTERN = 2

OP_LITERAL = 1
OP_NUMBER = 2
OP_FRACTION = 3
OP_TEXT = 4
OP_OFFSET = 5

FIELD_YEAR_OF_ERA = 0
FIELD_MONTH = 1
FIELD_DAY_OF_MONTH = 2
FIELD_DAY_OF_YEAR = 3
FIELD_DAY_OF_WEEK = 4
FIELD_HOUR_OF_DAY = 5
FIELD_CLOCK_HOUR_OF_DAY = 6
FIELD_HOUR_OF_AMPM = 7
FIELD_CLOCK_HOUR_OF_AMPM = 8
FIELD_AMPM = 9
FIELD_MINUTE = 10
FIELD_SECOND = 11
FIELD_NANO = 12
FIELD_OFFSET = 13
FIELD_COUNT = 14

MIN_MS = -62135596800000  # 0001-01-01T00:00:00.000Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
MAX_EPOCH_TEXT_LENGTH = 511

MONTH_NAMES_FULL = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
MONTH_NAMES_SHORT = tuple(name[:3] for name in MONTH_NAMES_FULL)
WEEKDAY_NAMES_FULL = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAY_NAMES_SHORT = tuple(name[:3] for name in WEEKDAY_NAMES_FULL)
AMPM_NAMES = ("AM", "PM")

# (names, value of the first name) for each text field; the full names are
# tried before the short ones, which is Java's longest-match-first order
# because a short name is never longer than a full name matching at the same place.
_TEXT_NAMES = {
    FIELD_MONTH: ((MONTH_NAMES_FULL, MONTH_NAMES_SHORT), 1),
    FIELD_DAY_OF_WEEK: ((WEEKDAY_NAMES_FULL, WEEKDAY_NAMES_SHORT), 1),
    FIELD_AMPM: ((AMPM_NAMES,), 0),
}

# Java SignStyle values that matter when parsing leniently.
_SIGN_NORMAL = "normal"
_SIGN_NOT_NEGATIVE = "not_negative"
_SIGN_EXCEEDS_PAD = "exceeds_pad"

# Numbers are capped while accumulating: any field value this large is invalid
# after resolution anyway, so failing early gives the same answer as Java.
_NUMBER_CAP = 10**15
_MAX_OFFSET_SECONDS = 18 * 3600
_SECONDS_PER_DAY = 86400

# Field values of 1970-01-01T00:00:00Z, used to format ES's validation sample.
_EPOCH_ZERO_VALUES = {
    FIELD_YEAR_OF_ERA: 1970,
    FIELD_MONTH: 1,
    FIELD_DAY_OF_MONTH: 1,
    FIELD_DAY_OF_YEAR: 1,
    FIELD_DAY_OF_WEEK: 4,
    FIELD_HOUR_OF_DAY: 0,
    FIELD_CLOCK_HOUR_OF_DAY: 24,
    FIELD_HOUR_OF_AMPM: 0,
    FIELD_CLOCK_HOUR_OF_AMPM: 12,
    FIELD_AMPM: 0,
    FIELD_MINUTE: 0,
    FIELD_SECOND: 0,
    FIELD_NANO: 0,
    FIELD_OFFSET: 0,
}

_EPOCH_TEXT = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class TimeFormatError(ValueError):
    """A ``time_format`` from which no full timestamp can be derived."""

    def __init__(self, fmt: str) -> None:
        super().__init__(f"Invalid Time format string '{fmt}'")
        self.time_format = fmt


class _InvalidDate(Exception):
    """Internal: the text is not a valid timestamp for the format."""


# --------------------------------------------------------------------------------------
# Pattern elements: what Java's DateTimeFormatterBuilder would hold
# --------------------------------------------------------------------------------------


@dataclass
class _Literal:
    data: bytes


@dataclass
class _Number:
    """Java ``NumberPrinterParser`` (``reduced`` = ``ReducedPrinterParser`` for ``yy``)."""

    field: int
    min_width: int
    max_width: int
    sign_style: str
    subsequent_width: int = 0
    reduced: bool = False

    def lenient_widths(self) -> tuple[int, int]:
        """Effective (min, max) digit counts in lenient mode, without the subsequent width."""
        if self.reduced:
            fixed = False  # ReducedPrinterParser is never fixed width when lenient
        else:
            fixed = self.subsequent_width == -1 or (
                self.subsequent_width > 0
                and self.min_width == self.max_width
                and self.sign_style == _SIGN_NOT_NEGATIVE
            )
        return (self.min_width, self.max_width) if fixed else (1, 9)

    def sign_allowed(self) -> bool:
        # SignStyle.parse(positive, strict=false, fixedWidth=min==max)
        if self.sign_style == _SIGN_NOT_NEGATIVE:
            return self.min_width != self.max_width
        return True


@dataclass
class _Fraction:
    """Java ``FractionPrinterParser`` for nano-of-second (``S``...).

    It takes part in adjacent value parsing like a fixed-width unsigned number,
    but when lenient it always reads 0 to 9 digits, whatever its width.
    """

    width: int
    subsequent_width: int = 0  # kept by the builder like Java's; unused when lenient
    sign_style: str = _SIGN_NOT_NEGATIVE

    @property
    def min_width(self) -> int:
        return self.width

    @property
    def max_width(self) -> int:
        return self.width


@dataclass
class _Text:
    field: int
    full: bool


@dataclass
class _Offset:
    colon: bool
    no_offset_text: str


# Java's offset patterns for each letter and count: (pattern has a colon, zero text).
_OFFSET_STYLES = {
    "X": {1: (False, "Z"), 2: (False, "Z"), 3: (True, "Z"), 4: (False, "Z"), 5: (True, "Z")},
    "x": {
        1: (False, "+00"),
        2: (False, "+0000"),
        3: (True, "+00:00"),
        4: (False, "+0000"),
        5: (True, "+00:00"),
    },
    "Z": {1: (False, "+0000"), 2: (False, "+0000"), 3: (False, "+0000"), 5: (True, "Z")},
}

_SIMPLE_NUMBER_FIELDS = {
    "d": FIELD_DAY_OF_MONTH,
    "H": FIELD_HOUR_OF_DAY,
    "k": FIELD_CLOCK_HOUR_OF_DAY,
    "K": FIELD_HOUR_OF_AMPM,
    "h": FIELD_CLOCK_HOUR_OF_AMPM,
    "m": FIELD_MINUTE,
    "s": FIELD_SECOND,
}


class _PatternBuilder:
    """Reproduces ``DateTimeFormatterBuilder.appendPattern`` for the letters we support."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.elements: list = []
        self.active_value_index = -1  # Java's valueParserIndex (adjacent value parsing)

    def fail(self) -> TimeFormatError:
        return TimeFormatError(self.fmt)

    def append_other(self, element) -> None:
        self.elements.append(element)
        self.active_value_index = -1

    def append_literal(self, data: bytes) -> None:
        # Consecutive literals are merged: matching them one after the other is the same.
        if self.elements and isinstance(self.elements[-1], _Literal):
            self.elements[-1].data += data
        else:
            self.elements.append(_Literal(data))
        self.active_value_index = -1

    def append_value(self, parser) -> None:
        # DateTimeFormatterBuilder.appendValue(NumberPrinterParser): a fixed-width
        # unsigned field right after another value joins its adjacent run.
        if self.active_value_index >= 0:
            base = self.elements[self.active_value_index]
            if parser.min_width == parser.max_width and parser.sign_style == _SIGN_NOT_NEGATIVE:
                base.subsequent_width += parser.max_width
                parser.subsequent_width = -1
                self.elements.append(parser)
            else:
                base.subsequent_width = -1
                self.elements.append(parser)
                self.active_value_index = len(self.elements) - 1
        else:
            self.elements.append(parser)
            self.active_value_index = len(self.elements) - 1

    def build(self) -> list:
        fmt = self.fmt
        pos = 0
        while pos < len(fmt):
            cur = fmt[pos]
            if ("A" <= cur <= "Z") or ("a" <= cur <= "z"):
                start = pos
                while pos < len(fmt) and fmt[pos] == cur:
                    pos += 1
                self.append_letter(cur, pos - start)
            elif cur == "'":
                pos = self.append_quoted(pos)
            elif cur in "[]{}#":
                raise self.fail()  # optional sections unsupported; {}# reserved in Java
            else:
                self.append_literal(cur.encode("utf-8", "surrogatepass"))
                pos += 1
        return self.elements

    def append_quoted(self, pos: int) -> int:
        fmt = self.fmt
        start = pos
        pos += 1
        while pos < len(fmt):
            if fmt[pos] == "'":
                if pos + 1 < len(fmt) and fmt[pos + 1] == "'":
                    pos += 2
                else:
                    break
            else:
                pos += 1
        if pos >= len(fmt):
            raise self.fail()  # incomplete string literal
        text = fmt[start + 1 : pos]
        self.append_literal(
            ("'" if text == "" else text.replace("''", "'")).encode("utf-8", "surrogatepass")
        )
        return pos + 1

    def append_letter(self, letter: str, count: int) -> None:
        if letter == "y":
            if count == 2:
                self.append_value(
                    _Number(FIELD_YEAR_OF_ERA, 2, 2, _SIGN_NOT_NEGATIVE, reduced=True)
                )
            elif count < 4:
                self.append_value(_Number(FIELD_YEAR_OF_ERA, count, 19, _SIGN_NORMAL))
            elif count <= 19:
                self.append_value(_Number(FIELD_YEAR_OF_ERA, count, 19, _SIGN_EXCEEDS_PAD))
            else:
                raise self.fail()
        elif letter in "ML":
            if count == 1:
                self.append_value(_Number(FIELD_MONTH, 1, 19, _SIGN_NORMAL))
            elif count == 2:
                self.append_value(_Number(FIELD_MONTH, 2, 2, _SIGN_NOT_NEGATIVE))
            elif count in (3, 4):
                self.append_other(_Text(FIELD_MONTH, full=count == 4))
            else:
                raise self.fail()  # narrow names (5) unsupported, more is invalid
        elif letter in _SIMPLE_NUMBER_FIELDS:
            field = _SIMPLE_NUMBER_FIELDS[letter]
            if count == 1:
                self.append_value(_Number(field, 1, 19, _SIGN_NORMAL))
            elif count == 2:
                self.append_value(_Number(field, 2, 2, _SIGN_NOT_NEGATIVE))
            else:
                raise self.fail()
        elif letter == "D":
            if count == 1:
                self.append_value(_Number(FIELD_DAY_OF_YEAR, 1, 19, _SIGN_NORMAL))
            elif count <= 3:
                self.append_value(_Number(FIELD_DAY_OF_YEAR, count, 3, _SIGN_NOT_NEGATIVE))
            else:
                raise self.fail()
        elif letter == "E":
            if count > 4:
                raise self.fail()
            self.append_other(_Text(FIELD_DAY_OF_WEEK, full=count == 4))
        elif letter == "a":
            if count != 1:
                raise self.fail()
            self.append_other(_Text(FIELD_AMPM, full=False))
        elif letter == "S":
            if count > 9:
                raise self.fail()
            self.append_value(_Fraction(count))
        elif letter in _OFFSET_STYLES:
            style = _OFFSET_STYLES[letter].get(count)
            if style is None:
                raise self.fail()
            self.append_other(_Offset(*style))
        else:
            # 'u' conflicts with the defaulted year-of-era (ES rejects it); other
            # letters are unknown to Java or not supported here.
            raise self.fail()


# --------------------------------------------------------------------------------------
# Calendar arithmetic (proleptic Gregorian, exact)
# --------------------------------------------------------------------------------------


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _month_length(year: int, month: int) -> int:
    if month == 2:
        return 29 if _is_leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 (Howard Hinnant's algorithm, same as the C side)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _date_field(field: int, year: int, month: int, day: int) -> int:
    if field == FIELD_YEAR_OF_ERA:
        return year
    if field == FIELD_MONTH:
        return month
    if field == FIELD_DAY_OF_MONTH:
        return day
    if field == FIELD_DAY_OF_YEAR:
        return _days_from_civil(year, month, day) - _days_from_civil(year, 1, 1) + 1
    # FIELD_DAY_OF_WEEK, ISO: Monday = 1; 1970-01-01 was a Thursday.
    return (_days_from_civil(year, month, day) + 3) % 7 + 1


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


class _Parsed:
    """Parsed field values; a field set twice must keep its value (Java setParsedField)."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}

    def set(self, field: int, value: int) -> None:
        old = self.values.get(field)
        if old is not None and old != value:
            raise _InvalidDate
        self.values[field] = value


def _parse_number(
    text: bytes,
    pos: int,
    parsed: _Parsed,
    field: int,
    min_width: int,
    max_width: int,
    subsequent_width: int,
    sign_allowed: bool,
    reduced_width: int = 0,
    reduced_base: int = 0,
) -> int:
    length = len(text)
    if pos == length:
        raise _InvalidDate
    negative = False
    if text[pos] in b"+-":
        if not sign_allowed:
            raise _InvalidDate
        negative = text[pos] == ord("-")
        pos += 1
    min_end = pos + min_width
    if min_end > length:
        raise _InvalidDate
    effective_max = max_width + subsequent_width
    start = pos
    if subsequent_width > 0:
        # Adjacent value parsing (Java's first pass): count the digits available,
        # then leave room for the fixed-width fields that follow.
        max_end = min(pos + effective_max, length)
        while pos < max_end and 48 <= text[pos] <= 57:
            pos += 1
        if pos < min_end:
            raise _InvalidDate
        effective_max = max(min_width, pos - start - subsequent_width)
        pos = start
    total = 0
    max_end = min(pos + effective_max, length)
    while pos < max_end:
        digit = text[pos] - 48
        if not 0 <= digit <= 9:
            if pos < min_end:
                raise _InvalidDate
            break
        pos += 1
        total = total * 10 + digit
        if total > _NUMBER_CAP:
            raise _InvalidDate
    value = -total if negative else total
    if reduced_width and pos - start == reduced_width and value >= 0:
        century = 10**reduced_width
        value += reduced_base - reduced_base % century
        if value < reduced_base:
            value += century
    parsed.set(field, value)
    return pos


def _parse_fraction(text: bytes, pos: int, parsed: _Parsed) -> int:
    if pos == len(text):
        return pos  # an optional field at the end of the text is simply absent
    end = min(pos + 9, len(text))
    start = pos
    total = 0
    while pos < end and 48 <= text[pos] <= 57:
        total = total * 10 + text[pos] - 48
        pos += 1
    parsed.set(FIELD_NANO, total * 10 ** (9 - (pos - start)))
    return pos


def _parse_text(text: bytes, pos: int, parsed: _Parsed, field: int) -> int:
    name_lists, first_value = _TEXT_NAMES[field]
    for names in name_lists:
        for index, name in enumerate(names):
            encoded = name.encode("ascii")
            if text.startswith(encoded, pos):
                parsed.set(field, first_value + index)
                return pos + len(encoded)
    return _parse_number(text, pos, parsed, field, 1, 9, 0, True)


def _two_digits(text: bytes, pos: int) -> int:
    """Value of two ASCII digits at pos, or -1 (Java OffsetIdPrinterParser.parseDigits)."""
    if pos + 2 > len(text):
        return -1
    high, low = text[pos] - 48, text[pos + 1] - 48
    if not (0 <= high <= 9 and 0 <= low <= 9):
        return -1
    value = high * 10 + low
    return value if value <= 59 else -1


def _parse_offset(text: bytes, pos: int, parsed: _Parsed, colon: bool, no_offset: bytes) -> int:
    if pos == len(text):
        raise _InvalidDate
    if text.startswith(no_offset, pos):
        parsed.set(FIELD_OFFSET, 0)
        return pos + len(no_offset)
    if text[pos] not in b"+-":
        raise _InvalidDate
    sign = -1 if text[pos] == ord("-") else 1
    pos += 1
    hours = _two_digits(text, pos)
    if hours < 0:
        raise _InvalidDate
    pos += 2
    minutes = seconds = 0
    # Lenient: minutes and then seconds are optional, each behind a colon if the pattern has one.
    for unit in range(2):
        sep = 1 if colon else 0
        if colon and not (pos < len(text) and text[pos] == ord(":")):
            break
        value = _two_digits(text, pos + sep)
        if value < 0:
            break
        pos += sep + 2
        if unit == 0:
            minutes = value
        else:
            seconds = value
    if hours > 23:
        raise _InvalidDate
    parsed.set(FIELD_OFFSET, sign * (hours * 3600 + minutes * 60 + seconds))
    return pos


def _resolve(parsed: _Parsed, default_year: int) -> int:
    """Java's SMART resolution of the parsed fields into epoch milliseconds."""
    values = dict(parsed.values)
    values.setdefault(FIELD_YEAR_OF_ERA, default_year)  # parseDefaulting(YEAR_OF_ERA, ...)

    # Date.
    year = values.pop(FIELD_YEAR_OF_ERA)
    if not 1 <= year <= 999_999_999:
        raise _InvalidDate
    if year > 10000:
        raise _InvalidDate  # beyond year 9999 even with an 18 h offset; avoids huge arithmetic
    if FIELD_MONTH in values and FIELD_DAY_OF_MONTH in values:
        month = values.pop(FIELD_MONTH)
        day = values.pop(FIELD_DAY_OF_MONTH)
        if not (1 <= month <= 12 and 1 <= day <= 31):
            raise _InvalidDate
        day = min(day, _month_length(year, month))
    elif FIELD_DAY_OF_YEAR in values:
        day_of_year = values.pop(FIELD_DAY_OF_YEAR)
        if not 1 <= day_of_year <= (366 if _is_leap(year) else 365):
            raise _InvalidDate
        month = 1
        while day_of_year > _month_length(year, month):
            day_of_year -= _month_length(year, month)
            month += 1
        day = day_of_year
    else:
        raise _InvalidDate  # no date: LocalDateTime.from fails

    # Time: fold the clock-hour and AM/PM fields into hour-of-day.
    def fold(source: int, target: int, value: int) -> None:
        values.pop(source)
        if values.setdefault(target, value) != value:
            raise _InvalidDate

    if FIELD_CLOCK_HOUR_OF_DAY in values:
        clock_hour = values[FIELD_CLOCK_HOUR_OF_DAY]
        if clock_hour != 0 and not 1 <= clock_hour <= 24:
            raise _InvalidDate
        fold(FIELD_CLOCK_HOUR_OF_DAY, FIELD_HOUR_OF_DAY, 0 if clock_hour == 24 else clock_hour)
    if FIELD_CLOCK_HOUR_OF_AMPM in values:
        clock_hour = values[FIELD_CLOCK_HOUR_OF_AMPM]
        if clock_hour != 0 and not 1 <= clock_hour <= 12:
            raise _InvalidDate
        fold(FIELD_CLOCK_HOUR_OF_AMPM, FIELD_HOUR_OF_AMPM, 0 if clock_hour == 12 else clock_hour)
    if FIELD_AMPM in values and FIELD_HOUR_OF_AMPM in values:
        ampm = values.pop(FIELD_AMPM)
        hour_of_ampm = values[FIELD_HOUR_OF_AMPM]
        if not (0 <= ampm <= 1 and 0 <= hour_of_ampm <= 11):
            raise _InvalidDate
        fold(FIELD_HOUR_OF_AMPM, FIELD_HOUR_OF_DAY, ampm * 12 + hour_of_ampm)

    if FIELD_HOUR_OF_DAY not in values:
        raise _InvalidDate  # no time
    hour = values.pop(FIELD_HOUR_OF_DAY)
    minute = values.pop(FIELD_MINUTE, None)
    second = values.pop(FIELD_SECOND, None)
    nano = values.pop(FIELD_NANO, None)
    if (minute is None and (second is not None or nano is not None)) or (
        minute is not None and second is None and nano is not None
    ):
        raise _InvalidDate  # Java's resolveTimeLenient cannot build a time
    minute, second, nano = minute or 0, second or 0, nano or 0
    if not 0 <= minute <= 59:
        raise _InvalidDate
    extra_days = 0
    if hour == 24 and minute == 0 and second == 0 and nano == 0:
        hour, extra_days = 0, 1  # SMART: 24:00 is the next day's midnight
    elif not (0 <= hour <= 23 and 0 <= second <= 59):
        raise _InvalidDate

    # Cross-check what is left against the resolved date and time.
    for field, value in values.items():
        if field == FIELD_OFFSET:
            continue
        if field == FIELD_AMPM:
            expected = hour // 12
        elif field == FIELD_HOUR_OF_AMPM:
            expected = hour % 12
        else:
            expected = _date_field(field, year, month, day)
        if value != expected:
            raise _InvalidDate

    offset = values.get(FIELD_OFFSET, 0)
    if abs(offset) > _MAX_OFFSET_SECONDS:
        raise _InvalidDate
    days = _days_from_civil(year, month, day) + extra_days
    seconds = days * _SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset
    millis = seconds * 1000 + nano // 1_000_000
    if not MIN_MS <= millis <= MAX_MS:
        raise _InvalidDate
    return millis


def _parse_epoch(text: bytes, seconds: bool) -> int | None:
    start, end = 0, len(text)
    while start < end and text[start] <= 0x20:
        start += 1
    while end > start and text[end - 1] <= 0x20:
        end -= 1
    number = text[start:end]
    if len(number) > MAX_EPOCH_TEXT_LENGTH or not _EPOCH_TEXT.fullmatch(number):
        return None
    value = float(number)
    if not math.isfinite(value):
        return None
    whole = math.trunc(value)
    millis = whole * 1000 if seconds else whole
    return millis if MIN_MS <= millis <= MAX_MS else None


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


class TimeFormat:
    """A compiled ``time_format``: its program for the C parser and a reference parser.

    Attributes
    ----------
    pattern : str
        The ``time_format`` text as given.
    kind : str
        ``'epoch'``, ``'epoch_ms'`` or ``'pattern'``.
    program : bytes
        Native-endian int32 array executed by ``adjobs_time_parse``.
    """

    __slots__ = ("_elements", "kind", "pattern", "program")

    def __init__(self, pattern: str, kind: str, program: bytes, elements: list) -> None:
        self.pattern = pattern
        self.kind = kind
        self.program = program
        self._elements = elements

    def __repr__(self) -> str:
        return f"TimeFormat({self.pattern!r})"

    def parse(self, text: str | bytes, default_year: int) -> int | None:
        """Parse one timestamp (reference implementation, pure Python).

        Parameters
        ----------
        text : str or bytes
            The time field's value; ``str`` is encoded as UTF-8 first, so both
            forms give the same answer as the C parser given the UTF-8 bytes.
        default_year : int
            Year used when the pattern has none (callers pass the current UTC year).

        Returns
        -------
        int or None
            Epoch milliseconds, or None if the text is an invalid date.
        """
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        if self.kind == "epoch":
            return _parse_epoch(data, seconds=True)
        if self.kind == "epoch_ms":
            return _parse_epoch(data, seconds=False)
        try:
            return _resolve(_parse_elements(self._elements, data), default_year)
        except _InvalidDate:
            return None


def _parse_elements(elements: list, text: bytes) -> _Parsed:
    parsed = _Parsed()
    pos = 0
    for element in elements:
        if isinstance(element, _Literal):
            if not text.startswith(element.data, pos):
                raise _InvalidDate
            pos += len(element.data)
        elif isinstance(element, _Number):
            min_width, max_width = element.lenient_widths()
            pos = _parse_number(
                text,
                pos,
                parsed,
                element.field,
                min_width,
                max_width,
                max(element.subsequent_width, 0),
                element.sign_allowed(),
                element.min_width if element.reduced else 0,
                2000 if element.reduced else 0,
            )
        elif isinstance(element, _Fraction):
            pos = _parse_fraction(text, pos, parsed)
        elif isinstance(element, _Text):
            pos = _parse_text(text, pos, parsed, element.field)
        else:
            pos = _parse_offset(
                text, pos, parsed, element.colon, element.no_offset_text.encode("ascii")
            )
    if pos != len(text):
        raise _InvalidDate  # unparsed text found
    return parsed


def _format_epoch_zero(elements: list) -> bytes:
    """Format 1970-01-01T00:00:00Z the way Java would with these elements."""
    out = bytearray()
    for element in elements:
        if isinstance(element, _Literal):
            out += element.data
        elif isinstance(element, _Number):
            value = _EPOCH_ZERO_VALUES[element.field]
            if element.reduced:
                value %= 100
            digits = str(value).rjust(element.min_width, "0")
            if len(digits) > element.max_width:
                raise ValueError("value exceeds the maximum print width")
            out += digits.encode("ascii")
        elif isinstance(element, _Fraction):
            out += b"0" * element.width
        elif isinstance(element, _Text):
            name_lists, first_value = _TEXT_NAMES[element.field]
            names = name_lists[0] if element.full else name_lists[-1]
            out += names[_EPOCH_ZERO_VALUES[element.field] - first_value].encode("ascii")
        else:
            out += element.no_offset_text.encode("ascii")
    return bytes(out)


def _encode_program(kind_code: int, elements: list) -> bytes:
    words = [PROGRAM_VERSION, kind_code]
    for element in elements:
        if isinstance(element, _Literal):
            words += [OP_LITERAL, len(element.data), *element.data]
        elif isinstance(element, _Number):
            min_width, max_width = element.lenient_widths()
            words += [
                OP_NUMBER,
                element.field,
                min_width,
                max_width,
                max(element.subsequent_width, 0),
                int(element.sign_allowed()),
                element.min_width if element.reduced else 0,
                2000 if element.reduced else 0,
            ]
        elif isinstance(element, _Fraction):
            words.append(OP_FRACTION)
        elif isinstance(element, _Text):
            words += [OP_TEXT, element.field]
        else:
            zero_text = element.no_offset_text.encode("ascii")
            words += [OP_OFFSET, int(element.colon), len(zero_text), *zero_text]
    return struct.pack(f"={len(words)}i", *words)  # native byte order, exactly 4 bytes each


def compile_time_format(fmt: str) -> TimeFormat:
    """Compile a ``data_description.time_format`` once per job.

    Parameters
    ----------
    fmt : str
        ``'epoch'``, ``'epoch_ms'`` or a Java ``DateTimeFormatter`` pattern.

    Returns
    -------
    TimeFormat
        The compiled format; ``program`` feeds the C parser, ``parse`` is the
        pure-Python reference.

    Raises
    ------
    TimeFormatError
        If the pattern is malformed, unsupported, or cannot produce a full
        timestamp. ES's test: it formats 1970-01-01T00:00:00Z with the pattern
        and the result must parse back into a date and a time.
    """
    if fmt == "epoch":
        return TimeFormat(fmt, "epoch", _encode_program(KIND_EPOCH, []), [])
    if fmt == "epoch_ms":
        return TimeFormat(fmt, "epoch_ms", _encode_program(KIND_EPOCH_MS, []), [])
    elements = _PatternBuilder(fmt).build()
    try:
        sample = _format_epoch_zero(elements)
        _resolve(_parse_elements(elements, sample), 1970)
    except (_InvalidDate, ValueError):
        raise TimeFormatError(fmt) from None
    return TimeFormat(fmt, "pattern", _encode_program(KIND_PATTERN, elements), elements)
