"""One project's loop as a sans-I/O state machine: the `Engine` takes events (a client
joined, a message, a result frame, the time) and leaves effects for the I/O layer to carry
out. Nothing here reads a clock, touches a socket or draws unseeded randomness."""
