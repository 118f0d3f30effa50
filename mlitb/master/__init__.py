"""The master server: projects and their synchronized map-reduce loop.

`allocation`, `latency`, `reduce` and `engine` are sans-I/O (plain objects, tested
without sockets); `store` persists; `hub` and `app` are the asyncio layer that only
moves bytes between sockets and engines.
"""
