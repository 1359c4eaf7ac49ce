"""Real SMTP test servers on loopback whose behaviour a test scripts.

``ScriptedSMTPServer`` is an aiosmtpd server (its own event loop in a thread) that accepts
everything until a test tells it to fail, reject, stall or hang at a given SMTP stage.
``RefusingServer`` and ``HangingServer`` model dead and unresponsive peers, and
``TestCertificate`` is a throwaway CA plus server certificate for the TLS variants.

Use the fixtures from a conftest with ``from tests.smtp_servers import *``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import pathlib
import selectors
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AnyStr, Literal, Self, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    syntax,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "STAGES",
    "HangingServer",
    "Received",
    "RefusingServer",
    "ScriptedSMTPServer",
    "TestCertificate",
    "fixture_hanging_server",
    "fixture_refusing_server",
    "fixture_smtp_server",
    "fixture_smtp_server_factory",
    "fixture_test_certificate",
]

LOOPBACK = "127.0.0.1"
STAGES = frozenset({"connect", "ehlo", "auth", "mail", "rcpt", "data"})
TLSMode = Literal["none", "starttls", "tls"]

_MESSAGE_ID = b"message-id:"


@dataclass
class Received:
    """One message the server accepted with a 250 reply."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message_id: str | None
    at: float = field(default_factory=time.monotonic)  # when the final dot was answered


def _message_id(data: bytes) -> str | None:
    """Return the Message-ID header value by scanning only the header block."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[: end + 2]
    lowered = head.lower()
    if lowered.startswith(_MESSAGE_ID):
        start = len(_MESSAGE_ID)
    else:
        pos = lowered.find(b"\n" + _MESSAGE_ID)
        if pos < 0:
            return None
        start = pos + 1 + len(_MESSAGE_ID)
    stop = head.find(b"\n", start)
    while stop >= 0 and head[stop + 1 : stop + 2] in (b" ", b"\t"):
        stop = head.find(b"\n", stop + 1)
    raw = head[start:] if stop < 0 else head[start:stop]
    value = b" ".join(raw.split()).decode("utf-8", "replace")
    return value or None


# --------------------------------------------------------------------------- certificates


@dataclass
class TestCertificate:
    """A throwaway CA and a server certificate for "localhost" and 127.0.0.1 (PEM files)."""

    __test__ = False  # not a pytest test class

    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        """Return a fresh server-side SSL context using the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a client-side SSL context that trusts only the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    @classmethod
    def create(cls, directory: pathlib.Path) -> TestCertificate:
        """Generate the CA and server certificate as PEM files in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - datetime.timedelta(days=1)
        not_after = now + datetime.timedelta(days=30)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Relayboard Test CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

        ca_file = directory / "ca.pem"
        cert_file = directory / "server.pem"
        key_file = directory / "server-key.pem"
        ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cls(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(key_file))


# --------------------------------------------------------------------------- scripted server


@dataclass
class _Failure:
    reply: str
    remaining: int | None


def _consume_task_result(task: asyncio.Task[None]) -> None:
    """Retrieve a finished session task's exception so asyncio never logs it."""
    if not task.cancelled():
        task.exception()


