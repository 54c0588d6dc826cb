"""One chat turn end to end (Engine), the weights each reply leases, streaming into event loops, and build_engine."""
