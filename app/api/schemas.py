"""Request schemas for ``POST /api/send`` (pydantic v2).

Validation here is the API boundary: it turns a JSON body into a
:class:`SendRequest` (or a :class:`pydantic.ValidationError` that
:func:`errors_to_fields` maps to ``{"dotted.path": "what is wrong"}``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import re
from email import policy as _policy
from email.parser import Parser
from typing import Annotated, Any, Literal

import pydantic
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.domain import headers
from app.domain.mime import AttachmentSpec, Mailbox, MessageSpec

__all__ = [
    "MAX_RECIPIENTS",
    "MAX_TAGS",
    "Address",
    "Attachment",
    "SendRequest",
    "errors_to_fields",
]

MAX_RECIPIENTS = 1000
MAX_TAGS = 20

_TAG = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_WS = re.compile(r"\s+")

# field names whose presence conflicts with ``raw``
_RAW_CONFLICTS = (
    "subject",
    "text",
    "html",
    "attachments",
    "headers",
    "cc",
    "bcc",
    "reply_to",
    "received",
)

def _error(message: str, sub: str | None = None) -> PydanticCustomError:
    """A validation error; ``sub`` is appended to the error location by errors_to_fields."""
    return PydanticCustomError("relayboard", message, {"sub": sub} if sub is not None else None)


def _header_safe(value: str, sub: str | None = None) -> str:
    """Refuse text that would break out of a header line (CRLF injection)."""
    problem = headers.text_problem(value)
    if problem:
        raise _error(problem, sub)
    return value


def _split_address(value: str) -> dict[str, Any]:
    """Split ``"Name <addr>"`` / ``"<addr>"`` / ``"addr"`` into {"email", "name"}."""
    s = value.strip()
    if not s.endswith(">"):
        if "<" in s or ">" in s:
            raise _error("is not a valid address; use 'Name <user@example.com>'")
        return {"email": s}
    lt = s.rfind("<")
    if lt == -1:
        raise _error("is not a valid address: '>' without '<'")
    email = s[lt + 1 : -1].strip()
    name = s[:lt].strip()
    if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    elif "<" in name or ">" in name or '"' in name:
        raise _error("is not a valid address; quote a display name containing '<', '>' or '\"'")
    return {"email": email, "name": name or None}


@functools.lru_cache(maxsize=4096)
def _normalized_email(address: str) -> tuple[str, str | None]:
    """Return (normalised address, None) or ("", what is wrong); senders repeat, so cached."""
    try:
        # no SMTPUTF8: a non-ASCII local part cannot be relayed by the gateway
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return "", str(exc)
    return result.normalized, None


class Address(BaseModel):
    """A mailbox: ``"Name <addr>"``, ``"addr"`` or ``{"email": ..., "name": ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str
    name: str | None = Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _split_address(data)
        return data

    @field_validator("email")
    @classmethod
    def _valid_email(cls, v: str) -> str:
        _header_safe(v)
        normalized, problem = _normalized_email(v.strip())
        if problem is not None:
            raise _error(problem)
        return normalized

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str | None) -> str | None:
        if v is None:
            return None
        _header_safe(v)
        return v.strip() or None

    def to_mailbox(self) -> Mailbox:
        return Mailbox(email=self.email, name=self.name)

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class Attachment(BaseModel):
    """An attachment; ``content`` is base64 in JSON and decoded bytes in Python."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content: bytes
    content_type: str | None = Field(default=None, validate_default=True)
    disposition: Literal["attachment", "inline"] = "attachment"
    cid: str | None = Field(default=None, validate_default=True)

    @field_validator("filename")
    @classmethod
    def _valid_filename(cls, v: str) -> str:
        _header_safe(v)
        if not v.strip():
            raise _error("must not be blank")
        return v.strip()

    @field_validator("content", mode="before")
    @classmethod
    def _decode_base64(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return base64.b64decode(_WS.sub("", v), validate=True)
            except (binascii.Error, ValueError):
                raise _error("not valid base64") from None
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)  # Python callers may pass the decoded content directly
        raise _error("must be a base64 string")

    @field_serializer("content", when_used="json")
    def _encode_base64(self, v: bytes) -> str:
        return base64.b64encode(v).decode("ascii")

    @field_validator("content_type")
    @classmethod
    def _valid_content_type(cls, v: str | None, info: ValidationInfo) -> str:
        if v is None:
            guessed, _ = mimetypes.guess_type(info.data.get("filename") or "", strict=False)
            if not guessed or guessed.startswith(("multipart/", "message/")):
                return "application/octet-stream"
            return guessed
        v = v.strip().lower()
        problem = headers.content_type_problem(v)
        if problem:
            raise _error(problem)
        return v

    @field_validator("cid")
    @classmethod
    def _valid_cid(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("disposition") == "inline":
                raise _error("required when disposition is 'inline'")
            return None
        v = headers.content_id(_header_safe(v))
        problem = headers.content_id_problem(v)
        if problem:
            raise _error(problem)
        return v

    def to_spec(self) -> AttachmentSpec:
        return AttachmentSpec(
            filename=self.filename,
            content=self.content,
            content_type=self.content_type or "application/octet-stream",
            disposition=self.disposition,
            cid=self.cid,
        )


def _check_tag(v: str) -> str:
    if not _TAG.match(v):
        raise _error("must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return v


Tag = Annotated[str, AfterValidator(_check_tag)]


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, (str, dict)) else v


class SendRequest(BaseModel):
    """Body of ``POST /api/send``: structured fields, or ``raw`` (a whole message)."""

    model_config = ConfigDict(extra="forbid")

    from_: Address | None = Field(default=None, alias="from")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: Address | None = None
    subject: str | None = Field(default=None, max_length=998)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    priority: Literal["high", "normal", "low"] = "normal"
    received: list[str] = Field(default_factory=list)
    raw: str | None = Field(default=None, min_length=1)

    # ---- per-field validation

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _single_to(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("received", mode="before")
    @classmethod
    def _single_received(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("subject")
    @classmethod
    def _valid_subject(cls, v: str | None) -> str | None:
        return None if v is None else _header_safe(v)

    @field_validator("received")
    @classmethod
    def _valid_received(cls, v: list[str]) -> list[str]:
        out = []
        for i, value in enumerate(v):
            _header_safe(value, str(i))
            value = value.strip()
            if value[:9].lower() == "received:":
                value = value[9:].strip()
            if not value:
                raise _error("must not be empty", str(i))
            if not value.isascii():
                raise _error("must be ASCII (Received headers are never encoded)", str(i))
            out.append(value)
        return out

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            problem = headers.name_problem(name) or headers.value_problem(value)
            if problem:
                raise _error(problem, name)
        return v

    # ---- cross-field rules

    @model_validator(mode="after")
    def _check_shape(self) -> SendRequest:
        if self.raw is not None:
            for name in _RAW_CONFLICTS:
                value = getattr(self, name)
                if value if isinstance(value, (list, dict)) else value is not None:
                    where = "Received headers" if name == "received" else name
                    raise _error(
                        f"cannot be combined with 'raw' (put the {where} in the raw message)",
                        name,
                    )
            count = len(self.to) if self.to else _count_raw_recipients(self.raw)
            if count == 0:
                raise _error(
                    "no recipients: the raw message has no To, Cc or Bcc address and 'to' "
                    "was not given",
                    "raw",
                )
        else:
            if self.from_ is None:
                raise _error("required (or send a whole message in 'raw')", "from")
            if self.subject is None:
                raise _error("required (or send a whole message in 'raw')", "subject")
            if self.text is None and self.html is None and not self.attachments:
                raise _error("one of text, html or attachments is required", "text")
            count = len(self.to) + len(self.cc) + len(self.bcc)
            if count == 0:
                raise _error("at least one recipient (to, cc or bcc) is required", "to")
        if count > MAX_RECIPIENTS:
            raise _error(f"too many recipients: {count} (at most {MAX_RECIPIENTS})", "to")
        return self

    # ---- conversion to the domain layer

    def to_message_spec(self) -> MessageSpec:
        """The structured request as a domain MessageSpec (not for ``raw`` requests)."""
        if self.raw is not None or self.from_ is None:
            raise ValueError("a raw request has no MessageSpec; use parse_raw")
        return MessageSpec(
            sender=self.from_.to_mailbox(),
            to=[a.to_mailbox() for a in self.to],
            cc=[a.to_mailbox() for a in self.cc],
            bcc=[a.to_mailbox() for a in self.bcc],
            reply_to=self.reply_to.to_mailbox() if self.reply_to else None,
            subject=self.subject or "",
            text=self.text,
            html=self.html,
            attachments=[a.to_spec() for a in self.attachments],
            headers=dict(self.headers),
            received=list(self.received),
        )

    def raw_envelope(self) -> tuple[str | None, list[str] | None]:
        """(envelope_from, recipients) overrides to pass to ``parse_raw`` for a raw request."""
        return (
            self.from_.email if self.from_ else None,
            [a.email for a in self.to] or None,
        )


def _count_raw_recipients(raw: str) -> int:
    """Best-effort count of To/Cc/Bcc addresses in a raw message (parse_raw re-checks)."""
    try:
        msg = Parser(policy=_policy.SMTP).parsestr(raw, headersonly=True)
        total = 0
        for name in ("To", "Cc", "Bcc"):
            for header in msg.get_all(name) or ():
                total += len(header.addresses)
        return total
    except Exception:  # malformed headers: let parse_raw report the precise problem
        return 1


# --------------------------------------------------------------------------- errors

_TYPE_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object or a string",
}


def errors_to_fields(exc: pydantic.ValidationError) -> dict[str, str]:
    """Map a ValidationError to ``{"dotted.path": "short message"}`` (first error per path)."""
    out: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        ctx = err.get("ctx") or {}
        if ctx.get("sub") is not None:
            loc.append(str(ctx["sub"]))
        path = ".".join(loc) or "body"
        etype = err["type"]
        if etype == "model_type" and ctx.get("class_name") == "Address":
            message = "must be an address string or an object {email, name}"
        elif etype in _TYPE_MESSAGES:
            message = _TYPE_MESSAGES[etype]
        elif etype == "too_long":
            message = f"too many items (at most {ctx.get('max_length')})"
        elif etype == "string_too_short":
            message = "must not be empty"
        else:
            message = err["msg"]
            if etype == "value_error":
                message = message.removeprefix("Value error, ")
        out.setdefault(path, message)
    return out
