"""SMTP sessions to a relay, reused across messages; the connection probe."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

SECURITY_MODES = ("none", "starttls", "tls")


@dataclass(frozen=True)
class Endpoint:
    """How to reach and log in to one relay (the password already decrypted)."""

    id: int
    name: str
    host: str
    port: int
    security: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    max_per_connection: int = 100


@dataclass(frozen=True)
class Timeouts:
    """Timeouts; aiosmtplib's are per socket operation, so `deadline` caps a whole attempt."""

    connect: float = 10.0
    command: float = 60.0
    deadline: float = 120.0


@dataclass(frozen=True)
class SendResult:
    """What a relay said to one message: the final reply and per-recipient refusals."""

    stage: str  # "data" when the transaction completed, else where it stopped
    code: int
    text: str
    accepted: list[str]
    refused: dict[str, tuple[int, str]]


class TransportError(Exception):
    """A session could not be opened or kept: refused, timeout, reset, TLS, or a reply."""

    def __init__(
        self, kind: str, stage: str, detail: str, code: int | None = None, text: str = ""
    ) -> None:
        super().__init__(f"{kind} at {stage}: {detail}")
        self.kind = kind  # refused | timeout | reset | tls | reply | auth | lost_after_data
        self.stage = stage
        self.detail = detail
        self.code = code
        self.text = text


