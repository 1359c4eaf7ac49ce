"""MIME construction and raw-message normalisation for outbound mail.

Pure standard library (no Flask / SQLAlchemy / pydantic).

``build_message`` serialises the message directly to bytes instead of going
through ``email.message.EmailMessage`` + ``set_content``: the generic email
package path costs ~1.1 ms for a text+html message, which is far too slow for
the enqueue path; the hand-written serialiser below produces standard,
``email``-parseable output (CRLF line endings, RFC 2047 encoded words,
RFC 2231 parameters, quoted-printable/base64 bodies) in a few tens of µs.

``parse_raw`` validates a caller-supplied RFC 5322 message with
``email.parser.BytesParser(policy=email.policy.SMTP)`` and only edits the
header block (Bcc removed, Message-ID/Date added when needed), so the body and
the other headers stay byte-for-byte what the caller sent (modulo CRLF
normalisation).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import time
from dataclasses import dataclass
from email import policy as _policy
from email.errors import InvalidHeaderDefect
from email.parser import BytesParser
from typing import AnyStr
from urllib.parse import quote as _urlquote

from app.domain import headers as rules

__all__ = [
    "AttachmentSpec",
    "BuiltMessage",
    "InvalidMessage",
    "Mailbox",
    "MessageSpec",
    "MessageTooLarge",
    "build_message",
    "new_message_id",
    "parse_raw",
]


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Mailbox:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class AttachmentSpec:
    filename: str
    content: bytes
    content_type: str
    disposition: str = "attachment"  # "attachment" | "inline"
    cid: str | None = None


@dataclass(frozen=True)
class MessageSpec:
    sender: Mailbox
    to: list[Mailbox]
    cc: list[Mailbox]
    bcc: list[Mailbox]
    reply_to: Mailbox | None
    subject: str
    text: str | None
    html: str | None
    attachments: list[AttachmentSpec]
    headers: dict[str, str]
    received: list[str]


@dataclass(frozen=True)
class BuiltMessage:
    envelope_from: str  # bare address
    recipients: list[str]  # envelope recipients: to+cc+bcc, deduplicated, order kept
    message_id: str  # "<...@domain>"
    subject: str
    from_header: str  # as shown (decoded, human readable)
    to_header: list[str]
    data: bytes  # the full message as it will be sent, CRLF line endings, NO Bcc header


class MessageTooLarge(ValueError):
    """The serialised message exceeds ``max_bytes``."""


class InvalidMessage(ValueError):
    """The message cannot be sent as given; the text says what is wrong."""


# --------------------------------------------------------------------------- constants

#: Header fields the gateway writes itself; they may not be supplied via ``headers``.
STRUCTURAL_HEADERS = rules.STRUCTURAL

_CRLF = b"\r\n"
_MAX_LINE = 998  # RFC 5322 §2.1.1 hard limit (excluding CRLF)
_SOFT_LINE = 78  # RFC 5322 §2.1.1 recommended limit
_EW_BYTES = 39  # UTF-8 bytes per RFC 2047 B-word: 52 base64 chars, no padding

_FOLD_SPLIT = re.compile(r"(?<=\S)(?=[ \t])")
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_ADDR = re.compile(r'[^\s<>@,;:"\\]+@[^\s<>@,;:"\\]+\Z')
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z|\[[!-Z^-~]+\]\Z")
_MSGID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>\Z")  # printable ASCII, no < > @ or space
_EOL = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_EOL = re.compile(rb"\r?\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_RAW_FIELD = re.compile(rb"([!-9;-~]+):")
_RFC2231_SAFE = "!#$&+-.^_`|~"

_SINGLETON_HEADERS = (
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "message-id",
    "date",
    "in-reply-to",
    "references",
)

_PARSED_HEADERS = ("from", "sender", "to", "cc", "bcc", "subject")

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_date_cache: tuple[int, str] = (-1, "")

_PARSER = BytesParser(policy=_policy.SMTP)


# --------------------------------------------------------------------------- small helpers


def new_message_id(domain: str) -> str:
    """Return a fresh RFC 5322 Message-ID ``<{128 random bits in hex}@{domain}>``."""
    domain = domain.strip().strip(".")
    if not domain or not _DOMAIN.match(domain):
        raise InvalidMessage(f"invalid Message-ID domain {domain!r}")
    return f"<{secrets.token_hex(16)}@{domain}>"


def _rfc5322_date() -> str:
    """Current time as an RFC 5322 date in UTC (cached per second)."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] == now:
        return cached[1]
    t = time.gmtime(now)
    value = (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )
    _date_cache = (now, value)
    return value


