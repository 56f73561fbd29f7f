# Stubs for the compiled JSON writer of result documents (src/adjobs/_jsontext.pyx).
from typing import Any

def encode(value: Any) -> str | None:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``'s text, or None where
    that is for the json module to write or reject (other types, subclasses, non-finite
    floats, keys that are not strs, nesting deeper than 32)."""
