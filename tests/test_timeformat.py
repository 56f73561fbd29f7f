"""Tests for adjobs.timeformat (the Python reference) and its C twin ext/adjobs_time.h."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adjobs.timeformat import (
    KIND_EPOCH,
    KIND_EPOCH_MS,
    KIND_PATTERN,
    MAX_MS,
    MIN_MS,
    OP_FRACTION,
    OP_LITERAL,
    OP_NUMBER,
    OP_OFFSET,
    OP_TEXT,
    PROGRAM_VERSION,
    TimeFormat,
    TimeFormatError,
    compile_time_format,
)

CORPUS = json.loads(
    (Path(__file__).parent / "data" / "timestamps.json").read_text(encoding="utf-8")
)
CORPUS_DEFAULT_YEAR = CORPUS["default_year"]
EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, computed by the standard library."""
    return (moment - EPOCH_ZERO) // timedelta(milliseconds=1)


def utc_ms(*args: int) -> int:
    return epoch_ms(datetime(*args, tzinfo=UTC))


def program_words(time_format: TimeFormat) -> list[int]:
    data = time_format.program
    return list(struct.unpack(f"={len(data) // 4}i", data))


def corpus_id(case: dict) -> str:
    return f"{case['format']}|{case['text'][:40]!r}"


# --------------------------------------------------------------------------------------
# Unit tests: real expected values
# --------------------------------------------------------------------------------------


def test_es_documentation_example():
    time_format = compile_time_format("yyyy-MM-dd HH:mm:ssXXX")
    assert time_format.parse("2014-01-01 00:00:00Z", 2024) == 1388534400000


def test_farequote_format():
    time_format = compile_time_format("MM-dd-yyyy HH:mm:ss.SSS")
    assert time_format.parse("02-11-2021 18:59:54.000", 2024) == 1613069994000
    assert time_format.parse("02-11-2021 18:59:54.123", 2024) == 1613069994123


def test_nab_format():
    time_format = compile_time_format("yyyy-MM-dd HH:mm:ss")
    assert time_format.parse("2014-04-10 00:02:00", 2024) == utc_ms(2014, 4, 10, 0, 2)
    assert time_format.parse("2014-04-10T00:02:00", 2024) is None


def test_iso_with_single_letter_offset():
    time_format = compile_time_format("yyyy-MM-dd'T'HH:mm:ssX")
    assert time_format.parse("2014-06-23T00:00:00Z", 2024) == 1403481600000
    assert time_format.parse("2014-06-23T05:30:00+0530", 2024) == 1403481600000
    assert time_format.parse("2014-06-23T00:00:00-01", 2024) == 1403481600000 + 3_600_000


def test_es_converter_tests():
    """The cases of ES's DateTimeFormatterTimestampConverterTests."""
    with_zone = compile_time_format("yyyy-MM-dd HH:mm:ss XXX")
    assert with_zone.parse("2014-03-25 01:30:20 +02:00", 2024) == 1395703820000
    assert with_zone.parse("2014-03-25 1:30:20 +02:00", 2024) == 1395703820000  # lenient
    millis = compile_time_format("yyyy-MM-dd HH:mm:ss.SSS XXX")
    assert millis.parse("2014-03-25 01:30:20.542 +02:00", 2024) == 1395703820542
    assert compile_time_format("y-M-d HH").parse("2014-03-22 01", 2024) == utc_ms(2014, 3, 22, 1)
    no_year = compile_time_format("MM dd HH:mm:ss")
    assert no_year.parse("08 14 01:30:20", 2031) == utc_ms(2031, 8, 14, 1, 30, 20)
    assert compile_time_format("yyyy-MM-dd HH:mm:ss").parse("14:00:22", 2024) is None
    assert compile_time_format("yyyy-MM-dd HH:mm:ss.SSS").parse("2015-01-01 14:00:22", 2024) is None


