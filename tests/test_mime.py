"""MIME building, raw-message normalisation and link extraction (app.domain.mime / links)."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import replace
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.links import extract_links
from app.domain.mime import (
    AttachmentSpec,
    BuiltMessage,
    InvalidMessage,
    Mailbox,
    MessageSpec,
    MessageTooLarge,
    build_message,
    new_message_id,
    parse_raw,
)

MAX = 10_000_000
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def make_spec(**changes) -> MessageSpec:
    base = MessageSpec(
        sender=Mailbox("alice@example.com", "Alice"),
        to=[Mailbox("bob@example.org", "Bob")],
        cc=[],
        bcc=[],
        reply_to=None,
        subject="Hello",
        text="Hello Bob\n",
        html=None,
        attachments=[],
        headers={},
        received=[],
    )
    return replace(base, **changes)


def build(**changes) -> BuiltMessage:
    return build_message(make_spec(**changes), max_bytes=MAX)


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)


def content(part: EmailMessage) -> str:
    """Decoded text of a part; the parser keeps the wire CRLFs, so compare with LFs."""
    return part.get_content().replace("\r\n", "\n")


def structure(msg: EmailMessage) -> str | tuple:
    """The MIME tree as nested (content type, children...) tuples."""
    if msg.is_multipart():
        return (msg.get_content_type(), *[structure(p) for p in msg.iter_parts()])
    return msg.get_content_type()


def assert_crlf(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    assert data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


# ----------------------------------------------------------------------------- structure

INLINE = AttachmentSpec("logo.png", PNG, "image/png", "inline", "logo@rb")
FILE = AttachmentSpec("report.pdf", b"%PDF-1.4 fake", "application/pdf")


@pytest.mark.parametrize(
    ("text", "html", "attachments", "expected"),
    [
        ("hi", None, [], "text/plain"),
        (None, "<p>hi</p>", [], "text/html"),
        ("hi", "<p>hi</p>", [], ("multipart/alternative", "text/plain", "text/html")),
        (None, None, [FILE], ("multipart/mixed", "application/pdf")),
        ("hi", None, [FILE], ("multipart/mixed", "text/plain", "application/pdf")),
        (
            "hi",
            "<p>hi</p>",
            [FILE],
            (
                "multipart/mixed",
                ("multipart/alternative", "text/plain", "text/html"),
                "application/pdf",
            ),
        ),
        (
            None,
            '<img src="cid:logo@rb">',
            [INLINE],
            ("multipart/related", "text/html", "image/png"),
        ),
        (
            "hi",
            '<img src="cid:logo@rb">',
            [INLINE, FILE],
            (
                "multipart/mixed",
                (
                    "multipart/related",
                    ("multipart/alternative", "text/plain", "text/html"),
                    "image/png",
                ),
                "application/pdf",
            ),
        ),
        # inline without html has nothing to be related to: it becomes a plain part
        ("hi", None, [INLINE], ("multipart/mixed", "text/plain", "image/png")),
    ],
)
def test_body_structure(text, html, attachments, expected):
    built = build(text=text, html=html, attachments=attachments)
    assert_crlf(built.data)
    msg = parse(built.data)
    assert structure(msg) == expected
    assert not msg.defects
    assert all(not p.defects for p in msg.walk())


def test_text_and_html_round_trip():
    built = build(text="Plain body\nline 2\n", html="<p>HTML body</p>\n")
    msg = parse(built.data)
    assert content(msg.get_body(("plain",))) == "Plain body\nline 2\n"
    assert content(msg.get_body(("html",))) == "<p>HTML body</p>\n"


@pytest.mark.parametrize(
    ("text", "cte"),
    [
        ("plain ascii\n", "7bit"),
        ("x" * 2000 + "\n", "quoted-printable"),  # too long for a 7bit line
        ("short\n" + "x" * 998 + "\nshort\n", "7bit"),  # the longest line allowed
        ("short\n" + "x" * 999 + "\nshort\n", "quoted-printable"),  # one more
        ("nul \x00 byte\n", "quoted-printable"),
        ("Grüße aus Köln: this is mostly plain English text, so QP wins.\n", "quoted-printable"),
        ("Привет, как дела? Это тестовое сообщение.\n" * 3, "base64"),
        ("日本語のテキストです。\n", "base64"),
        ("trailing spaces   \nand tabs\t\n€uro\n", "quoted-printable"),
    ],
)
def test_text_transfer_encoding_round_trip(text, cte):
    built = build(text=text)
    assert_crlf(built.data)
    msg = parse(built.data)
    assert msg["Content-Transfer-Encoding"] == cte
    assert msg.get_content_charset() == "utf-8"
    assert content(msg) == text


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a\r\nb\r\n", "a\nb\n"),
        ("a\rb", "a\nb\n"),
        ("no newline", "no newline\n"),
        ("", "\n"),
    ],
)
def test_text_line_endings_normalised(given, expected):
    built = build(text=given)
    assert_crlf(built.data)
    assert content(parse(built.data)) == expected


# ----------------------------------------------------------------------------- headers


def test_headers_and_envelope():
    built = build(
        to=[Mailbox("bob@example.org", "Bob"), Mailbox("carol@example.org")],
        cc=[Mailbox("dave@example.net", "Dave, Jr.")],
        bcc=[Mailbox("eve@example.com"), Mailbox("BOB@example.org")],
        reply_to=Mailbox("support@example.com", "Support"),
        headers={"X-Campaign": "spring", "List-Unsubscribe": "<https://example.com/u/1>"},
    )
    msg = parse(built.data)
    assert built.envelope_from == "alice@example.com"
    # to + cc + bcc, deduplicated case-insensitively, first spelling and order kept
    assert built.recipients == [
        "bob@example.org",
        "carol@example.org",
        "dave@example.net",
        "eve@example.com",
    ]
    assert msg["Bcc"] is None
    assert b"eve@example.com" not in built.data
    assert str(msg["From"]) == "Alice <alice@example.com>"
    assert [a.addr_spec for a in msg["To"].addresses] == ["bob@example.org", "carol@example.org"]
    assert msg["Cc"].addresses[0].display_name == "Dave, Jr."
    assert str(msg["Reply-To"]) == "Support <support@example.com>"
    assert msg["X-Campaign"] == "spring"
    assert msg["List-Unsubscribe"] == "<https://example.com/u/1>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime is not None
    assert built.from_header == "Alice <alice@example.com>"
    assert built.to_header == ["Bob <bob@example.org>", "carol@example.org"]
    assert built.subject == "Hello"


def test_only_bcc_gets_undisclosed_recipients():
    built = build(to=[], bcc=[Mailbox("hidden@example.org")])
    msg = parse(built.data)
    assert built.recipients == ["hidden@example.org"]
    assert msg["To"].addresses == ()
    assert b"hidden@example.org" not in built.data
    assert built.to_header == []


def test_message_id_is_fixed_and_unique():
    a = build()
    b = build()
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", a.message_id)
    assert parse(a.data)["Message-ID"] == a.message_id
    assert a.message_id != b.message_id
    c = build_message(make_spec(), message_id_domain="mail.relay.test", max_bytes=MAX)
    assert c.message_id.endswith("@mail.relay.test>")
    assert parse(c.data)["Message-ID"] == c.message_id


def test_new_message_id():
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", new_message_id("example.com"))
    with pytest.raises(InvalidMessage, match="domain"):
        new_message_id("bad domain>")


def test_received_headers_come_first_in_order():
    built = build(
        received=[
            "from a.example by b.example; Mon, 1 Jan 2024 00:00:01 +0000",
            "Received: from c.example by a.example; Mon, 1 Jan 2024 00:00:00 +0000",
        ],
        headers={"X-Trace": "1"},
    )
    names = header_names(built.data)
    assert names[:3] == ["Received", "Received", "Date"]
    msg = parse(built.data)
    assert [str(v) for v in msg.get_all("Received")] == [
        "from a.example by b.example; Mon, 1 Jan 2024 00:00:01 +0000",
        "from c.example by a.example; Mon, 1 Jan 2024 00:00:00 +0000",
    ]


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "Plain",
        "Réunion demain à 10h",
        "日本語の件名",
        "emoji 🎉 party",
        "word " * 60,  # long ASCII: folded
        "ü" * 300,  # long non-ASCII: several encoded words
        "x" * 1500,  # one unbreakable ASCII word longer than 998
        "=?utf-8?b?w6k=?= looks encoded",
    ],
)
def test_subject_round_trip_and_folding(subject):
    built = build(subject=subject)
    assert_crlf(built.data)
    head = built.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert parse(built.data)["Subject"] == subject.strip()


@pytest.mark.parametrize(
    "name",
    ["Zoë Ångström", "Smith, John", 'Say "hi"', "back\\slash", "=?x?y", "Łukasz, Zoë"],
)
def test_display_names_round_trip(name):
    built = build(sender=Mailbox("alice@example.com", name), to=[Mailbox("b@example.org", name)])
    msg = parse(built.data)
    assert msg["From"].addresses[0].display_name == name
    assert msg["From"].addresses[0].addr_spec == "alice@example.com"
    assert msg["To"].addresses[0].display_name == name


def test_long_non_ascii_display_name_uses_several_encoded_words():
    name = "😀" * 40
    built = build(to=[Mailbox("b@example.org", name)])
    to_line = re.search(rb"\r\nTo: (.*?)\r\n(?! )", built.data, re.S).group(1)
    words = re.findall(rb"=\?utf-8\?b\?[^?]*\?=", to_line)
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    # RFC 2047 §6.2: whitespace between adjacent encoded words is ignored.  (The email
    # package's address parser keeps it, a known CPython limitation; decode_header doesn't.)
    unfolded = to_line.replace(b"\r\n", b"").decode("ascii")
    assert str(make_header(decode_header(unfolded))) == f"{name} <b@example.org>"


def test_idn_domain_is_punycoded():
    built = build(sender=Mailbox("info@bücher.de"), to=[Mailbox("kunde@münchen.de")])
    assert built.envelope_from == "info@xn--bcher-kva.de"
    assert built.recipients == ["kunde@xn--mnchen-3ya.de"]
    assert built.message_id.endswith("@xn--bcher-kva.de>")
    assert built.data.isascii()


def test_non_ascii_local_part_is_refused():
    with pytest.raises(InvalidMessage, match="non-ASCII local part"):
        build(to=[Mailbox("jörg@example.org")])


INJECTIONS = ["a\r\nBcc: evil@example.com", "a\nX: y", "a\rb", "a\x00b"]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(
    "field",
    ["subject", "sender_name", "to_name", "header", "filename", "received"],
)
def test_header_injection_refused(field, bad):
    changes = {
        "subject": {"subject": bad},
        "sender_name": {"sender": Mailbox("alice@example.com", bad)},
        "to_name": {"to": [Mailbox("bob@example.org", bad)]},
        "header": {"headers": {"X-Custom": bad}},
        "filename": {"attachments": [AttachmentSpec(bad, b"x", "text/plain")]},
        "received": {"received": [bad]},
    }[field]
    with pytest.raises(InvalidMessage, match="line break|NUL"):
        build(**changes)


@given(
    prefix=st.text(max_size=20),
    brk=st.sampled_from(["\r", "\n", "\r\n"]),
    suffix=st.text(max_size=20),
)
def test_property_header_value_with_line_break_refused(prefix, brk, suffix):
    with pytest.raises(InvalidMessage, match="line break"):
        build(headers={"X-Value": prefix.replace("\x00", "") + brk + suffix})


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Bcc": "x@example.com"}, "header 'Bcc' cannot be set as a custom header"),
        ({"Message-ID": "<x@y>"}, "header 'Message-ID' cannot be set as a custom header"),
        ({"Bad Name": "v"}, "header 'Bad Name' is not a valid header name"),
        ({"X-Long": "v" * 4001}, "header 'X-Long' is too long"),
        ({"X-Sep": "a\u2028b"}, r"control character \(U\+2028\)"),
    ],
)
def test_bad_custom_headers_refused(headers, message):
    with pytest.raises(InvalidMessage, match=message):
        build(headers=headers)


def test_custom_header_non_ascii_and_long():
    value = "Grüße " * 40
    built = build(headers={"X-Note": value, "X-Long": "token " * 100})
    msg = parse(built.data)
    assert msg["X-Note"] == value.strip()
    assert msg["X-Long"] == ("token " * 100).strip()
    assert_crlf(built.data)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"to": [], "cc": [], "bcc": []}, InvalidMessage, "no recipients"),
        ({"text": None, "html": None}, InvalidMessage, "no body"),
        ({"sender": Mailbox("not-an-address")}, InvalidMessage, "not a valid email address"),
        ({"attachments": [AttachmentSpec("a", b"", "image")]}, InvalidMessage, "type/subtype"),
        (
            {"attachments": [AttachmentSpec("a", b"", "multipart/mixed")]},
            InvalidMessage,
            "cannot be used for an attachment",
        ),
        (
            {"attachments": [AttachmentSpec("a.png", b"", "image/png", "inline")]},
            InvalidMessage,
            "needs a cid",
        ),
        (
            {"attachments": [AttachmentSpec("a", b"", "image/png", "inline", "a b")]},
            InvalidMessage,
            "Content-ID",
        ),
        ({"received": ["   "]}, InvalidMessage, "empty"),
        ({"received": ["from ü"]}, InvalidMessage, "ASCII"),
    ],
)
def test_build_errors(changes, error, match):
    with pytest.raises(error, match=match):
        build(**changes)


@pytest.mark.parametrize(
    ("changes", "limit"),
    [
        ({"attachments": [AttachmentSpec("big.bin", b"\0" * 30_000, "application/x")]}, 30_000),
        ({"text": "x" * 5000}, 4000),  # caught early
        ({"text": "x" * 1000}, 1200),  # caught on the serialised size
    ],
)
def test_message_too_large(changes, limit):
    with pytest.raises(MessageTooLarge, match=f"limit of {limit} bytes"):
        build_message(make_spec(**changes), max_bytes=limit)


def test_size_limit_is_inclusive():
    built = build()
    assert build_message(make_spec(), max_bytes=len(built.data)).data  # exactly at the limit


# ----------------------------------------------------------------------------- attachments


@pytest.mark.parametrize(
    ("filename", "content", "content_type"),
    [
        ("empty.txt", b"", "text/plain"),
        ("image.png", PNG, "image/png"),
        ("random.bin", os.urandom(10_000), "application/octet-stream"),
        ("Grüße & Co.pdf", b"%PDF", "application/pdf"),
        ('quote"and\\slash.txt', b"q", "text/plain"),
        ("sehr-langer-dateiname-" * 10 + "ä.txt", b"long", "text/plain"),
        ("文件名" * 30 + ".txt", b"cjk", "text/plain"),
    ],
)
def test_attachment_round_trip(filename, content, content_type):
    built = build(attachments=[AttachmentSpec(filename, content, content_type)])
    assert_crlf(built.data)
    msg = parse(built.data)
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == filename
    assert att.get_content_type() == content_type
    assert att.get_payload(decode=True) == content
    assert att.get_content_disposition() == "attachment"


def test_inline_cid_image():
    built = build(
        html='<p>Logo: <img src="cid:logo@rb"></p>',
        attachments=[AttachmentSpec("logo.png", PNG, "image/png", "inline", "<logo@rb>")],
    )
    msg = parse(built.data)
    related = msg if msg.get_content_type() == "multipart/related" else None
    assert related is not None
    assert related.get_param("type") == "multipart/alternative"
    image = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@rb>"
    assert image.get_content_disposition() == "inline"
    assert image.get_payload(decode=True) == PNG


# ----------------------------------------------------------------------------- properties

printable_header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200
)


@settings(max_examples=150, deadline=None)
@given(subject=printable_header_text, text=st.text(st.characters(blacklist_categories=("Cs",))))
def test_property_build_parse_round_trip(subject, text):
    built = build(subject=subject, text=text, html=None)
    assert_crlf(built.data)
    msg = parse(built.data)
    expected_text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not expected_text.endswith("\n"):
        expected_text += "\n"
    assert msg["Subject"] == subject.strip()
    assert content(msg) == expected_text
    assert msg["Message-ID"] == built.message_id


@settings(max_examples=50, deadline=None)
@given(content=st.binary(max_size=5000), name=printable_header_text.filter(str.strip))
def test_property_attachment_bytes_round_trip(content, name):
    built = build(attachments=[AttachmentSpec(name, content, "application/octet-stream")])
    (att,) = list(parse(built.data).iter_attachments())
    assert att.get_payload(decode=True) == content
    assert att.get_filename() == name.strip()


# ----------------------------------------------------------------------------- parse_raw

RAW = (
    "Received: from x.example by y.example; Mon, 1 Jan 2024 00:00:00 +0000\n"
    "From: Alice <alice@example.com>\n"
    "To: Bob <bob@example.org>, carol@example.org\n"
    "Cc: dave@example.net\n"
    "Bcc: eve@example.com,\n"
    "  frank@example.com\n"
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    "Message-ID: <keep-me@example.com>\n"
    "Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
    "\n"
    "Body line 1\n"
    "Body line 2\n"
)


def raw(text: str = RAW, **kwargs) -> BuiltMessage:
    kwargs.setdefault("envelope_from", None)
    kwargs.setdefault("recipients", None)
    kwargs.setdefault("max_bytes", MAX)
    return parse_raw(text, **kwargs)


def test_parse_raw_basics():
    built = raw()
    assert built.envelope_from == "alice@example.com"
    assert built.recipients == [
        "bob@example.org",
        "carol@example.org",
        "dave@example.net",
        "eve@example.com",
        "frank@example.com",
    ]
    assert built.message_id == "<keep-me@example.com>"
    assert built.subject == "Grüße"
    assert built.from_header == "Alice <alice@example.com>"
    assert built.to_header == ["Bob <bob@example.org>", "carol@example.org"]
    assert_crlf(built.data)
    assert b"Bcc" not in built.data and b"eve@" not in built.data and b"frank@" not in built.data
    msg = parse(built.data)
    assert msg["Bcc"] is None
    assert content(msg) == "Body line 1\nBody line 2\n"
    assert header_names(built.data)[0] == "Received"
    # everything except the Bcc field is byte-for-byte what was sent (modulo CRLF)
    expected = RAW.replace("Bcc: eve@example.com,\n  frank@example.com\n", "")
    assert built.data == expected.replace("\n", "\r\n").encode()


def test_parse_raw_bytes_and_crlf_input_equal():
    assert raw(RAW.replace("\n", "\r\n").encode()).data == raw().data


@pytest.mark.parametrize(
    ("kwargs", "envelope", "recipients"),
    [
        ({"envelope_from": "bounce@bounces.example.com"}, "bounce@bounces.example.com", None),
        ({"recipients": ["only@example.org", "ONLY@example.org"]}, None, ["only@example.org"]),
        ({"recipients": ["x@bücher.de"]}, None, ["x@xn--bcher-kva.de"]),
    ],
)
def test_parse_raw_overrides(kwargs, envelope, recipients):
    built = raw(**kwargs)
    if envelope:
        assert built.envelope_from == envelope
    if recipients:
        assert built.recipients == recipients
    assert b"Bcc" not in built.data


def test_parse_raw_sender_header_wins_for_envelope():
    built = raw("From: a@example.com, b@example.com\nSender: s@example.com\nTo: t@example.org\n\nx")
    assert built.envelope_from == "s@example.com"


@pytest.mark.parametrize(
    "message_id", [None, "no-brackets@example.com", "<no-at-sign>", "<two words@example.com>"]
)
def test_parse_raw_adds_message_id_when_missing_or_invalid(message_id):
    head = "From: a@example.com\nTo: b@example.org\nSubject: s\n"
    if message_id:
        head += f"Message-ID: {message_id}\n"
    built = raw(head + "\nbody\n", message_id_domain="relay.test")
    assert re.fullmatch(r"<[0-9a-f]{32}@relay\.test>", built.message_id)
    msg = parse(built.data)
    assert msg.get_all("Message-ID") == [built.message_id]
    assert msg["Date"] is not None  # added because missing


def test_parse_raw_message_id_domain_defaults_to_sender():
    built = raw("From: a@sender.example\nTo: b@example.org\n\nbody")
    assert built.message_id.endswith("@sender.example>")


def test_parse_raw_without_body():
    built = raw("From: a@example.com\nTo: b@example.org\nSubject: s")
    assert built.data.endswith(b"\r\n\r\n")
    assert parse(built.data)["Subject"] == "s"


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("To: b@example.org\n\nbody", {}, "no From header"),
        ("From: a@example.com\nSubject: s\n\nbody", {}, "no recipients"),
        ("From: a@example.com\nTo: undisclosed-recipients:;\n\nbody", {}, "no recipients"),
        ("From: a@example.com\nTo: b@example.org\n\nbody", {"recipients": []}, "no recipients"),
        ("From: a@example.com\nTo: not an address\n\nbody", {}, "To header"),
        ("From: a@example.com\nTo: b@\n\nbody", {}, "To header"),
        ("From: nobody\nTo: b@example.org\n\nbody", {}, "From header"),
        ("From: a@example.com\nTo: b@example.org\nSubject: Grüße\n\nx", {}, "non-ASCII"),
        ("From: a@example.com\nTo: b@example.org\nX: a\rb\n\nx", {}, "bare CR"),
        ("From: a@example.com\nTo: b@example.org\nX: a\x00b\n\nx", {}, "NUL"),
        ("From: a@example.com\nnot a header\nTo: b@example.org\n\nx", {}, "malformed header"),
        (" folded: first\nFrom: a@example.com\n\nx", {}, "continuation"),
        ("From: a@example.com\nFrom: b@example.com\nTo: c@example.org\n\nx", {}, "2 times"),
        ("From: a@example.com\nTo: b@example.org\nX: " + "y" * 1000 + "\n\nx", {}, "998"),
        ("From: a@example.com\nTo: b@example.org\n\n" + "y" * 1000 + "\n", {}, "998"),
        ("From: a@example.com\nTo: b@example.org\n\nok\r\n" + "y" * 999, {}, "998"),
        ("\nbody only", {}, "no header section"),
        ("   \n", {}, "empty"),
        ("From: a@example.com\n\nx", {"recipients": ["bad address"]}, "not a valid email"),
        ("To: b@example.org\n\nx", {"envelope_from": "nope"}, "not a valid email"),
    ],
)
def test_parse_raw_rejects(text, kwargs, match):
    with pytest.raises(InvalidMessage, match=match):
        raw(text, **kwargs)


header_lines = st.lists(
    st.one_of(
        st.sampled_from(["From", "To", "Cc", "Bcc", "Subject", "Message-ID", "X-A"]).flatmap(
            lambda n: st.text(max_size=40).map(lambda v, n=n: f"{n}: {v}")
        ),
        st.text(max_size=40),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(lines=header_lines, eol=st.sampled_from(["\n", "\r\n"]), body=st.text(max_size=200))
def test_property_parse_raw_never_crashes_and_never_leaks_bcc(lines, eol, body):
    text = eol.join(lines) + eol + eol + body
    try:
        built = raw(text)
    except (InvalidMessage, MessageTooLarge):
        return
    assert_crlf(built.data)
    assert built.recipients
    head = built.data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head)
    assert _MSGID_RE.fullmatch(built.message_id)


_MSGID_RE = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")


def test_parse_raw_without_from_uses_envelope():
    built = raw("To: b@example.org\nSubject: s\n\nbody", envelope_from="a@example.com")
    assert built.envelope_from == "a@example.com"
    assert built.from_header == "a@example.com"


def test_parse_raw_strips_resent_bcc():
    built = raw("From: a@example.com\nTo: b@example.org\nResent-Bcc: x@example.org\n\nbody")
    assert b"x@example.org" not in built.data


@pytest.mark.parametrize("limit_delta", [-1, 0])
def test_parse_raw_size_limit(limit_delta):
    size = len(raw().data)
    if limit_delta < 0:
        with pytest.raises(MessageTooLarge, match="larger than the limit"):
            raw(max_bytes=size + limit_delta)
    else:
        assert len(raw(max_bytes=size).data) == size


def test_parse_raw_too_large_input_refused_before_parsing():
    with pytest.raises(MessageTooLarge):
        raw("From: a@example.com\nTo: b@example.org\n\n" + "x\n" * 1000, max_bytes=100)


def test_parse_raw_normalises_mixed_body_line_endings():
    built = raw("From: a@example.com\nTo: b@example.org\n\none\rtwo\r\nthree\nfour")
    assert built.data.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\nfour\r\n")


def test_build_then_parse_raw_round_trip():
    built = build(
        cc=[Mailbox("c@example.org")],
        bcc=[Mailbox("hidden@example.org")],
        html="<b>x</b>",
        attachments=[FILE],
    )
    again = raw(built.data)
    assert again.message_id == built.message_id
    assert again.recipients == ["bob@example.org", "c@example.org"]  # Bcc is not in the data
    assert again.data == built.data
    assert again.subject == built.subject


# ----------------------------------------------------------------------------- links

LINK_HTML = (
    '<p><a href="https://www.sampleservice.com/email-confirmation/39349234">Confirm</a>'
    '<a href="mailto:help@example.com">mail</a> <img src="cid:logo@rb">'
    '<a href="javascript:alert(1)">js</a> <a href="/relative">rel</a>'
    '<img src="HTTP://cdn.example.com/i.png"/> <a href="https://x.example/?a=1&amp;b=2">q</a>'
    "Visit https://text-in-html.example/page.</p>"
    '<script>var u = "https://script.example/";</script>'
    '<a href="https://www.sampleservice.com/email-confirmation/39349234">again</a>'
)


@pytest.mark.parametrize(
    ("text", "html", "expected"),
    [
        (
            None,
            LINK_HTML,
            [
                "https://www.sampleservice.com/email-confirmation/39349234",
                "HTTP://cdn.example.com/i.png",
                "https://x.example/?a=1&b=2",
                "https://text-in-html.example/page",
            ],
        ),
        (
            "Confirm: https://a.example/confirm?t=1.\n"
            "(see http://b.example/x) and https://en.wikipedia.org/wiki/Foo_(bar),\n"
            "<https://c.example/angle> mailto:x@example.com ftp://no.example\n",
            None,
            [
                "https://a.example/confirm?t=1",
                "http://b.example/x",
                "https://en.wikipedia.org/wiki/Foo_(bar)",
                "https://c.example/angle",
            ],
        ),
        (
            "Plain https://both.example/1 first",
            '<a href="https://both.example/1">1</a><a href="https://html.example/2">2</a>',
            ["https://both.example/1", "https://html.example/2"],
        ),
        ("nothing here", "<p>none</p>", []),
    ],
)
def test_extract_links(text, html, expected):
    built = build(text=text, html=html, attachments=[FILE])
    assert extract_links(built.data) == expected


def test_extract_links_decodes_transfer_encoding_and_skips_attachments():
    html = "<p>Grüße</p>" + '<a href="https://qp.example/ü?x=1">link</a>' * 3
    attached = AttachmentSpec("page.html", b'<a href="https://attached.example/">', "text/html")
    built = build(text=None, html=html, attachments=[attached])
    assert b"quoted-printable" in built.data
    assert extract_links(built.data) == ["https://qp.example/ü?x=1"]


def test_extract_links_from_raw_base64_part():
    body = base64.b64encode(b"see https://b64.example/path").decode()
    message = (
        "From: a@example.com\r\nTo: b@example.org\r\nContent-Type: text/plain\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n"
    ).encode()
    assert extract_links(message) == ["https://b64.example/path"]


def test_parse_raw_keeps_a_body_line_of_exactly_998():
    body = "x" * 998
    built = raw(f"From: a@example.com\nTo: b@example.org\n\nok\n{body}\n")
    assert built.data.endswith(b"\r\n\r\nok\r\n" + body.encode() + b"\r\n")


def test_building_a_message_takes_a_few_dozen_calls_not_thousands():
    """The gain of the hand-written serialiser, counted in Python calls (which do not vary
    between runs): a text + html message takes a few dozen; email.message's set_content
    and as_bytes take about 2,500, and POST /api/send then runs about 5 times the
    instructions (docs/benchmarks.md, "Hot-path machinery")."""
    import sys

    spec = make_spec(subject="Your order", text="Hello Bob\n" * 10, html="<p>Hello</p>" * 10)
    build_message(spec, max_bytes=MAX)  # compiled patterns and caches are ready
    calls = 0

    def count(_frame, event, _arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        build_message(spec, max_bytes=MAX)
    finally:
        sys.setprofile(None)
    assert calls < 150, f"{calls} Python calls to build one text + html message"
