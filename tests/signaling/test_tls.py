"""TLS on the HTTP port: HTTPS joins, bots over WSS, the refusals, and the development certificate."""

from __future__ import annotations

import contextlib
import datetime
import ssl

import pytest
import trio
from cryptography import x509

from botcall_sdk import connect
from botcall.errors import ConfigError
from botcall.signaling import tls
from tests.e2e.test_bot_calls import open_room, talk_and_listen
from tests.kit.server import http_request, running_server
from tests.kit.tls import TestTls


async def test_https_join_gives_wss_and_two_websocket_bots_talk_over_wss(tmp_path):
    certs = TestTls.make(tmp_path / "tls")
    async with running_server(tmp_path / "srv", tls_cert=certs.cert, tls_key=certs.key, client_ssl=certs.client) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        assert created["invite_url"].startswith(srv.url + "/join/")
        joined = await srv.join(srv.token(agent="orion#8f3a"), created["room_id"])
        assert joined.status == 200
        assert joined.json()["websocket_url"] == srv.url.replace("https://", "wss://") + f"/v1/stream/{joined.json()['session_id']}"
        # Bots with the SDK: JSON over HTTPS, then audio over their WSS channels, checked by pitch.
        room = await open_room(srv)
        async with connect(srv.url, room, srv.token(agent="ws#1"), transport="websocket", ssl_context=certs.client) as a, connect(
            srv.url, room, srv.token(agent="ws#2"), transport="websocket", encoding="pcm16", ssl_context=certs.client
        ) as b:
            assert abs(await talk_and_listen(a, b, 440) - 440) < 5
            assert abs(await talk_and_listen(b, a, 660) - 660) < 5


async def test_clients_that_do_not_trust_it_or_speak_plain_http_get_nothing(tmp_path):
    certs = TestTls.make(tmp_path / "tls")
    async with running_server(tmp_path / "srv", tls_cert=certs.cert, tls_key=certs.key) as srv:
        # The system trust store does not know the test CA.
        tcp = await trio.open_tcp_stream("127.0.0.1", srv.info.http_port)
        untrusting = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname="127.0.0.1")
        with pytest.raises(trio.BrokenResourceError) as caught:
            await untrusting.do_handshake()
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        await trio.aclose_forcefully(untrusting)
        # Plain HTTP on the TLS port is not answered as HTTP.
        stream = await trio.open_tcp_stream("127.0.0.1", srv.info.http_port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(15):
                data = await stream.receive_some(4096)
        assert not data.startswith(b"HTTP/")
        # And the server goes on serving trusted clients.
        assert (await http_request(srv.url + "/healthz", ssl_context=certs.client)).status == 200


async def test_self_signed_serves_a_certificate_the_dev_ca_verifies(tmp_path):
    async with running_server(tmp_path, tls_self_signed=True) as srv:
        trusted = ssl.create_default_context(cafile=str(tmp_path / tls.CA_FILE))
        for host in ("127.0.0.1", "localhost"):
            url = srv.url.replace("127.0.0.1", host)
            assert (await http_request(url + "/healthz", ssl_context=trusted)).status == 200
    assert (tmp_path / tls.KEY_FILE).stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls-dev-ca-key.pem").stat().st_mode & 0o077 == 0


def test_dev_certificate_is_reused_while_valid_and_renewed_under_the_same_ca(tmp_path):
    now = datetime.datetime(2026, 12, 5, tzinfo=datetime.timezone.utc)
    first = tls.ensure_dev_certificate(tmp_path, ["localhost", "127.0.0.1"], now=now)
    assert first.created == "ca" and set(first.names) == {"localhost", "127.0.0.1"}
    ca_bytes, cert_bytes = first.ca.read_bytes(), first.cert.read_bytes()
    again = tls.ensure_dev_certificate(tmp_path, ["localhost", "127.0.0.1"], now=now + datetime.timedelta(days=100))
    assert again.created == "" and first.cert.read_bytes() == cert_bytes
    # A name it does not cover: a new certificate from the same CA (a browser that trusts the CA goes on trusting).
    wider = tls.ensure_dev_certificate(tmp_path, ["localhost", "127.0.0.1", "192.0.2.2"], now=now)
    assert wider.created == "certificate" and first.ca.read_bytes() == ca_bytes and "192.0.2.2" in wider.names
    leaf = x509.load_pem_x509_certificate(wider.cert.read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_bytes))
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=398)
    # Close to its end: renewed.
    late = now + tls.CERT_LIFETIME - datetime.timedelta(days=10)
    assert tls.ensure_dev_certificate(tmp_path, ["localhost"], now=late).created == "certificate"
    # A CA that no longer parses: a new CA and certificate.
    first.ca.write_text("not a certificate")
    assert tls.ensure_dev_certificate(tmp_path, ["localhost"], now=now).created == "ca"


