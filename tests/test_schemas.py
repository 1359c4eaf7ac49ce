"""The /api/send request contract (app.api.schemas)."""

from __future__ import annotations

import base64

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.schemas import (
    MAX_RECIPIENTS,
    Address,
    Attachment,
    SendRequest,
    errors_to_fields,
)
from app.domain.mime import Mailbox, build_message, parse_raw

B64 = base64.b64encode(b"hello world").decode()
BASE = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hi",
    "text": "Hello",
}
RAW = "From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


def ok(**changes) -> SendRequest:
    return SendRequest.model_validate({**BASE, **changes})


def errors(payload) -> dict[str, str]:
    with pytest.raises(pydantic.ValidationError) as info:
        SendRequest.model_validate(payload)
    return errors_to_fields(info.value)


def bad(**changes) -> dict[str, str]:
    return errors({**BASE, **changes})


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("given", "email", "name"),
    [
        ("bob@example.org", "bob@example.org", None),
        ("  bob@example.org ", "bob@example.org", None),
        ("<bob@example.org>", "bob@example.org", None),
        ("Bob <bob@example.org>", "bob@example.org", "Bob"),
        ('"Smith, Bob" <bob@example.org>', "bob@example.org", "Smith, Bob"),
        ('"Say \\"hi\\"" <bob@example.org>', "bob@example.org", 'Say "hi"'),
        ("Bob@EXAMPLE.org", "Bob@example.org", None),  # domain normalised, local part kept
        ("Zoë <zoe@bücher.de>", "zoe@bücher.de", "Zoë"),
        ({"email": "bob@example.org"}, "bob@example.org", None),
        ({"email": "bob@example.org", "name": "  Bob  "}, "bob@example.org", "Bob"),
        ({"email": "bob@example.org", "name": ""}, "bob@example.org", None),
    ],
)
def test_address_forms(given, email, name):
    addr = Address.model_validate(given)
    assert (addr.email, addr.name) == (email, name)
    req = ok(**{"from": given, "to": given, "reply_to": given})
    assert req.from_ == req.to[0] == req.reply_to == addr


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("bob@example.org", ["bob@example.org"]),
        ({"email": "bob@example.org"}, ["bob@example.org"]),
        (
            ["a@example.org", {"email": "b@example.org", "name": "B"}],
            ["a@example.org", "b@example.org"],
        ),
    ],
)
def test_to_accepts_single_or_list(to, expected):
    assert [a.email for a in ok(to=to).to] == expected


@pytest.mark.parametrize(
    ("to", "path", "message"),
    [
        ("no-at-sign", "to.0.email", "@-sign"),
        ("a@b@example.org", "to.0.email", "@-sign"),
        ("bob@localhost", "to.0.email", "period"),
        ("bob@exa mple.org", "to.0.email", "invalid characters"),
        ("jörg@example.org", "to.0.email", "Internationalized characters before the @-sign"),
        ("Bob <bob@example.org", "to.0", "not a valid address"),
        ("Bob bob@example.org>", "to.0", "'>' without '<'"),
        ("B<o>b <bob@example.org>", "to.0", "quote a display name"),
        ({"email": "bob@example.org", "nickname": "x"}, "to.0.nickname", "unknown field"),
        ({"name": "Bob"}, "to.0.email", "required"),
        (42, "to.0", "address string or an object"),
        ({"email": "bob@example.org", "name": "x" * 257}, "to.0.name", "at most 256"),
    ],
)
def test_bad_addresses(to, path, message):
    found = bad(to=[to])
    assert path in found, found
    assert message in found[path]


@pytest.mark.parametrize("brk", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (lambda b: {"from": f"Evil{b}Bcc: x@example.com <a@example.com>"}, "from.name"),
        (lambda b: {"to": [{"email": "b@example.org", "name": f"x{b}y"}]}, "to.0.name"),
        (lambda b: {"reply_to": {"email": f"b@example.org{b}"}}, "reply_to.email"),
        (lambda b: {"subject": f"Hi{b}Bcc: x@example.com"}, "subject"),
        (lambda b: {"headers": {"X-Tag": f"a{b}Bcc: x@example.com"}}, "headers.X-Tag"),
        (lambda b: {"received": ["from a", f"from b{b}X: y"]}, "received.1"),
        (
            lambda b: {"attachments": [{"filename": f"a{b}.txt", "content": B64}]},
            "attachments.0.filename",
        ),
        (
            lambda b: {
                "html": "<img src=cid:x>",
                "attachments": [
                    {"filename": "a.png", "content": B64, "disposition": "inline", "cid": f"x{b}"}
                ],
            },
            "attachments.0.cid",
        ),
    ],
)
def test_crlf_injection_refused(payload, path, brk):
    found = bad(**payload(brk))
    assert found[path] == "contains a line break (CR/LF header injection)"


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"subject": "a\x00b"}, "subject", "contains a NUL character"),
        ({"headers": {"X-A": "a\x00b"}}, "headers.X-A", "contains a NUL character"),
        ({"subject": "a\u2028b"}, "subject", "control character (U+2028)"),
        ({"tags": ["a\nb"]}, "tags.0", "must be 1-64 characters"),
    ],
)
def test_other_control_characters_refused(changes, path, message):
    assert message in bad(**changes)[path]