@pytest.mark.parametrize("fmt", ["y", "y-M-d", "HH:mm:ss", "uuuu-MM-dd HH:mm:ss"])
def test_es_rejected_patterns(fmt):
    with pytest.raises(TimeFormatError) as raised:
        compile_time_format(fmt)
    assert str(raised.value) == f"Invalid Time format string '{fmt}'"
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1403481600", 1403481600000),
        ("1403481600.999", 1403481600000),
        ("-1.5", -1000),
        ("1.4034816E9", 1403481600000),
        (" 1403481600 ", 1403481600000),
        ("+1403481600", 1403481600000),
        ("5.", 5000),
        (".5", 0),
        ("NaN", None),
        ("Infinity", None),
        ("0x10", None),
        ("0x1p3", None),
        ("1d", None),
        ("1f", None),
        ("1,000", None),
        ("", None),
        ("true", None),
        ("1e19", None),
        ("253402300799", 253402300799000),
        ("253402300800", None),
        ("-62135596800", MIN_MS),
        ("-62135596801", None),
    ],
)
def test_epoch_decision_d1(text, expected):
    assert compile_time_format("epoch").parse(text, 2024) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1403481600123", 1403481600123),
        ("1403481600123.9", 1403481600123),
        ("-1.9", -1),
        ("1.403481600123E12", 1403481600123),
        (str(MAX_MS), MAX_MS),
        (str(MAX_MS + 1), None),
        (str(MIN_MS), MIN_MS),
        (str(MIN_MS - 1), None),
        ("NaN", None),
    ],
)
def test_epoch_ms_decision_d1(text, expected):
    assert compile_time_format("epoch_ms").parse(text, 2024) == expected


def test_program_layout():
    assert program_words(compile_time_format("epoch")) == [PROGRAM_VERSION, KIND_EPOCH]
    assert program_words(compile_time_format("epoch_ms")) == [PROGRAM_VERSION, KIND_EPOCH_MS]
    year, month, day, hour, minute, second = 0, 1, 2, 5, 10, 11
    lenient_signed = [1, 9, 0, 1, 0, 0]  # min, max, subsequent, sign_allowed, reduced width/base
    lenient_unsigned = [1, 9, 0, 0, 0, 0]
    dash, colon = [OP_LITERAL, 1, ord("-")], [OP_LITERAL, 1, ord(":")]
    assert program_words(compile_time_format("yyyy-MM-dd'T'HH:mm:ss.SSSXXX")) == [
        PROGRAM_VERSION, KIND_PATTERN,
        OP_NUMBER, year, *lenient_signed, *dash,
        OP_NUMBER, month, *lenient_unsigned, *dash,
        OP_NUMBER, day, *lenient_unsigned, OP_LITERAL, 1, ord("T"),
        OP_NUMBER, hour, *lenient_unsigned, *colon,
        OP_NUMBER, minute, *lenient_unsigned, *colon,
        OP_NUMBER, second, *lenient_unsigned, OP_LITERAL, 1, ord("."),
        OP_FRACTION,
        OP_OFFSET, 1, 1, ord("Z"),
    ]  # fmt: skip


def test_program_adjacent_run_and_reduced_year():
    # yy leads a run of fixed-width fields: it reserves their 6 digits, they are exactly 2 wide.
    assert program_words(compile_time_format("yyMMddHH")) == [
        PROGRAM_VERSION, KIND_PATTERN,
        OP_NUMBER, 0, 1, 9, 6, 0, 2, 2000,
        OP_NUMBER, 1, 2, 2, 0, 0, 0, 0,
        OP_NUMBER, 2, 2, 2, 0, 0, 0, 0,
        OP_NUMBER, 5, 2, 2, 0, 0, 0, 0,
    ]  # fmt: skip
    assert program_words(compile_time_format("MMM d yyyy h a"))[2:] == [
        OP_TEXT, 1,
        OP_LITERAL, 1, ord(" "), OP_NUMBER, 2, 1, 9, 0, 1, 0, 0,
        OP_LITERAL, 1, ord(" "), OP_NUMBER, 0, 1, 9, 0, 1, 0, 0,
        OP_LITERAL, 1, ord(" "), OP_NUMBER, 8, 1, 9, 0, 1, 0, 0,
        OP_LITERAL, 1, ord(" "), OP_TEXT, 9,
    ]  # fmt: skip


def test_kinds():
    assert compile_time_format("epoch").kind == "epoch"
    assert compile_time_format("epoch_ms").kind == "epoch_ms"
    assert compile_time_format("yyyy-MM-dd HH").kind == "pattern"


def test_parse_accepts_bytes_and_str_alike():
    time_format = compile_time_format("yyyy\u5e74MM\u6708dd\u65e5 HH:mm")
    text = "2021\u5e7402\u670811\u65e5 18:59"
    assert (
        time_format.parse(text, 2024)
        == time_format.parse(text.encode(), 2024)
        == utc_ms(2021, 2, 11, 18, 59)
    )