def _check_text(what: str, value: str) -> str:
    """Refuse header text that could break the header structure."""
    problem = rules.text_problem(value)
    if problem:
        raise InvalidMessage(f"{what} {problem}")
    return value


def _ascii_addr(addr: str, what: str) -> str:
    """Validate a bare address loosely and return it with an ASCII (IDNA) domain."""
    addr = addr.strip()
    if not _ADDR.match(addr):
        raise InvalidMessage(f"{what}: {addr!r} is not a valid email address")
    if addr.isascii():
        return addr
    local, _, domain = addr.rpartition("@")
    if not local.isascii():
        raise InvalidMessage(
            f"{what}: {addr!r} has a non-ASCII local part, which needs SMTPUTF8 (not supported)"
        )
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidMessage(f"{what}: {addr!r} has an invalid internationalised domain") from exc
    return f"{local}@{domain}"


def _dedupe(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        key = a.lower()
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def _encoded_words(value: str) -> str:
    """RFC 2047 B-encoded words (UTF-8), separated by single spaces (fold points)."""
    data = value.encode("utf-8")
    words = []
    start = 0
    n = len(data)
    while start < n:
        end = min(start + _EW_BYTES, n)
        # never cut inside a UTF-8 sequence: back off over continuation bytes
        while end < n and (data[end] & 0xC0) == 0x80:
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:end]).decode("ascii") + "?=")
        start = end
    return " ".join(words)


def _fold(name: str, value: str) -> bytes:
    """Serialise ``Name: value`` (ASCII) folded at whitespace to ~78 columns, CRLF-terminated."""
    line = f"{name}: {value}" if value else f"{name}:"
    if len(line) <= _SOFT_LINE:
        return line.encode("ascii") + _CRLF
    lines: list[str] = []
    cur = f"{name}:"
    first = True
    for part in _FOLD_SPLIT.split(value):
        if first:
            cur = f"{cur} {part}"
            first = False
        elif len(cur) + len(part) > _SOFT_LINE:
            lines.append(cur)
            cur = part  # starts with whitespace: a valid continuation line
        else:
            cur += part
    lines.append(cur)
    if any(len(x) > _MAX_LINE for x in lines):
        raise InvalidMessage(f"header {name} has a word longer than {_MAX_LINE} characters")
    return "\r\n".join(lines).encode("ascii") + _CRLF


def _unstructured(name: str, value: str) -> bytes:
    value = value.strip()
    # ASCII text that looks like an encoded word must itself be encoded to survive decoding
    if value.isascii() and "=?" not in value:
        try:
            return _fold(name, value)
        except InvalidMessage:
            pass  # a huge unbreakable word: encoded words can be split anywhere
    return _fold(name, _encoded_words(value))


def _display(mb: Mailbox) -> tuple[str, str]:
    """Return (human readable form, header form) of a mailbox."""
    addr = _ascii_addr(mb.email, "address")
    name = (mb.name or "").strip()
    if not name:
        return addr, addr
    _check_text("display name", name)
    if _SPECIALS.search(name) or "\t" in name or "  " in name:  # keep whitespace as given
        name_q = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        name_q = name
    human = f"{name_q} <{addr}>"
    if name.isascii() and "=?" not in name:
        return human, human
    return human, f"{_encoded_words(name)} <{addr}>"


