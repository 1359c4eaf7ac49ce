"""The rules a message's header fields keep, whoever builds the message.

The API's schema (app/api/schemas.py), the MIME builder (mime.py) and the dashboard's
test email all ask these functions, so one rule cannot drift between them. Each
`*_problem` function returns what is wrong in words (a sentence fragment a caller puts
after the field's name), or None.
"""

from __future__ import annotations

import re

# Header fields the gateway writes itself; a caller may not supply them as custom headers.
STRUCTURAL = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "reply-to",
        "received",
    }
)
# The API field that sets a structural header, for the hint.
SET_BY_FIELD = {
    "from": "from",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "reply-to": "reply_to",
    "received": "received",
}
MAX_NAME = 76
MAX_VALUE = 4000

FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext: printable ASCII, no ':' or space
# C0 controls except TAB, DEL, and the Unicode characters str.splitlines() treats as breaks.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z"
)
CONTENT_ID = re.compile(r"[!-;=?-~]+\Z")  # printable ASCII without space, '<' or '>'
MAX_CONTENT_ID = 250


def text_problem(value: str) -> str | None:
    """Say what in `value` would break out of a header line (CRLF injection), or None."""
    found = CONTROL.search(value)
    if found is None:
        return None
    if "\r" in value or "\n" in value:
        return "contains a line break (CR/LF header injection)"
    char = found.group()
    if char == "\x00":
        return "contains a NUL character"
    return f"contains a control character (U+{ord(char):04X})"


def name_problem(name: str) -> str | None:
    """Say why `name` cannot be a custom header field's name, or None."""
    if not FIELD_NAME.match(name) or len(name) > MAX_NAME:
        return (
            "is not a valid header name (printable ASCII without ':' or spaces, "
            f"at most {MAX_NAME} characters)"
        )
    key = name.lower()
    if key in STRUCTURAL:
        field = SET_BY_FIELD.get(key)
        hint = f"use the '{field}' field" if field else "it is set by the gateway"
        return f"cannot be set as a custom header; {hint}"
    return None


def value_problem(value: str) -> str | None:
    """Say why `value` cannot be a custom header field's value, or None."""
    problem = text_problem(value)
    if problem is None and len(value) > MAX_VALUE:
        problem = f"is too long (at most {MAX_VALUE} characters)"
    return problem


def content_type_problem(value: str) -> str | None:
    """Say why `value` (lowercased, stripped) cannot be an attachment's content type, or None."""
    if not MIME_TYPE.match(value):
        return "must be a MIME type like 'image/png' (type/subtype, no parameters)"
    if value.startswith(("multipart/", "message/")):
        return f"'{value}' cannot be used for an attachment; use application/octet-stream"
    return None


def content_id(value: str) -> str:
    """Return a Content-ID without its angle brackets (check `text_problem` first)."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value


def content_id_problem(value: str) -> str | None:
    """Say why `value` (brackets removed) cannot be a Content-ID, or None."""
    problem = text_problem(value)
    if problem is None and (not CONTENT_ID.match(value) or len(value) > MAX_CONTENT_ID):
        problem = (
            f"must be 1-{MAX_CONTENT_ID} printable ASCII characters without spaces or '<>' "
            "(referenced as cid:... in the html)"
        )
    return problem
