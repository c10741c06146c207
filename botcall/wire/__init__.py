"""Wire codecs: RTP, RTCP, STUN, sequence numbers, the first-byte demultiplexer. No state, no I/O."""