def _rfc2231_params(key: str, value: str) -> list[str]:
    """One MIME parameter as ``key="v"`` or RFC 2231 (possibly continued) segments."""
    if value.isascii() and not rules.CONTROL.search(value) and len(value) <= 60:
        return [f'{key}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"']
    enc = _urlquote(value, safe=_RFC2231_SAFE, encoding="utf-8")
    if len(enc) <= 60:
        return [f"{key}*=utf-8''{enc}"]
    segments = []
    pos = 0
    n = len(enc)
    i = 0
    while pos < n:
        end = min(pos + 60, n)
        # never split a %XX escape
        pct = enc.rfind("%", max(pos, end - 2), end)
        if pct != -1 and end < n and pct + 3 > end:
            end = pct
        chunk = enc[pos:end]
        prefix = "utf-8''" if i == 0 else ""
        segments.append(f"{key}*{i}*={prefix}{chunk}")
        pos = end
        i += 1
    return segments


def _param_header(name: str, value: str, params: list[str]) -> bytes:
    one = f"{name}: {value}; " + "; ".join(params) if params else f"{name}: {value}"
    if len(one) <= _SOFT_LINE:
        return one.encode("ascii") + _CRLF
    return (f"{name}: {value};\r\n " + ";\r\n ".join(params)).encode("ascii") + _CRLF


# --------------------------------------------------------------------------- MIME parts
# A part is (header bytes, body bytes); body ends with CRLF (or is empty).

_Part = tuple[bytes, bytes]


def _longest_line(text: AnyStr, newline: AnyStr) -> int:
    """Return the length of the longest line.

    Linear: a regex like ``[^\n]{999}`` retries from every position of every line
    shorter than the limit, which is quadratic in the line length (a single-line 500-char
    HTML body cost more than the rest of the request).
    """
    return max(map(len, text.split(newline)))


def _text_part(subtype: str, text: str) -> _Part:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    ctype = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii")
    if text.isascii() and "\x00" not in text and _longest_line(text, "\n") <= _MAX_LINE:
        return (
            ctype + b"Content-Transfer-Encoding: 7bit\r\n",
            text.encode("ascii").replace(b"\n", _CRLF),
        )
    raw = text.encode("utf-8", "surrogatepass")
    qp = binascii.b2a_qp(raw, istext=True)
    b64_len = (len(raw) + 2) // 3 * 4
    if len(qp) > b64_len + b64_len // 38:
        return (
            ctype + b"Content-Transfer-Encoding: base64\r\n",
            base64.encodebytes(raw).replace(b"\n", _CRLF),
        )
    body = qp.replace(b"\n", _CRLF)
    if not body.endswith(_CRLF):
        body += _CRLF
    return ctype + b"Content-Transfer-Encoding: quoted-printable\r\n", body


def _attachment_part(att: AttachmentSpec, index: int) -> _Part:
    what = f"attachment {index}"
    filename = _check_text(f"{what} filename", att.filename.strip())
    ctype = att.content_type.strip().lower()
    problem = rules.content_type_problem(ctype)
    if problem:
        raise InvalidMessage(f"{what}: content type {problem}")
    if att.disposition not in ("attachment", "inline"):
        raise InvalidMessage(f"{what}: disposition must be 'attachment' or 'inline'")
    headers = []
    if filename:
        headers.append(_param_header("Content-Type", ctype, _rfc2231_params("name", filename)))
        headers.append(
            _param_header(
                "Content-Disposition", att.disposition, _rfc2231_params("filename", filename)
            )
        )
    else:
        headers.append(f"Content-Type: {ctype}\r\n".encode("ascii"))
        headers.append(f"Content-Disposition: {att.disposition}\r\n".encode("ascii"))
    headers.append(b"Content-Transfer-Encoding: base64\r\n")
    if att.cid:
        cid = rules.content_id(_check_text(f"{what} Content-ID", att.cid))
        problem = rules.content_id_problem(cid)
        if problem:
            raise InvalidMessage(f"{what}: Content-ID {problem}")
        headers.append(f"Content-ID: <{cid}>\r\n".encode("ascii"))
    elif att.disposition == "inline":
        raise InvalidMessage(f"{what}: an inline attachment needs a cid")
    return b"".join(headers), base64.encodebytes(att.content).replace(b"\n", _CRLF)


