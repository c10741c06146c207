"""CPU cost of SRTP per packet, and of one DTLS-SRTP handshake.

Usage (from the repository root)::

    python -m bench.srtp_cost [--packets 50000] [--streams 1,64,1000] [--repeat 5]

What is measured, on one core, with real libsrtp (pylibsrtp) and real OpenSSL:

* ``protect`` / ``unprotect``: ``SrtpContext.protect`` of a 172-byte RTP packet
  (12-byte header + 160-byte Opus payload, the relay's typical packet) and
  ``unprotect_untrusted`` of the result, in microseconds per packet, for each
  SRTP profile; keys come from a real handshake.
* the same with many SSRCs on one outbound session (a relay sending every
  speaker toward one browser): libsrtp looks streams up in a list, so the
  packet of the *oldest* SSRC costs more as streams pile up;
* ``handshake``: a full DTLS 1.2 handshake between a server and a client
  endpoint in one process (both sides' CPU), in milliseconds.
"""

from __future__ import annotations

import argparse
import struct
import time

from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.dtls.endpoint import DtlsEndpoint, DtlsState
from botcall.webrtc.srtp import SrtpContext, SrtpKeys, SrtpProfile

RTP_HEADER = struct.Struct("!BBHII")
PAYLOAD = bytes(range(160))


def handshake(server_cert: DtlsCertificate, client_cert: DtlsCertificate, profile: SrtpProfile | None = None):
    """One lossless handshake; returns (server, client) endpoints, connected."""
    profiles = {"srtp_profiles": [profile]} if profile is not None else {}
    server = DtlsEndpoint(
        role="server", certificate=server_cert, remote_fingerprint=client_cert.fingerprint, **profiles
    )
    client = DtlsEndpoint(
        role="client", certificate=client_cert, remote_fingerprint=server_cert.fingerprint, **profiles
    )
    to_server = client.start(0.0)
    while to_server:
        to_client = [out for datagram in to_server for out in server.receive_untrusted(datagram, 0.0)]
        to_server = [out for datagram in to_client for out in client.receive_untrusted(datagram, 0.0)]
    assert server.state is client.state is DtlsState.CONNECTED
    return server, client


def per_packet(keys: tuple[SrtpKeys, SrtpKeys], packets: int, streams: int) -> tuple[float, float]:
    """Microseconds per protect and per unprotect of the oldest SSRC among ``streams`` (one run)."""
    relay = SrtpContext.from_keys(keys[0], max_streams=streams)
    browser = SrtpContext.from_keys(keys[1], max_streams=streams)
    # Create the other streams after the measured one, so it sits at the far end of libsrtp's list.
    measured_ssrc = 0x10000000
    browser.unprotect_untrusted(relay.protect(RTP_HEADER.pack(0x80, 111, 0, 0, measured_ssrc) + PAYLOAD))
    for index in range(1, streams):
        ssrc = measured_ssrc + index
        browser.unprotect_untrusted(relay.protect(RTP_HEADER.pack(0x80, 111, 0, 0, ssrc) + PAYLOAD))
    plain = [
        RTP_HEADER.pack(0x80, 111, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, measured_ssrc) + PAYLOAD
        for seq in range(1, packets + 1)
    ]
    protect = relay.protect
    start = time.perf_counter()
    protected = [protect(packet) for packet in plain]
    middle = time.perf_counter()
    unprotect = browser.unprotect_untrusted
    for packet in protected:
        unprotect(packet)
    end = time.perf_counter()
    return (middle - start) / packets * 1e6, (end - middle) / packets * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--streams", default="1,64,1000")
    parser.add_argument("--handshakes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell; the fastest is printed")
    args = parser.parse_args(argv)
    stream_counts = [int(value) for value in args.streams.split(",")]

    started = time.perf_counter()
    server_cert, client_cert = DtlsCertificate.generate(), DtlsCertificate.generate()
    print(f"certificate generation: {(time.perf_counter() - started) / 2 * 1e3:.2f} ms each")

    print(f"\n172-byte RTP, {args.packets} packets, best of {args.repeat} runs, µs per packet")
    print(f"{'profile':<26}{'streams':>8}{'protect':>10}{'unprotect':>11}{'both':>8}")
    for profile in SrtpProfile:
        server, client = handshake(server_cert, client_cert, profile)
        keys = (server.srtp_keys, client.srtp_keys)
        for streams in stream_counts:
            # The best of a few runs: other processes only ever add time.
            runs = [per_packet(keys, args.packets, streams) for _ in range(args.repeat)]
            protect_us = min(run[0] for run in runs)
            unprotect_us = min(run[1] for run in runs)
            both = protect_us + unprotect_us
            print(f"{profile.name:<26}{streams:>8}{protect_us:>10.2f}{unprotect_us:>11.2f}{both:>8.2f}")

    started = time.perf_counter()
    for _ in range(args.handshakes):
        handshake(server_cert, client_cert)
    per_handshake = (time.perf_counter() - started) / args.handshakes * 1e3
    print(f"\nDTLS handshake, server + client in one process: {per_handshake:.2f} ms")


if __name__ == "__main__":
    main()