@given(
    field=st.sampled_from(["subject", "header", "name", "filename", "received"]),
    before=st.text(max_size=30),
    brk=st.sampled_from(["\r", "\n", "\r\n"]),
    after=st.text(max_size=30),
)
def test_property_line_break_anywhere_is_refused(field, before, brk, after):
    value = before + brk + after
    payload = {
        "subject": {"subject": value},
        "header": {"headers": {"X-Value": value}},
        "name": {"from": {"email": "a@example.com", "name": value}},
        "filename": {"attachments": [{"filename": value, "content": B64}]},
        "received": {"received": value},
    }[field]
    found = bad(**payload)
    assert "contains a line break (CR/LF header injection)" in found.values()


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Bcc", "cannot be set as a custom header; use the 'bcc' field"),
        ("Bad Name", "is not a valid header name"),
    ],
)
def test_a_custom_header_refused_by_the_rules_is_reported_at_its_name(name, message):
    """The rules themselves are tested in test_headers.py; here, only where they land."""
    assert message in bad(headers={name: "x"})[f"headers.{name}"]


def test_valid_custom_headers_kept():
    headers = {"X-Campaign": "spring", "List-Unsubscribe": "<https://e.example/u>", "X-E": ""}
    assert ok(headers=headers).headers == headers


def test_header_value_must_be_string():
    assert bad(headers={"X-N": 3}) == {"headers.X-N": "must be a string"}


# ----------------------------------------------------------------------------- attachments


@pytest.mark.parametrize(
    ("content", "decoded"),
    [
        (B64, b"hello world"),
        ("aGVsbG8g\nd29y\r\nbGQ=", b"hello world"),  # wrapped base64
        ("  aGVsbG8gd29ybGQ=\t", b"hello world"),
        ("", b""),
    ],
)
def test_attachment_base64_accepted(content, decoded):
    req = ok(attachments=[{"filename": "a.txt", "content": content}])
    assert req.attachments[0].content == decoded


@pytest.mark.parametrize(
    "content", ["not base64!", "aGVsbG8", "aGVs*G8=", "aGVsbG8gd29ybGQ=aGVs", "a-_b"]
)
def test_attachment_invalid_base64(content):
    found = bad(
        attachments=[{"filename": "ok.txt", "content": B64}, {"filename": "a", "content": content}]
    )
    assert found == {"attachments.1.content": "not valid base64"}


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        ("logo.png", None, "image/png"),
        ("report.pdf", None, "application/pdf"),
        ("notes.txt", None, "text/plain"),
        ("mystery.zzz-unknown", None, "application/octet-stream"),
        ("forwarded.eml", None, "application/octet-stream"),  # message/* cannot be base64
        ("logo.png", "IMAGE/PNG", "image/png"),
        ("data", "application/vnd.ms-excel", "application/vnd.ms-excel"),
    ],
)
def test_attachment_content_type(filename, content_type, expected):
    att = {"filename": filename, "content": B64}
    if content_type:
        att["content_type"] = content_type
    assert ok(attachments=[att]).attachments[0].content_type == expected


def test_a_content_type_refused_by_the_rules_is_reported_at_its_field():
    found = bad(attachments=[{"filename": "a", "content": B64, "content_type": "multipart/x"}])
    assert "cannot be used for an attachment" in found["attachments.0.content_type"]