class _QuietSession(Session):
    """An aiosmtpd Session without the per-AUTH login_data deprecation log line."""

    @property
    def login_data(self) -> Any:
        """Return the legacy login data."""
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _ScriptedSMTP(SMTP):
    """An aiosmtpd SMTP session that consults its ScriptedSMTPServer."""

    def __init__(
        self,
        handler: _Handler,
        *,
        owner: ScriptedSMTPServer,
        probe: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        self._probe = probe
        # Set after __init__: passing auth_required=True with auth_require_tls=False
        # makes aiosmtpd emit a UserWarning, which pytest turns into an error.
        self._auth_required = owner.auth is not None

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Track the session so stop() can abort it."""
        first = self._handler_coroutine is None
        super().connection_made(transport)
        if first and self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(_consume_task_result)
            self._owner._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        """Forget the session."""
        self._owner._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        """Send a reply line; close the connection after any 421 like a real server."""
        await super().push(status)
        if status[:3] in ("421", b"421") and self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        """Apply the "connect" stage script before the normal greeting."""
        if not self._probe:
            reply = await self._owner._script("connect")
            if reply is not None:
                with contextlib.suppress(ConnectionError):
                    await self.push(reply)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """Refuse STARTTLS when the server is told not to advertise it."""
        if not self._owner.advertise_starttls:
            await self.push("502 5.5.1 STARTTLS not supported")
            return
        await super().smtp_STARTTLS(arg)


class _Handler:
    """aiosmtpd handler hooks implementing the scripted behaviour."""

    def __init__(self, owner: ScriptedSMTPServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Answer EHLO, hiding AUTH/STARTTLS where configured."""
        owner = self.owner
        reply = await owner._script("ehlo")
        if reply is not None:
            return [reply]
        session.host_name = hostname
        hide_auth = owner.auth is None
        hide_tls = not owner.advertise_starttls
        if hide_auth or hide_tls:
            responses = [
                line
                for line in responses
                if not (hide_auth and line.startswith("250-AUTH"))
                and not (hide_tls and line.startswith("250-STARTTLS"))
            ]
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> Any:
        """Answer HELO with the "ehlo" stage script."""
        reply = await self.owner._script("ehlo")
        return MISSING if reply is None else reply

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        """Answer AUTH with the "auth" stage script, else let aiosmtpd authenticate."""
        reply = await self.owner._script("auth")
        return MISSING if reply is None else reply

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Any:
        """Answer MAIL FROM; refuse once a connection carried its limit, if one is set."""
        owner = self.owner
        limit = owner._per_connection
        if limit is not None and getattr(server, "carried", 0) >= limit[0]:
            owner.over_limit += 1
            return limit[1]
        reply = await owner._script("mail")
        return MISSING if reply is None else reply

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> Any:
        """Answer RCPT TO, refusing individually rejected recipients."""
        owner = self.owner
        reply = await owner._script("rcpt")
        if reply is None and owner._rejected:
            reply = owner._rejected.get(address.lower())
        return MISSING if reply is None else reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> Any:
        """Answer the final dot: hang, fail, or record the message."""
        owner = self.owner
        reply = await owner._script("data")
        content = envelope.original_content or b""
        message = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=content,
            message_id=_message_id(content),
        )
        if owner._hang_after_data or owner._drop_after_data:
            owner.hung.append(message)
            if owner._drop_after_data and server.transport is not None:
                server.transport.abort()  # the reply to the final dot is lost
            await server.loop.create_future()  # cancelled on disconnect or stop()
        if reply is not None:
            return reply
        server.carried = getattr(server, "carried", 0) + 1  # type: ignore[attr-defined]
        owner._record(message)
        return MISSING


