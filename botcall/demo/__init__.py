"""``botcall demo`` (the echo bot) and ``botcall media-demo`` (the media core offline)."""