@pytest.mark.parametrize(
    ("attachment", "path", "message"),
    [
        ({"filename": "a.png", "content": B64, "disposition": "inline"}, "cid", "required"),
        ({"filename": "a.png", "content": B64, "disposition": "hidden"}, "disposition", "inline"),
        ({"filename": "a.png", "content": B64, "cid": "has space"}, "cid", "without spaces"),
        ({"filename": "", "content": B64}, "filename", "must not be empty"),
        ({"filename": "   ", "content": B64}, "filename", "must not be blank"),
        ({"filename": "a" * 256, "content": B64}, "filename", "at most 255"),
        ({"content": B64}, "filename", "required"),
        ({"filename": "a"}, "content", "required"),
        ({"filename": "a", "content": 5}, "content", "base64 string"),
        ({"filename": "a", "content": B64, "size": 3}, "size", "unknown field"),
    ],
)
def test_attachment_errors(attachment, path, message):
    found = bad(attachments=[attachment])
    assert message in found[f"attachments.0.{path}"], found


def test_inline_attachment_cid_brackets_stripped():
    att = {"filename": "a.png", "content": B64, "disposition": "inline", "cid": "<logo@x>"}
    assert ok(html="<img src='cid:logo@x'>", attachments=[att]).attachments[0].cid == "logo@x"


def test_attachment_json_round_trip():
    req = ok(
        attachments=[{"filename": "a.bin", "content": base64.b64encode(bytes(range(256))).decode()}]
    )
    dumped = req.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["attachments"][0]["content"] == base64.b64encode(bytes(range(256))).decode()
    assert SendRequest.model_validate(dumped) == req


def test_attachment_accepts_decoded_bytes_from_python():
    assert Attachment(filename="a", content=b"\x00\x01").content == b"\x00\x01"


# ----------------------------------------------------------------------------- tags, priority


@pytest.mark.parametrize(
    "tags", [[], ["welcome"], ["a", "B-2", "x.y", "k:v", "under_score", "x" * 64], ["t"] * 20]
)
def test_valid_tags(tags):
    assert ok(tags=tags).tags == tags


@pytest.mark.parametrize(
    ("tags", "path", "message"),
    [
        (["ok", ""], "tags.1", "1-64 characters"),
        (["x" * 65], "tags.0", "1-64 characters"),
        (["has space"], "tags.0", "1-64 characters"),
        (["ünï"], "tags.0", "1-64 characters"),
        (["t"] * 21, "tags", "at most 20"),
        ([3], "tags.0", "must be a string"),
        ("single", "tags", "must be a list"),
    ],
)
def test_bad_tags(tags, path, message):
    assert message in bad(tags=tags)[path]


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_priority(priority):
    assert ok(priority=priority).priority == priority


def test_priority_default_and_invalid():
    assert ok().priority == "normal"
    assert "'high', 'normal' or 'low'" in bad(priority="urgent")["priority"]


# ----------------------------------------------------------------------------- shape


@pytest.mark.parametrize(
    "received",
    ["from a by b; Mon, 1 Jan 2024 00:00:00 +0000", ["from a by b", "Received: from c by a"]],
)
def test_received_string_or_list(received):
    req = ok(received=received)
    assert all(not r.lower().startswith("received:") for r in req.received)
    assert len(req.received) == (1 if isinstance(received, str) else 2)


@pytest.mark.parametrize(
    ("received", "message"), [(["from ü"], "must be ASCII"), (["  "], "must not be empty")]
)
def test_bad_received(received, message):
    assert message in bad(received=received)["received.0"]


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"from": None}, "from", "required"),
        ({"subject": None}, "subject", "required"),
        ({"text": None}, "text", "one of text, html or attachments"),
        ({"to": []}, "to", "at least one recipient"),
        ({"subject": "x" * 999}, "subject", "at most 998"),
        ({"bogus": 1}, "bogus", "unknown field"),
        ({"from_": "a@example.com"}, "from_", "unknown field"),
        ({"to": "a@example.org", "reply_to": ["a@example.org"]}, "reply_to", "must be"),
    ],
)
def test_structured_shape_errors(changes, path, message):
    payload = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    found = errors(payload)
    assert message in found[path], found


@pytest.mark.parametrize(
    "changes",
    [
        {"text": None, "html": "<p>x</p>"},
        {"text": None, "attachments": [{"filename": "a.txt", "content": B64}]},
        {"to": [], "cc": ["c@example.org"]},
        {"to": [], "bcc": "b@example.org"},
        {"subject": ""},
    ],
)
def test_structured_minimal_variants(changes):
    ok(**changes)


