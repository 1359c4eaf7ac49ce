"""Read the header section of a stored message, for display (never its body)."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

_PARSER = BytesParser(policy=policy.default)
_RAW = BytesParser(policy=policy.compat32)


def stored_headers(data: bytes) -> list[tuple[str, str]]:
    """Return the message's headers in order, encoded words decoded where they parse."""
    try:
        parsed = _PARSER.parsebytes(data, headersonly=True)
        return [(name, str(value)) for name, value in parsed.items()]
    except Exception:  # a header the modern policy cannot parse: show them as stored
        raw = _RAW.parsebytes(data, headersonly=True)
        return [(name, str(value)) for name, value in raw.items()]
