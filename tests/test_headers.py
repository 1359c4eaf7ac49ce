"""The header rules every message keeps (app/domain/headers.py), tested once, here.

The API's schema and the MIME builder both ask these functions; their own tests check
only that a refusal reaches the right field.
"""

from __future__ import annotations

import pytest

from app.domain import headers


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Your order", None),
        ("tab\tinside", None),
        ("non-ASCII: Grüße ✓", None),
        ("a\rb", "contains a line break (CR/LF header injection)"),
        ("a\nBcc: evil@example.com", "contains a line break (CR/LF header injection)"),
        ("a\r\nb", "contains a line break (CR/LF header injection)"),
        ("a\x00b", "contains a NUL character"),
        ("a\x0bb", "contains a control character (U+000B)"),
        ("a\x7fb", "contains a control character (U+007F)"),
        # Line breaks to str.splitlines(), and so to some mail software: refused everywhere
        # (the dashboard's test email once let U+2028 through that the API refused).
        ("a\u2028b", "contains a control character (U+2028)"),
        ("a\u2029b", "contains a control character (U+2029)"),
        ("a\x85b", "contains a control character (U+0085)"),
    ],
)
def test_header_text_that_would_break_a_header_line_is_refused(
    value: str, problem: str | None
) -> None:
    assert headers.text_problem(value) == problem


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("X-Campaign", None),
        ("List-Unsubscribe", None),
        ("X-" + "a" * 74, None),
        ("X-" + "a" * 75, "is not a valid header name"),
        ("Bad Name", "is not a valid header name"),
        ("X:Y", "is not a valid header name"),
        ("", "is not a valid header name"),
        ("Ünicode", "is not a valid header name"),
        ("Tab\tX", "is not a valid header name"),
        ("Bcc", "cannot be set as a custom header; use the 'bcc' field"),
        ("reply-to", "cannot be set as a custom header; use the 'reply_to' field"),
        ("Date", "cannot be set as a custom header; it is set by the gateway"),
        ("message-id", "cannot be set as a custom header; it is set by the gateway"),
    ],
)
def test_a_custom_header_name_must_be_valid_and_not_structural(
    name: str, problem: str | None
) -> None:
    found = headers.name_problem(name)
    assert found == problem if problem is None else found and found.startswith(problem)


@pytest.mark.parametrize("name", sorted(headers.STRUCTURAL))
def test_every_structural_header_is_refused_in_any_case(name: str) -> None:
    for spelled in (name, name.upper(), name.title()):
        assert "cannot be set as a custom header" in (headers.name_problem(spelled) or "")


def test_a_custom_header_value_is_at_most_4000_characters() -> None:
    assert headers.value_problem("x" * 4000) is None
    assert headers.value_problem("x" * 4001) == "is too long (at most 4000 characters)"
    assert headers.value_problem("a\nb") == "contains a line break (CR/LF header injection)"


@pytest.mark.parametrize(
    ("content_type", "problem"),
    [
        ("image/png", None),
        ("application/vnd.ms-excel", None),
        ("png", "must be a MIME type like 'image/png'"),
        ("text/plain; charset=utf-8", "must be a MIME type like 'image/png'"),
        ("image/ png", "must be a MIME type like 'image/png'"),
        ("multipart/mixed", "'multipart/mixed' cannot be used for an attachment"),
        ("message/rfc822", "'message/rfc822' cannot be used for an attachment"),
    ],
)
def test_an_attachment_content_type_is_a_plain_mime_type(
    content_type: str, problem: str | None
) -> None:
    found = headers.content_type_problem(content_type)
    assert found == problem if problem is None else found and found.startswith(problem)


@pytest.mark.parametrize(
    ("given", "normalised", "problem"),
    [
        ("logo@example.com", "logo@example.com", None),
        ("<logo@example.com>", "logo@example.com", None),
        ("has space", "has space", "must be 1-250 printable ASCII characters"),
        ("<>", "", "must be 1-250 printable ASCII characters"),
        ("a" * 251, "a" * 251, "must be 1-250 printable ASCII characters"),
        ("ü@example.com", "ü@example.com", "must be 1-250 printable ASCII characters"),
    ],
)
def test_a_content_id_is_printable_ascii_without_brackets(
    given: str, normalised: str, problem: str | None
) -> None:
    assert headers.content_id(given) == normalised
    found = headers.content_id_problem(normalised)
    assert found == problem if problem is None else found and found.startswith(problem)