@pytest.mark.parametrize(
    ("to", "cc", "bcc", "valid"),
    [
        (MAX_RECIPIENTS, 0, 0, True),
        (MAX_RECIPIENTS - 2, 1, 1, True),
        (MAX_RECIPIENTS, 1, 0, False),
        (0, 0, MAX_RECIPIENTS + 1, False),
    ],
)
def test_recipient_limit(to, cc, bcc, valid):
    def addrs(n, p):
        return [f"{p}{i}@example.org" for i in range(n)]

    payload = {**BASE, "to": addrs(to, "t"), "cc": addrs(cc, "c"), "bcc": addrs(bcc, "b")}
    if valid:
        SendRequest.model_validate(payload)
    else:
        assert "too many recipients" in errors(payload)["to"]


def test_raw_request():
    req = SendRequest.model_validate({"raw": RAW, "tags": ["t"], "priority": "high"})
    assert req.raw == RAW
    assert req.raw_envelope() == (None, None)
    req = SendRequest.model_validate(
        {"raw": RAW, "from": "bounce@example.com", "to": "x@example.org"}
    )
    assert req.raw_envelope() == ("bounce@example.com", ["x@example.org"])
    built = parse_raw(
        req.raw,
        envelope_from=req.raw_envelope()[0],
        recipients=req.raw_envelope()[1],
        max_bytes=10_000,
    )
    assert built.envelope_from == "bounce@example.com"
    assert built.recipients == ["x@example.org"]
    with pytest.raises(ValueError, match="parse_raw"):
        req.to_message_spec()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "s"),
        ("subject", ""),
        ("text", "t"),
        ("html", "<p>"),
        ("attachments", [{"filename": "a", "content": B64}]),
        ("headers", {"X-A": "1"}),
        ("cc", ["c@example.org"]),
        ("bcc", ["c@example.org"]),
        ("reply_to", "r@example.org"),
        ("received", "from a by b"),
    ],
)
def test_raw_conflicts_with_structured_fields(field, value):
    found = errors({"raw": RAW, field: value})
    assert "cannot be combined with 'raw'" in found[field]


@pytest.mark.parametrize(
    ("payload", "path", "message"),
    [
        ({"raw": "From: a@example.com\r\nSubject: s\r\n\r\nx"}, "raw", "no recipients"),
        ({"raw": ""}, "raw", "must not be empty"),
        ({"raw": "From: a@example.com\r\n\r\nx", "to": []}, "raw", "no recipients"),
        (
            {"raw": "From: a@example.com\r\nTo: " + ", ".join(f"r{i}@x.org" for i in range(1001))},
            "to",
            "too many recipients",
        ),
    ],
)
def test_raw_errors(payload, path, message):
    assert message in errors(payload)[path]


def test_raw_with_to_needs_no_header_recipients():
    SendRequest.model_validate({"raw": "From: a@example.com\r\n\r\nx", "to": "b@example.org"})


def test_non_object_body():
    assert errors(["x"]) == {"body": "must be an object"}


# ----------------------------------------------------------------------------- errors_to_fields


def test_errors_to_fields_paths_and_messages():
    found = errors(
        {
            "from": "alice@example.com",
            "to": [{"email": "ok@example.org"}, {"email": "nope"}],
            "subject": "s",
            "text": "t",
            "attachments": [
                {"filename": "a.txt", "content": B64},
                {"filename": "b.txt", "content": "%%%"},
            ],
            "colour": "blue",
        }
    )
    assert found == {
        "to.1.email": "An email address must have an @-sign.",
        "attachments.1.content": "not valid base64",
        "colour": "unknown field",
    }


# ----------------------------------------------------------------------------- to the domain


def test_to_message_spec_builds_a_message():
    req = ok(
        to=["Bob <bob@example.org>"],
        cc=["carol@example.org"],
        bcc=["hidden@example.org"],
        reply_to="support@example.com",
        html="<img src='cid:logo'>",
        attachments=[
            {"filename": "logo.png", "content": B64, "disposition": "inline", "cid": "logo"},
            {"filename": "r.pdf", "content": B64},
        ],
        headers={"X-Campaign": "c1"},
        received="from a by b; Mon, 1 Jan 2024 00:00:00 +0000",
    )
    spec = req.to_message_spec()
    assert spec.sender == Mailbox("alice@example.com", "Alice")
    assert spec.attachments[0].content == b"hello world"
    assert spec.attachments[1].content_type == "application/pdf"
    built = build_message(spec, max_bytes=100_000)
    assert built.recipients == ["bob@example.org", "carol@example.org", "hidden@example.org"]
    assert b"hidden@example.org" not in built.data
    assert built.data.startswith(b"Received: from a by b;")
