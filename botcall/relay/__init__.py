"""The media relay: the routing core (sans-IO), the service that owns peers and sinks, the UDP transport (Trio)."""