def test_a_bad_certificate_is_one_config_error(tmp_path):
    certs = TestTls.make(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        tls.server_ssl_context(tmp_path / "absent.pem", certs.key, alpn_protocols=["http/1.1"])
    other = TestTls.make(tmp_path / "other")
    with pytest.raises(ConfigError, match="not a PEM certificate and its matching private key"):
        tls.server_ssl_context(certs.cert, other.key, alpn_protocols=["http/1.1"])


async def test_the_cluster_ca_verifies_peers_and_a_bad_one_is_one_config_error(tmp_path):
    certs = TestTls.make(tmp_path)
    with pytest.raises(ConfigError, match="cluster_ca: cannot read .*no such file"):
        tls.peer_client_context(tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match="cluster_ca: .* holds no PEM CA certificate"):
        tls.peer_client_context(certs.key)  # a key, not a certificate
    server = tls.server_ssl_context(certs.cert, certs.key, alpn_protocols=["http/1.1"])
    listeners = await trio.open_ssl_over_tcp_listeners(0, server, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the refusing client hangs up
            await stream.do_handshake()

    async def handshake(context: ssl.SSLContext) -> None:
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context, https_compatible=True)
        async with stream:
            await stream.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        await handshake(tls.peer_client_context(certs.ca_pem))  # the certificate names 127.0.0.1
        with pytest.raises(trio.BrokenResourceError) as refused:  # the system's CAs do not know the test CA
            await handshake(tls.peer_client_context(None))
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__cause__)
        nursery.cancel_scope.cancel()


async def test_self_signed_says_how_to_trust_it_and_where_invites_start(tmp_path, caplog):
    caplog.set_level("INFO", logger="botcall")
    async with running_server(tmp_path, tls_self_signed=True) as srv:
        srv.client_ssl = ssl.create_default_context(cafile=str(tmp_path / tls.CA_FILE))
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
    text = "\n".join(record.getMessage() for record in caplog.records if record.name == "botcall")
    assert f"import the development CA {tmp_path / tls.CA_FILE}" in text
    assert "certutil" in text and "SSL_CERT_FILE=" in text
    assert f"Invite links start with {srv.info.base_url}/join/" in text and srv.info.base_url.startswith("https://")
    assert created["invite_url"].startswith(srv.info.base_url + "/join/")


async def test_over_budget_a_tls_connection_is_closed_before_any_handshake(tmp_path):
    certs = TestTls.make(tmp_path / "tls")
    async with running_server(
        tmp_path / "srv", tls_cert=certs.cert, tls_key=certs.key, client_ssl=certs.client, max_connections_per_ip=1
    ) as srv:
        held = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", srv.info.http_port), certs.client, server_hostname="127.0.0.1")
        await held.do_handshake()
        second = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", srv.info.http_port), certs.client, server_hostname="127.0.0.1")
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await second.do_handshake()
        assert srv.info.parts.http is not None and srv.info.parts.http.budget.refused["per_ip"] == 1
        await trio.aclose_forcefully(second)
        await held.aclose()
