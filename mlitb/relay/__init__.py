"""Relays: a worker towards the master and a master towards its own clients, so that one
master serves many sites (the paper's "more master node processes that receive
gradients"). `core.py` is the logic without sockets, `server.py` its I/O, `audit.py` the
replays of its children's proofs.

Imports protocol and the master's allocation, latency, screening, aggregation and audit
code (a relay is a small master that keeps the master's rules for its children);
workers never import this.
"""
