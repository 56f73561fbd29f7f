"""Time parameters of post_data (``reset_start``/``reset_end``) and flush (spec §6.1).

ES reads ``now``, an integer (at most 10 characters: seconds, else milliseconds), or a
date in ``strict_date_optional_time`` form. Anything else, or a negative time, is a 400
``parse_exception`` naming the parameter as ES does (``start``/``end`` for the reset
parameters).
"""

from __future__ import annotations

import datetime as _dt
import re
import time

from .errors import ApiError, parse_exception

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?)?"
    r"(?P<z>Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?"
)


def parse_time_param(name: str, value: object) -> int:
    """Epoch milliseconds of a time parameter, or a 400 ``parse_exception``."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    millis = _parse(text)
    if millis is None or millis < 0:
        raise unparsable_time(name, value)
    return millis


def unparsable_time(name: str, value: object) -> ApiError:
    """ES's 400 ``parse_exception`` for a time parameter it cannot read."""
    return parse_exception(
        f"Query param [{name}] with value [{value}] cannot be parsed as a date or "
        "converted to a number (epoch)."
    )


def _parse(text: str) -> int | None:
    if text == "now":
        return time.time_ns() // 1_000_000
    if re.fullmatch(r"[+-]?\d+", text):
        number = int(text)
        if not -(2**63) <= number < 2**63:
            return None
        return number * 1000 if len(text) <= 10 else number
    match = _DATE.fullmatch(text)
    if not match:
        return None
    parts = match.groupdict()
    try:
        moment = _dt.datetime(
            int(parts["y"]),
            int(parts["mo"] or 1),
            int(parts["d"] or 1),
            int(parts["h"] or 0),
            int(parts["mi"] or 0),
            int(parts["s"] or 0),
            tzinfo=_dt.UTC,
        )
    except ValueError:
        return None
    millis = int(moment.timestamp()) * 1000 + int((parts["f"] or "0").ljust(3, "0")[:3])
    zone = parts["z"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
        millis -= sign * offset * 60_000
    return millis
