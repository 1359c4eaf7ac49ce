"""Prove each scripted behaviour of tests.smtp_servers with real aiosmtplib clients."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.smtp_servers import (
    HangingServer,
    RefusingServer,
    ScriptedSMTPServer,
    TestCertificate,
    _message_id,
    fixture_hanging_server,  # noqa: F401  (fixtures used by name)
    fixture_refusing_server,  # noqa: F401
    fixture_smtp_server,  # noqa: F401
    fixture_smtp_server_factory,  # noqa: F401
    fixture_test_certificate,  # noqa: F401
)

Factory = Callable[..., ScriptedSMTPServer]


def _message(n: int = 1, to: str = "rcpt@example.org") -> EmailMessage:
    """Build a small message with a known Message-ID."""
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = to
    message["Subject"] = f"test {n}"
    message["Message-ID"] = f"<msg-{n}@relayboard.test>"
    message.set_content(f"hello {n}\n.leading dot line\n")
    return message


def _client(server: ScriptedSMTPServer | HangingServer, **kwargs: object) -> aiosmtplib.SMTP:
    """Make an aiosmtplib client for a loopback test server (plain unless told)."""
    options: dict[str, object] = {"start_tls": False, "timeout": 5}
    options.update(kwargs)
    return aiosmtplib.SMTP(hostname=server.host, port=server.port, **options)  # type: ignore[arg-type]


async def _send(server: ScriptedSMTPServer, *messages: EmailMessage, **kwargs: object) -> None:
    """Send ``messages`` over one connection."""
    async with _client(server, **kwargs) as client:
        for message in messages:
            await client.send_message(message)


def test_accepts_and_records(smtp_server: ScriptedSMTPServer) -> None:
    asyncio.run(_send(smtp_server, _message(1), _message(2)))
    received = smtp_server.wait_for(2, timeout=5)
    assert [r.message_id for r in received] == [
        "<msg-1@relayboard.test>",
        "<msg-2@relayboard.test>",
    ]
    first = received[0]
    assert first.mail_from == "sender@example.com"
    assert first.rcpt_tos == ["rcpt@example.org"]
    assert b"Subject: test 1" in first.data
    assert b"\r\n.leading dot line\r\n" in first.data  # dot-unstuffed
    assert smtp_server.connections == 1


def test_message_id_scan() -> None:
    assert _message_id(b"Message-ID: <a@b>\r\n\r\nbody") == "<a@b>"
    assert _message_id(b"X: y\r\nmessage-id:\r\n <folded@x>\r\nZ: 1\r\n\r\n") == "<folded@x>"
    assert _message_id(b"X: y\r\n\r\nMessage-ID: <in-body@x>\r\n") is None


def test_wait_for_times_out(smtp_server: ScriptedSMTPServer) -> None:
    with pytest.raises(TimeoutError):
        smtp_server.wait_for(1, timeout=0.05)


@pytest.mark.parametrize(
    ("stage", "code", "text", "error"),
    [
        ("ehlo", 554, "5.7.1 go away", aiosmtplib.SMTPHeloError),
        ("mail", 421, "4.3.2 Service not available, maintenance", aiosmtplib.SMTPSenderRefused),
        ("rcpt", 550, "5.7.1 blocked", aiosmtplib.SMTPRecipientsRefused),
        ("data", 451, "4.3.0 try later", aiosmtplib.SMTPDataError),
    ],
)
def test_stage_failure_code_seen_by_client(
    smtp_server: ScriptedSMTPServer,
    stage: str,
    code: int,
    text: str,
    error: type[aiosmtplib.SMTPException],
) -> None:
    smtp_server.fail(stage, code, text, times=None if stage == "ehlo" else 1)

    async def scenario() -> None:
        async with _client(smtp_server) as client:
            with pytest.raises(error) as info:
                await client.send_message(_message())
            exc = info.value
            if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
                exc = exc.recipients[0]
            assert isinstance(exc, aiosmtplib.SMTPResponseException)
            assert (exc.code, exc.message) == (code, text)
            if code == 421:  # the server closes the connection after any 421
                assert not client.is_connected
                return
            smtp_server.reset()
            await client.send_message(_message(2))  # same session recovers once reset

    asyncio.run(scenario())
    expected = [] if code == 421 else ["<msg-2@relayboard.test>"]
    assert [r.message_id for r in smtp_server.received] == expected


def test_fail_times_counts_commands(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.fail("rcpt", 450, "4.2.0 greylisted", times=1)

    async def scenario() -> None:
        async with _client(smtp_server) as client:
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await client.send_message(_message(1))
            await client.send_message(_message(2))

    asyncio.run(scenario())
    assert [r.message_id for r in smtp_server.received] == ["<msg-2@relayboard.test>"]


def test_connect_failure_421_greeting_then_close(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.fail("connect", 421, "4.3.2 too busy", times=1)

    async def scenario() -> None:
        client = _client(smtp_server)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
            await client.connect()
        assert (info.value.code, info.value.message) == (421, "4.3.2 too busy")
        assert not client.is_connected
        await _send(smtp_server, _message())  # only once

    asyncio.run(scenario())
    assert smtp_server.connections == 2
    assert len(smtp_server.wait_for(1)) == 1


def test_reject_recipient_partial_acceptance(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.reject_recipient("Gone@example.org")

    async def scenario() -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        async with _client(smtp_server) as client:
            return await client.sendmail(
                "sender@example.com",
                ["ok@example.org", "gone@example.org"],
                _message().as_bytes(),
            )

    errors, _ = asyncio.run(scenario())
    assert errors["gone@example.org"].code == 550
    assert errors["gone@example.org"].message == "5.1.1 No such user"
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["ok@example.org"]


def test_delay_slows_the_reply(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.delay("mail", 0.3)

    async def scenario() -> None:
        async with _client(smtp_server) as client:
            started = time.monotonic()
            await client.send_message(_message())
            assert time.monotonic() - started >= 0.3
            with pytest.raises(aiosmtplib.SMTPTimeoutError):
                await client.mail("sender@example.com", timeout=0.1)

    asyncio.run(scenario())


def test_delayed_greeting(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.delay("connect", 0.5)

    async def scenario() -> None:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await _client(smtp_server, timeout=0.1).connect()

    asyncio.run(scenario())


def test_hang_after_data_times_out_client(smtp_server: ScriptedSMTPServer) -> None:
    smtp_server.hang_after_data()

    async def scenario() -> None:
        client = _client(smtp_server, timeout=0.3)
        await client.connect()
        try:
            with pytest.raises(aiosmtplib.SMTPTimeoutError):
                await client.send_message(_message())
        finally:
            client.close()

    asyncio.run(scenario())
    assert smtp_server.received == []
    assert [m.message_id for m in smtp_server.hung] == ["<msg-1@relayboard.test>"]


def test_stop_while_client_hangs(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory()
    server.hang_after_data()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        for command in (b"EHLO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA"):
            sock.sendall(command + b"\r\n")
        sock.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        deadline = time.monotonic() + 5
        while not server.hung and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.hung
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        sock.settimeout(2)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert not reply.endswith(b"250 OK\r\n")
    gc.collect()


def test_refusing_server(refusing_server: RefusingServer) -> None:
    async def scenario() -> None:
        with pytest.raises(aiosmtplib.SMTPConnectError):
            await _client(refusing_server).connect()  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_hanging_server_greeting_timeout(hanging_server: HangingServer) -> None:
    async def scenario() -> None:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await _client(hanging_server, timeout=0.2).connect()

    asyncio.run(scenario())
    assert hanging_server.connections == 1


def test_auth_success_and_failure(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(auth=("user", "s3cret"))

    async def scenario() -> None:
        async with _client(server) as client:
            await client.ehlo()
            assert "plain" in client.server_auth_methods
            assert "login" in client.server_auth_methods
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.send_message(_message(0))
            assert refused.value.code == 530
        async with _client(server) as client:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
                await client.login("user", "wrong")
            assert info.value.code == 535
            assert info.value.message.startswith("5.7.8")
        await _send(server, _message(1), username="user", password="s3cret")
        async with _client(server) as client:
            await client.ehlo()
            await client.auth_login("user", "s3cret")
            await client.send_message(_message(2))

    asyncio.run(scenario())
    assert len(server.wait_for(2)) == 2


def test_auth_stage_failure(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(auth=("user", "s3cret"))
    server.fail("auth", 454, "4.7.0 temporary authentication failure")

    async def scenario() -> None:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
            await _send(server, _message(), username="user", password="s3cret")
        assert info.value.code == 454

    asyncio.run(scenario())


def test_starttls_verified_with_ca(
    smtp_server_factory: Factory, test_certificate: TestCertificate
) -> None:
    server = smtp_server_factory(tls="starttls", auth=("user", "pw"))

    async def scenario() -> None:
        async with _client(server, start_tls=True, cert_bundle=test_certificate.ca_file) as c:
            assert c.get_transport_info("sslcontext") is not None
            await c.login("user", "pw")
            await c.send_message(_message())
        with pytest.raises(ssl.SSLCertVerificationError):  # untrusted without the CA
            await _client(server, start_tls=True).connect()

    asyncio.run(scenario())
    assert len(server.wait_for(1)) == 1


def test_implicit_tls(smtp_server_factory: Factory, test_certificate: TestCertificate) -> None:
    server = smtp_server_factory(tls="tls")
    asyncio.run(_send(server, _message(), use_tls=True, cert_bundle=test_certificate.ca_file))
    assert len(server.wait_for(1)) == 1


def test_starttls_not_advertised_is_refused(smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls", advertise_starttls=False)

    async def scenario() -> None:
        client = _client(server, start_tls=True)
        with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS extension not supported"):
            await client.connect()
        client.close()

    asyncio.run(scenario())
    assert server.received == []


def _collect_earlier_garbage() -> None:
    """Collect what earlier tests left for the garbage collector, without judging it here.

    This test measures its own servers' cleanup with gc.collect(); an unrelated object an
    earlier test left to the collector must not be reported as this test's leak.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def test_servers_stop_cleanly_with_open_clients(smtp_server_factory: Factory) -> None:
    _collect_earlier_garbage()
    servers = [smtp_server_factory(tls=tls) for tls in ("none", "starttls", "tls")]
    socks = [socket.create_connection((s.host, s.port), timeout=5) for s in servers]
    try:
        time.sleep(0.05)
        for server in servers:
            server.stop()
    finally:
        for sock in socks:
            sock.close()
    gc.collect()
