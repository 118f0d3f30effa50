"""Relays: a worker towards the master and a master towards its own clients, so that one
master serves many sites (the paper's "more master node processes that receive
gradients"). `core.py` is the logic without sockets, `server.py` its I/O.

Imports protocol and the master's allocation, latency and screening code (a relay is a
small master); workers never import this.
"""
