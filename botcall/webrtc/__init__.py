"""Browser legs: ICE-lite, SDP, DTLS, SRTP. Sans-IO."""
