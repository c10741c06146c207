"""DTLS 1.2 for DTLS-SRTP (RFC 6347, RFC 5764, RFC 5763), sans-IO over pyOpenSSL.

The relay bridges browsers: Chrome is the DTLS client (our answer says
``a=setup:passive``) and we are the server. The benchmark simulates browsers
with our own endpoint in the client role, so both roles work the same way.

Import from the module that holds what you need:

* ``records``: the record codec (``DtlsRecord``, ``split_records_untrusted``,
  ``pack_datagrams``, RFC 6347 §4.1) and our own flights decoded for re-encoding;
* ``certificate``: ``DtlsCertificate`` (one self-signed ECDSA P-256
  certificate per process, shared by every endpoint), ``fingerprint_of_der``,
  ``parse_fingerprint_untrusted`` and the verify callback that pins the
  peer's certificate by fingerprint (RFC 5763 §5);
* ``endpoint``: ``DtlsEndpoint``, the handshake state machine, and ``DtlsState``.

Conventions (as in Trio's ``_dtls.py``): every function that handles network
data ends in ``_untrusted`` and raises only ``DtlsError``.
"""