# --------------------------------------------------------------------------------------
# Edge-case corpus (tests/data/timestamps.json), Python reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS["cases"], ids=corpus_id)
def test_corpus_reference(case):
    time_format = compile_time_format(case["format"])
    assert (
        time_format.parse(case["text"], case.get("default_year", CORPUS_DEFAULT_YEAR))
        == case["expected"]
    )


@pytest.mark.parametrize("case", CORPUS["invalid_formats"], ids=lambda case: case["format"])
def test_corpus_invalid_formats(case):
    with pytest.raises(TimeFormatError, match="^Invalid Time format string '.*'$") as raised:
        compile_time_format(case["format"])
    assert str(raised.value) == f"Invalid Time format string '{case['format']}'"


# --------------------------------------------------------------------------------------
# Property tests of the reference against the standard library
# --------------------------------------------------------------------------------------

MOMENTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
OFFSET_MINUTES = st.integers(min_value=-18 * 60, max_value=18 * 60)


def format_offset(minutes: int, colon: bool) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{rest:02d}"


# Each entry: pattern, function formatting (naive moment, offset minutes) like Java
# would, and whether the pattern carries the offset (else the text is UTC).
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
FORMATTERS = {
    "yyyy-MM-dd HH:mm:ss": (lambda m, o: m.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0"), False),
    "yyyy-MM-dd'T'HH:mm:ss.SSSXXX": (
        lambda m, o: (
            f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
            f".{m.microsecond // 1000:03d}{format_offset(o, True)}"
        ),
        True,
    ),
    "yyyyMMddHHmmssSSS": (
        lambda m, o: (
            f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}"
            f"{m.microsecond // 1000:03d}"
        ),
        False,
    ),
    "EEE, dd MMM yyyy HH:mm:ss Z": (
        lambda m, o: (
            f"{DAYS[m.weekday()]}, {m.day:02d} {MONTHS[m.month - 1]} {m.year:04d} "
            f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} {format_offset(o, False)}"
        ),
        True,
    ),
    "M/d/yyyy h:mm:ss a": (
        lambda m, o: (
            f"{m.month}/{m.day}/{m.year} {(m.hour % 12) or 12}:{m.minute:02d}:{m.second:02d} "
            f"{'PM' if m.hour >= 12 else 'AM'}"
        ),
        False,
    ),
    "yyyy-DDD kk:mm": (
        lambda m, o: f"{m.year:04d}-{m.timetuple().tm_yday:03d} {m.hour or 24:02d}:{m.minute:02d}",
        False,
    ),
}


def expected_ms(pattern: str, moment: datetime, offset_minutes: int) -> int:
    """What the text produced by FORMATTERS[pattern] means, by the standard library."""
    has_offset = FORMATTERS[pattern][1]
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if "ss" not in pattern:
        truncated = truncated.replace(second=0, microsecond=0)
    elif "SSS" not in pattern:
        truncated = truncated.replace(microsecond=0)
    zone = timezone(timedelta(minutes=offset_minutes if has_offset else 0))
    return epoch_ms(truncated.replace(tzinfo=zone))


def formatted(pattern: str, moment: datetime, offset_minutes: int) -> str:
    return FORMATTERS[pattern][0](moment, offset_minutes)


@given(st.sampled_from(sorted(FORMATTERS)), MOMENTS, OFFSET_MINUTES)
def test_reference_round_trip(pattern, moment, offset_minutes):
    text = formatted(pattern, moment, offset_minutes)
    expected = expected_ms(pattern, moment, offset_minutes)
    assume(MIN_MS <= expected <= MAX_MS)
    assert compile_time_format(pattern).parse(text, 2024) == expected


