"""Audio: Opus, the jitter buffer and play-out, PCM helpers. Sans-IO."""