class _Controller(Controller):
    """An aiosmtpd Controller bound to an ephemeral loopback port."""

    def __init__(self, owner: ScriptedSMTPServer, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(
            _Handler(owner),
            hostname=LOOPBACK,
            port=0,
            server_hostname=LOOPBACK,
            ready_timeout=30.0,
            **kwargs,
        )

    def factory(self) -> SMTP:
        """Build one SMTP session; the first (start-up probe) is not scripted or counted."""
        owner = self._owner
        probe = not owner._ready
        if not probe:
            owner.connections += 1
        return _ScriptedSMTP(self.handler, owner=owner, probe=probe, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        """Learn the ephemeral port, then let aiosmtpd probe the server."""
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()


class ScriptedSMTPServer:
    """An aiosmtpd server on 127.0.0.1:<ephemeral> whose replies a test scripts."""

    def __init__(
        self,
        auth: tuple[str, str] | None = None,
        tls: TLSMode = "none",
        cert: TestCertificate | None = None,
        advertise_starttls: bool = True,
    ) -> None:
        if tls not in ("none", "starttls", "tls"):
            raise ValueError(f"tls must be 'none', 'starttls' or 'tls', not {tls!r}")
        self.host = LOOPBACK
        self.port = 0
        self.auth = auth
        self.tls: TLSMode = tls
        self.cert = cert
        self.advertise_starttls = advertise_starttls
        self.received: list[Received] = []
        self.hung: list[Received] = []
        self.connections = 0
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._failures: dict[str, _Failure] = {}
        self._delays: dict[str, float] = {}
        self._rejected: dict[str, str] = {}
        self._hang_after_data = False
        self._drop_after_data = False
        self._per_connection: tuple[int, str] | None = None
        self.over_limit = 0  # MAIL commands refused because their connection hit the limit
        self._sessions: set[_ScriptedSMTP] = set()
        self._controller: _Controller | None = None
        self._ready = False
        self._own_cert_dir: str | None = None

    def __repr__(self) -> str:
        return f"<ScriptedSMTPServer {self.host}:{self.port} tls={self.tls}>"

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving on a fresh ephemeral port."""
        if self._controller is not None:
            raise RuntimeError("server already started")
        kwargs: dict[str, Any] = {
            "authenticator": self._authenticate,
            "auth_require_tls": False,
        }
        if self.tls != "none":
            if self.cert is None:
                self._own_cert_dir = tempfile.mkdtemp(prefix="smtp-test-cert-")
                self.cert = TestCertificate.create(pathlib.Path(self._own_cert_dir))
            if self.tls == "starttls":
                kwargs["tls_context"] = self.cert.server_context()
            else:
                kwargs["ssl_context"] = self.cert.server_context()
        controller = _Controller(self, **kwargs)
        self._ready = False
        try:
            controller.start()
        except BaseException:
            with contextlib.suppress(Exception):
                controller.stop(no_assert=True)
            if not controller.loop.is_closed() and not controller.loop.is_running():
                controller.loop.close()
            raise
        self.port = controller.port
        self._controller = controller
        self._ready = True

    def stop(self) -> None:
        """Abort every client connection, stop the loop and join its thread."""
        controller, self._controller = self._controller, None
        self._ready = False
        if controller is not None:
            loop = controller.loop
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(controller), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=10)
            controller.stop(no_assert=True)
        if self._own_cert_dir is not None:
            shutil.rmtree(self._own_cert_dir, ignore_errors=True)
            self._own_cert_dir = None
            self.cert = None

    async def _shutdown(self, controller: _Controller) -> None:
        """Close the listener, abort all connections and finish all session tasks."""
        if controller.server is not None:
            controller.server.close()
        transports: list[asyncio.BaseTransport] = []
        for session in list(self._sessions):
            transports += [t for t in (session.transport, session._original_transport) if t]
        # Also catch raw sockets that never reached an SMTP session (e.g. mid TLS handshake).
        transports += list(getattr(controller.loop, "_transports", {}).values())
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.abort()  # type: ignore[attr-defined]
        for _ in range(5):
            await asyncio.sleep(0)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # scripting ------------------------------------------------------------------------

    def fail(self, stage: str, code: int, text: str, times: int | None = None) -> None:
        """Answer ``code text`` at ``stage`` for the next ``times`` commands (None: until reset)."""
        self._check_stage(stage)
        if not 200 <= code <= 599:
            raise ValueError(f"SMTP reply code out of range: {code}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        reply = f"{code} {text}" if text else str(code)
        with self._lock:
            self._failures[stage] = _Failure(reply, times)

    def reject_recipient(
        self, address: str, code: int = 550, text: str = "5.1.1 No such user"
    ) -> None:
        """Refuse only ``address`` at RCPT (case-insensitive); others are accepted."""
        with self._lock:
            self._rejected = {**self._rejected, address.lower(): f"{code} {text}"}

    def delay(self, stage: str, seconds: float) -> None:
        """Wait ``seconds`` before answering at ``stage`` (0 removes the delay)."""
        self._check_stage(stage)
        with self._lock:
            if seconds > 0:
                self._delays[stage] = seconds
            else:
                self._delays.pop(stage, None)

    def hang_after_data(self, flag: bool = True) -> None:
        """Read the message after DATA, then never answer the final dot."""
        self._hang_after_data = flag

    def drop_after_data(self, flag: bool = True) -> None:
        """Read the message after DATA, then drop the connection instead of answering."""
        self._drop_after_data = flag

    def limit_per_connection(self, messages: int, reply: str) -> None:
        """Answer ``reply`` to MAIL once a connection has carried ``messages`` messages."""
        self._per_connection = (messages, reply)

    def reset(self) -> None:
        """Go back to accepting everything immediately."""
        with self._lock:
            self._failures = {}
            self._delays = {}
            self._rejected = {}
            self._hang_after_data = False
            self._drop_after_data = False
            self._per_connection = None

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Block until at least ``count`` messages were received and return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{self!r}: expected {count} messages, got {len(self.received)}")
            return list(self.received)

    # internals (run on the server loop) -----------------------------------------------

    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")

    async def _script(self, stage: str) -> str | None:
        """Apply any delay for ``stage`` and return a scripted failure reply, if any."""
        delay = self._delays.get(stage)
        if delay:
            await asyncio.sleep(delay)
        if stage not in self._failures:
            return None
        with self._lock:
            failure = self._failures.get(stage)
            if failure is None:
                return None
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    del self._failures[stage]
            return failure.reply

    def _record(self, message: Received) -> None:
        with self._cond:
            self.received.append(message)
            self._cond.notify_all()

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        auth = self.auth
        if (
            auth is not None
            and isinstance(auth_data, LoginPassword)
            and auth_data.login == auth[0].encode()
            and auth_data.password == auth[1].encode()
        ):
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


# --------------------------------------------------------------------------- dead peers


class RefusingServer:
    """A port on 127.0.0.1 where TCP connections are refused."""

    def __init__(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            self.host: str = LOOPBACK
            self.port: int = sock.getsockname()[1]

    def __repr__(self) -> str:
        return f"<RefusingServer {self.host}:{self.port}>"


class HangingServer:
    """Accept TCP connections on 127.0.0.1 and never send a greeting."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.connections = 0
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[socket.socket] = []

    def __repr__(self) -> str:
        return f"<HangingServer {self.host}:{self.port}>"

    def start(self) -> None:
        """Listen on an ephemeral port and accept connections in a thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        listener = socket.create_server((self.host, 0))
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name=f"HangingServer:{self.port}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        """Accept connections, discard what clients send, never answer."""
        assert self._listener is not None and self._wake is not None
        listener, wake = self._listener, self._wake[0]
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    sock = key.fileobj
                    if sock is wake:
                        return
                    if sock is listener:
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = listener.accept()
                            conn.setblocking(False)
                            self._clients.append(conn)
                            self.connections += 1
                            selector.register(conn, selectors.EVENT_READ)
                        continue
                    assert isinstance(sock, socket.socket)
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        selector.unregister(sock)
                        self._clients.remove(sock)
                        sock.close()

    def stop(self) -> None:
        """Stop accepting, close every connection and join the thread."""
        if self._wake is not None and self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
            self._thread.join(timeout=10)
        self._thread = None
        for sock in [*self._clients, self._listener, *(self._wake or ())]:
            if sock is not None:
                sock.close()
        self._clients = []
        self._listener = None
        self._wake = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", name="test_certificate")
def fixture_test_certificate(tmp_path_factory: pytest.TempPathFactory) -> TestCertificate:
    """Provide a session-wide throwaway CA and server certificate."""
    return TestCertificate.create(tmp_path_factory.mktemp("smtp-cert"))


@pytest.fixture(name="smtp_server")
def fixture_smtp_server() -> Iterator[ScriptedSMTPServer]:
    """Provide a started plain accept-everything ScriptedSMTPServer."""
    with ScriptedSMTPServer() as server:
        yield server


@pytest.fixture(name="smtp_server_factory")
def fixture_smtp_server_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., ScriptedSMTPServer]]:
    """Provide a callable making started ScriptedSMTPServers, all stopped at teardown."""
    servers: list[ScriptedSMTPServer] = []

    def make(
        auth: tuple[str, str] | None = None,
        tls: TLSMode = "none",
        cert: TestCertificate | None = None,
        advertise_starttls: bool = True,
        start: bool = True,
    ) -> ScriptedSMTPServer:
        """Create (and by default start) a server; TLS uses the session certificate."""
        if tls != "none" and cert is None:
            cert = request.getfixturevalue("test_certificate")
        server = ScriptedSMTPServer(
            auth=auth, tls=tls, cert=cert, advertise_starttls=advertise_starttls
        )
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    errors: list[BaseException] = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # stop them all, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(name="refusing_server")
def fixture_refusing_server() -> RefusingServer:
    """Provide a loopback port that refuses connections."""
    return RefusingServer()


@pytest.fixture(name="hanging_server")
def fixture_hanging_server() -> Iterator[HangingServer]:
    """Provide a started server that accepts connections but never greets."""
    with HangingServer() as server:
        yield server