def _multipart(subtype: str, parts: list[_Part], extra: str = "") -> _Part:
    boundary = "=_" + os.urandom(16).hex()
    delim = b"--" + boundary.encode("ascii")
    chunks = []
    for headers, body in parts:
        chunks.append(delim + _CRLF + headers + _CRLF + body)
    # the CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1)
    out = _CRLF.join(chunks) + _CRLF + delim + b"--" + _CRLF
    header = f'Content-Type: multipart/{subtype};{extra}\r\n boundary="{boundary}"\r\n'
    return header.encode("ascii"), out


# --------------------------------------------------------------------------- build


def build_message(
    spec: MessageSpec, *, message_id_domain: str | None = None, max_bytes: int
) -> BuiltMessage:
    """Serialise ``spec`` into an RFC 5322 / MIME message (CRLF line endings, no Bcc)."""
    if spec.text is None and spec.html is None and not spec.attachments:
        raise InvalidMessage("the message has no body: give text, html or attachments")
    # cheap early size check before any encoding work (base64 grows by 4/3)
    approx = sum(len(a.content) for a in spec.attachments) * 4 // 3
    approx += len(spec.text or "") + len(spec.html or "")
    if approx > max_bytes:
        raise MessageTooLarge(
            f"message is at least {approx} bytes, larger than the limit of {max_bytes} bytes"
        )

    envelope_from = _ascii_addr(spec.sender.email, "from")
    from_human, from_hdr = _display(spec.sender)
    to_pairs = [_display(m) for m in spec.to]
    cc_pairs = [_display(m) for m in spec.cc]
    recipients = _dedupe(
        [_ascii_addr(m.email, "recipient") for m in (*spec.to, *spec.cc, *spec.bcc)]
    )
    if not recipients:
        raise InvalidMessage("no recipients: give at least one of to, cc or bcc")
    subject = _check_text("subject", spec.subject)

    domain = message_id_domain or envelope_from.rpartition("@")[2]
    message_id = new_message_id(domain)

    head: list[bytes] = []
    for i, rec in enumerate(spec.received):
        rec = rec.strip()
        if rec[:9].lower() == "received:":
            rec = rec[9:].strip()
        _check_text(f"received header {i}", rec)
        if not rec:
            raise InvalidMessage(f"received header {i} is empty")
        if not rec.isascii():
            raise InvalidMessage(f"received header {i} must be ASCII")
        head.append(_fold("Received", rec))
    head.append(b"Date: " + _rfc5322_date().encode("ascii") + _CRLF)
    head.append(_fold("From", from_hdr))
    if spec.reply_to is not None:
        head.append(_fold("Reply-To", _display(spec.reply_to)[1]))
    if to_pairs:
        head.append(_fold("To", ", ".join(p[1] for p in to_pairs)))
    elif not cc_pairs:
        head.append(b"To: undisclosed-recipients:;\r\n")
    if cc_pairs:
        head.append(_fold("Cc", ", ".join(p[1] for p in cc_pairs)))
    head.append(_unstructured("Subject", subject))
    head.append(b"Message-ID: " + message_id.encode("ascii") + _CRLF)
    head.append(b"MIME-Version: 1.0\r\n")
    for name, value in spec.headers.items():
        problem = rules.name_problem(name) or rules.value_problem(value)
        if problem:
            raise InvalidMessage(f"header {name!r} {problem}")
        head.append(_unstructured(name, value))

    # body structure: mixed[ related[ alternative[text, html], inline... ], attachments... ]
    core: _Part | None = None
    if spec.text is not None and spec.html is not None:
        core = _multipart(
            "alternative", [_text_part("plain", spec.text), _text_part("html", spec.html)]
        )
    elif spec.text is not None:
        core = _text_part("plain", spec.text)
    elif spec.html is not None:
        core = _text_part("html", spec.html)

    inline: list[_Part] = []
    others: list[_Part] = []
    for i, att in enumerate(spec.attachments):
        part = _attachment_part(att, i)
        if spec.html is not None and att.disposition == "inline":
            inline.append(part)
        else:
            others.append(part)
    if inline:
        assert core is not None
        inner = "text/html" if spec.text is None else "multipart/alternative"
        core = _multipart("related", [core, *inline], f' type="{inner}";')
    if others:
        core = _multipart("mixed", [core, *others] if core is not None else others)
    assert core is not None

    data = b"".join(head) + core[0] + _CRLF + core[1]
    if len(data) > max_bytes:
        raise MessageTooLarge(
            f"message is {len(data)} bytes, larger than the limit of {max_bytes} bytes"
        )
    return BuiltMessage(
        envelope_from=envelope_from,
        recipients=recipients,
        message_id=message_id,
        subject=subject,
        from_header=from_human,
        to_header=[p[0] for p in to_pairs],
        data=data,
    )