@given(st.integers(min_value=MIN_MS // 1000, max_value=MAX_MS // 1000))
def test_reference_epoch_integers(seconds):
    assert compile_time_format("epoch").parse(str(seconds), 2024) == seconds * 1000
    assert compile_time_format("epoch_ms").parse(str(seconds), 2024) == seconds


# --------------------------------------------------------------------------------------
# Parity: the C parser (ext/adjobs_time.h through adjobs._core.parse_time) must give
# exactly the reference's answer.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parse_time():
    from adjobs import _core

    return _core.parse_time


def c_parse(
    parse_time, time_format: TimeFormat, text: str | bytes, default_year: int
) -> int | None:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return parse_time(time_format.program, data, default_year)


@pytest.mark.parametrize("case", CORPUS["cases"], ids=corpus_id)
def test_corpus_native(parse_time, case):
    time_format = compile_time_format(case["format"])
    default_year = case.get("default_year", CORPUS_DEFAULT_YEAR)
    assert c_parse(parse_time, time_format, case["text"], default_year) == case["expected"]


# Numbers in the epoch grammar, near it, and plain junk.
DIGITS = st.text(alphabet="0123456789", max_size=25)
GRAMMAR_NUMBERS = st.builds(
    lambda pad1, sign, whole, dot, fraction, exponent, pad2: (
        f"{pad1}{sign}{whole}{dot}{fraction}{exponent}{pad2}"
    ),
    st.sampled_from(["", " ", "\t", "\n "]),
    st.sampled_from(["", "+", "-"]),
    DIGITS,
    st.sampled_from(["", "."]),
    DIGITS,
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, s, d: f"{e}{s}{d}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            DIGITS,
        ),
    ),
    st.sampled_from(["", " ", "\r\n"]),
)
NUMERIC_TEXT = st.one_of(
    GRAMMAR_NUMBERS,
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e15, max_value=1e15).map(lambda value: f"{value:.6e}"),
    st.text(alphabet="0123456789+-.eE xXpPdDfFNaInity,_\x00", max_size=30),
)


@given(st.sampled_from(["epoch", "epoch_ms"]), NUMERIC_TEXT)
@settings(max_examples=500)
def test_epoch_parity(parse_time, fmt, text):
    time_format = compile_time_format(fmt)
    assert c_parse(parse_time, time_format, text, 2024) == time_format.parse(text, 2024)


@given(st.sampled_from(sorted(FORMATTERS)), MOMENTS, OFFSET_MINUTES)
@settings(max_examples=300)
def test_formatted_moment_parity(parse_time, pattern, moment, offset_minutes):
    time_format = compile_time_format(pattern)
    text = formatted(pattern, moment, offset_minutes)
    expected = time_format.parse(text, 2024)
    assert c_parse(parse_time, time_format, text, 2024) == expected
    if MIN_MS <= expected_ms(pattern, moment, offset_minutes) <= MAX_MS:
        assert expected == expected_ms(pattern, moment, offset_minutes)


PARITY_PATTERNS = sorted(
    set(FORMATTERS)
    | {case["format"] for case in CORPUS["cases"] if case["format"] not in ("epoch", "epoch_ms")}
)


@st.composite
def mutated_timestamps(draw):
    """A corpus or formatted timestamp with a few characters inserted, deleted or replaced."""
    case = draw(st.sampled_from([c for c in CORPUS["cases"] if c["format"] in PARITY_PATTERNS]))
    text = list(case["text"])
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        replacement = draw(st.sampled_from(list("0123456789+-:.TZ aAPM'") + ["", "Feb", "\u5e74"]))
        if draw(st.booleans()) and position < len(text):
            text[position] = replacement
        else:
            text.insert(position, replacement)
    return case["format"], "".join(text)


@given(mutated_timestamps(), st.sampled_from([2021, 2024, 1, 9999]))
@settings(max_examples=1000)
def test_mutated_timestamp_parity(parse_time, pattern_and_text, default_year):
    pattern, text = pattern_and_text
    time_format = compile_time_format(pattern)
    assert c_parse(parse_time, time_format, text, default_year) == time_format.parse(
        text, default_year
    )


@given(st.sampled_from(PARITY_PATTERNS + ["epoch", "epoch_ms"]), st.binary(max_size=40))
@settings(max_examples=500)
def test_junk_parity(parse_time, pattern, junk):
    time_format = compile_time_format(pattern)
    assert c_parse(parse_time, time_format, junk, 2024) == time_format.parse(junk, 2024)


@given(
    st.text(alphabet="yMdDHhKkmsSaEXxZ-: ./'T", min_size=1, max_size=24),
    st.text(alphabet="0123456789-: ./T+ZAMP", max_size=30),
)
@settings(max_examples=500)
def test_random_pattern_parity(parse_time, pattern, text):
    try:
        time_format = compile_time_format(pattern)
    except TimeFormatError:
        return
    assert c_parse(parse_time, time_format, text, 2024) == time_format.parse(text, 2024)