@functools.lru_cache(maxsize=8)
def tls_context(verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """Return a TLS context: verified against the system store (plus ca_file) unless told not to."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _reply_text(exc: SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def _error(exc: BaseException, stage: str) -> TransportError:
    """Translate an aiosmtplib or socket exception into a TransportError."""
    if isinstance(exc, SMTPAuthenticationError):
        return TransportError("auth", "auth", _reply_text(exc), exc.code, exc.message)
    if isinstance(exc, SMTPResponseException):
        return TransportError("reply", stage, _reply_text(exc), exc.code, exc.message)
    if isinstance(exc, ssl.SSLError):
        return TransportError("tls", stage, str(exc.reason or exc))
    if isinstance(exc, SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return TransportError("timeout", stage, str(exc) or "timed out")
    if isinstance(exc, SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return TransportError("tls", stage, str(cause.reason or cause))
        if isinstance(cause, ConnectionRefusedError):
            return TransportError("refused", stage, "connection refused")
        return TransportError("refused", stage, str(exc))
    if isinstance(exc, SMTPServerDisconnected | ConnectionError | OSError):
        return TransportError("reset", stage, str(exc) or "connection lost")
    if isinstance(exc, SMTPException):
        message = str(exc)
        kind = "tls" if "tls" in message.lower() else "reply"
        return TransportError(kind, stage, message)
    return TransportError("reset", stage, repr(exc))


@dataclass
class StepTiming:
    """One step of opening a session, for the probe."""

    name: str
    ok: bool
    ms: float
    detail: str = ""


HELO_NAME = socket.gethostname()


class RelaySession:
    """One SMTP connection to a relay, reused for many messages."""

    def __init__(self, endpoint: Endpoint, smtp: aiosmtplib.SMTP, timeouts: Timeouts) -> None:
        self.endpoint = endpoint
        self.smtp = smtp
        self.timeouts = timeouts
        self.sent = 0
        self.broken = False
        self.stage = "idle"  # where the current transaction is: mail, rcpt, data
        self.steps: list[StepTiming] = []

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        timeouts: Timeouts,
        *,
        ca_file: str | None = None,
        helo_name: str | None = None,
        steps: list[StepTiming] | None = None,
    ) -> RelaySession:
        """Connect, greet, EHLO, STARTTLS and AUTH as the relay requires; raise TransportError."""
        steps = steps if steps is not None else []
        context = tls_context(endpoint.tls_verify, ca_file) if endpoint.security != "none" else None
        smtp = aiosmtplib.SMTP(
            hostname=endpoint.host,
            port=endpoint.port,
            use_tls=endpoint.security == "tls",
            start_tls=False,  # never opportunistic: a stripped STARTTLS must not downgrade us
            tls_context=context,
            timeout=timeouts.connect,
            local_hostname=helo_name or HELO_NAME,
        )
        stage = "connect"
        started = time.perf_counter()
        mark = started
        try:
            async with asyncio.timeout(timeouts.connect * 3):
                await smtp.connect()
                steps.append(
                    StepTiming("connect", True, _ms(mark), f"{endpoint.host}:{endpoint.port}")
                )
                stage, mark = "ehlo", time.perf_counter()
                smtp.timeout = timeouts.connect
                await smtp.ehlo()
                steps.append(
                    StepTiming(
                        "ehlo",
                        True,
                        _ms(mark),
                        smtp.last_ehlo_response.message.split("\n")[0]
                        if smtp.last_ehlo_response
                        else "",
                    )
                )
                if endpoint.security == "starttls":
                    stage, mark = "starttls", time.perf_counter()
                    if not smtp.supports_extension("starttls"):
                        raise TransportError(
                            "tls",
                            "starttls",
                            "the server does not offer STARTTLS; refusing to send in clear",
                        )
                    await smtp.starttls(tls_context=context)
                    steps.append(StepTiming("starttls", True, _ms(mark)))
                if endpoint.username:
                    stage, mark = "auth", time.perf_counter()
                    await smtp.login(endpoint.username, endpoint.password or "")
                    steps.append(StepTiming("auth", True, _ms(mark), endpoint.username))
        except TransportError as exc:
            steps.append(StepTiming(stage, False, _ms(mark), exc.detail))
            _close_now(smtp)
            raise
        except (Exception, asyncio.CancelledError) as exc:
            _close_now(smtp)
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = _error(exc, stage)
            if isinstance(exc, SMTPConnectResponseError):
                error = TransportError("reply", "connect", _reply_text(exc), exc.code, exc.message)
            steps.append(StepTiming(stage, False, _ms(mark), error.detail))
            raise error from exc
        smtp.timeout = timeouts.command
        session = cls(endpoint, smtp, timeouts)
        session.steps = steps
        return session

    async def send(self, sender: str, recipients: list[str], data: bytes) -> SendResult:
        """Run one mail transaction; raise TransportError if the session fails under it."""
        smtp = self.smtp
        options, encoding = [], "ascii"
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            if not smtp.supports_extension("smtputf8"):
                raise TransportError(
                    "capability", "mail", "the relay does not offer SMTPUTF8 for these addresses"
                )
            options, encoding = ["SMTPUTF8"], "utf-8"
        stage = self.stage = "mail"
        try:
            try:
                await smtp.mail(sender, options=options, encoding=encoding)
            except SMTPResponseException as exc:
                await self._reset(exc.code)
                return SendResult("mail", exc.code, exc.message, [], {})
            stage = self.stage = "rcpt"
            accepted: list[str] = []
            refused: dict[str, tuple[int, str]] = {}
            for recipient in recipients:
                try:
                    await smtp.rcpt(recipient, encoding=encoding)
                    accepted.append(recipient)
                except SMTPRecipientRefused as exc:
                    refused[recipient] = (exc.code, exc.message)
                    if not smtp.is_connected:
                        break
            for recipient in recipients:
                if recipient not in accepted and recipient not in refused:
                    refused[recipient] = (421, "4.4.2 connection closed before RCPT")
            if not accepted:
                code, text = next(iter(refused.values()))
                await self._reset(code)
                return SendResult("rcpt", code, text, [], refused)
            stage = self.stage = "data"
            try:
                reply = await smtp.data(data)
            except SMTPDataError as exc:
                await self._reset(exc.code)
                return SendResult("data", exc.code, exc.message, accepted, refused)
            except (SMTPServerDisconnected, SMTPTimeoutError, ConnectionError, OSError) as exc:
                # The message may be at the relay already: an unknown outcome, not a failure.
                self.broken = True
                raise TransportError(
                    "lost_after_data", "data", str(exc) or "connection lost"
                ) from exc
            self.sent += 1
            self.stage = "idle"
            return SendResult("data", reply.code, reply.message, accepted, refused)
        except TransportError:
            raise
        except (SMTPException, ConnectionError, OSError, TimeoutError) as exc:
            self.broken = True
            raise _error(exc, stage) from exc
        except asyncio.CancelledError:
            self.broken = True  # stopped mid-transaction: the session cannot be reused
            raise

    async def _reset(self, code: int) -> None:
        if code == 421 or not self.smtp.is_connected:
            self.broken = True
            return
        try:
            await self.smtp.rset(timeout=self.timeouts.connect)
        except (SMTPException, ConnectionError, OSError, TimeoutError):
            self.broken = True

    async def close(self) -> None:
        """Say QUIT politely (briefly) and close."""
        transport = self.smtp.transport
        if self.smtp.is_connected and not self.broken:
            with contextlib.suppress(SMTPException, ConnectionError, OSError, TimeoutError):
                await self.smtp.quit(timeout=min(2.0, self.timeouts.connect))
        _close_now(self.smtp, transport)


def _close_now(smtp: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None = None) -> None:
    """Close a client's connection at once, TLS included.

    Closing a TLS transport starts a close_notify exchange that runs on after the call;
    at the end of a pass the event loop closes first (and reports the transport
    as never closed). After QUIT, or a failure, there is nothing left to say: the
    connection is aborted instead.
    """
    transport = transport or smtp.transport
    smtp.close()
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


@dataclass
class ProbeResult:
    """The outcome of a connection probe, step by step."""

    ok: bool
    steps: list[StepTiming]
    total_ms: float
    error: str | None = None
    kind: str | None = None
    code: int | None = None


async def probe(
    endpoint: Endpoint, timeouts: Timeouts, *, ca_file: str | None = None
) -> ProbeResult:
    """Open a session (connect, EHLO, STARTTLS, AUTH), send NOOP, and time each step."""
    steps: list[StepTiming] = []
    started = time.perf_counter()
    try:
        session = await RelaySession.open(endpoint, timeouts, ca_file=ca_file, steps=steps)
    except TransportError as exc:
        return ProbeResult(False, steps, _ms(started), exc.detail, exc.kind, exc.code)
    mark = time.perf_counter()
    try:
        reply = await session.smtp.noop(timeout=timeouts.connect)
        steps.append(StepTiming("noop", True, _ms(mark), f"{reply.code} {reply.message}"))
    except (SMTPException, ConnectionError, OSError, TimeoutError) as exc:
        error = _error(exc, "noop")
        steps.append(StepTiming("noop", False, _ms(mark), error.detail))
        session.broken = True
        await session.close()
        return ProbeResult(False, steps, _ms(started), error.detail, error.kind, error.code)
    await session.close()
    return ProbeResult(True, steps, _ms(started))