# --------------------------------------------------------------------------- raw


def _header_addresses(headers: dict, name: str) -> list[str]:
    header = headers.get(name.lower())
    if header is None:
        return []
    try:
        bad = [d for d in header.defects if isinstance(d, InvalidHeaderDefect)]
        addresses = header.addresses
    except Exception as exc:  # the header parser raises for some pathological input
        raise InvalidMessage(f"{name} header cannot be parsed: {exc}") from exc
    if bad:
        raise InvalidMessage(f"{name} header contains an unparseable address: {str(header)!r}")
    out = []
    for a in addresses:
        if not a.username or not a.domain:
            raise InvalidMessage(f"{name} header contains an invalid address {a.addr_spec!r}")
        out.append(_ascii_addr(a.addr_spec, f"{name} header"))
    return out


def parse_raw(
    raw: str | bytes,
    *,
    envelope_from: str | None,
    recipients: list[str] | None,
    message_id_domain: str | None = None,
    max_bytes: int,
) -> BuiltMessage:
    """Validate and normalise a complete RFC 5322 message supplied by the caller.

    Recipients come from To/Cc/Bcc unless ``recipients`` is given; the envelope
    sender from Sender/From unless ``envelope_from`` is given.  The Bcc header
    is removed, a Message-ID (and Date) is added when missing or invalid, and
    line endings are normalised to CRLF.  Everything else is kept as sent.
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"message is not valid text: {exc}") from exc
    else:
        data = bytes(raw)
    if not data.strip():
        raise InvalidMessage("message is empty")

    # ---- split header block / body at the first empty line
    if data.startswith((b"\r\n", b"\n")):
        raise InvalidMessage("message has no header section (it starts with an empty line)")
    m = _HEADER_END.search(data)
    if m:
        head, body = data[: m.start()], data[m.end() :]
    else:
        head, body = data.rstrip(b"\r\n"), b""

    # CRLF normalisation only ever adds bytes to the body: refuse before any more work
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"message body alone is {len(body)} bytes, larger than the limit of {max_bytes} bytes"
        )
    if b"\x00" in head:
        raise InvalidMessage("header section contains a NUL byte")
    if not head.isascii():
        raise InvalidMessage(
            "header section contains non-ASCII (8-bit) bytes; "
            "encode non-ASCII header text as RFC 2047 encoded words"
        )
    if _BARE_CR.search(head):
        raise InvalidMessage("header section contains a bare CR (not followed by LF)")

    # ---- group physical lines into fields, validating the syntax
    fields: list[tuple[str, list[bytes]]] = []
    for n, line in enumerate(_HEADER_EOL.split(head), start=1):
        if len(line) > _MAX_LINE:
            raise InvalidMessage(f"header line {n} is longer than {_MAX_LINE} characters")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise InvalidMessage("message starts with a folded (continuation) header line")
            fields[-1][1].append(line)
            continue
        fm = _RAW_FIELD.match(line)
        if not fm:
            raise InvalidMessage(
                f"malformed header line {n}: {line[:60].decode('ascii')!r} (expected 'Name: value')"
            )
        fields.append((fm.group(1).decode("ascii").lower(), [line]))

    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name] = counts.get(name, 0) + 1
    for name in _SINGLETON_HEADERS:
        if counts.get(name, 0) > 1:
            raise InvalidMessage(f"the {name} header appears {counts[name]} times (at most once)")

    # ---- body: CRLF everywhere, RFC 5322 line length limit
    body = _EOL.sub(_CRLF, body)
    if body and not body.endswith(_CRLF):
        body += _CRLF
    if _longest_line(body, b"\r\n") > _MAX_LINE:
        raise InvalidMessage(
            f"body has a line longer than {_MAX_LINE} characters; "
            "use quoted-printable or base64 transfer encoding"
        )

    # Only the fields the gateway interprets go through the (slow) structured header
    # parser, each exactly once; everything else is passed through untouched.
    wanted = b"\r\n".join(b"\r\n".join(lines) for name, lines in fields if name in _PARSED_HEADERS)
    msg = _PARSER.parsebytes(wanted + b"\r\n\r\n", headersonly=True)
    headers = {}
    for name in _PARSED_HEADERS:
        if name in counts:
            try:
                headers[name] = msg[name]
            except Exception as exc:  # the header parser raises for some pathological input
                raise InvalidMessage(f"the {name.title()} header cannot be parsed") from exc

    from_addrs = _header_addresses(headers, "From")
    sender_addrs = _header_addresses(headers, "Sender")
    if envelope_from is not None:
        envelope = _ascii_addr(envelope_from, "envelope sender")
    elif sender_addrs or from_addrs:
        envelope = (sender_addrs or from_addrs)[0]
    else:
        raise InvalidMessage("message has no From header and no envelope sender was given")

    to_addrs = _header_addresses(headers, "To")
    cc_addrs = _header_addresses(headers, "Cc")
    bcc_addrs = _header_addresses(headers, "Bcc")
    if recipients is None:
        rcpts = _dedupe([*to_addrs, *cc_addrs, *bcc_addrs])
    else:
        rcpts = _dedupe([_ascii_addr(r, "recipient") for r in recipients])
    if not rcpts:
        raise InvalidMessage(
            "no recipients: the message has no To, Cc or Bcc address and none were given"
        )

    message_id = None
    for name, lines in fields:
        if name == "message-id":
            value = b"".join(lines).decode("ascii").partition(":")[2].strip()
            if _MSGID.match(value):
                message_id = value
    keep = [
        lines
        for name, lines in fields
        if name not in ("bcc", "resent-bcc") and not (name == "message-id" and message_id is None)
    ]
    if message_id is None:
        message_id = new_message_id(message_id_domain or envelope.rpartition("@")[2])
        keep.append([b"Message-ID: " + message_id.encode("ascii")])
    if "date" not in counts:
        keep.append([b"Date: " + _rfc5322_date().encode("ascii")])

    out = b"".join(_CRLF.join(lines) + _CRLF for lines in keep) + _CRLF + body
    if len(out) > max_bytes:
        raise MessageTooLarge(
            f"message is {len(out)} bytes, larger than the limit of {max_bytes} bytes"
        )

    from_header = str(headers["from"]) if "from" in headers else envelope
    to_header = [str(a) for a in headers["to"].addresses] if "to" in headers else []
    subject = str(headers["subject"]) if "subject" in headers else ""
    return BuiltMessage(
        envelope_from=envelope,
        recipients=rcpts,
        message_id=message_id,
        subject=subject,
        from_header=from_header,
        to_header=to_header,
        data=out,
    )
