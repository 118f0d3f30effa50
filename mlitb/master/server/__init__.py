"""The master's I/O: the FastAPI app and its routes, one asyncio runner per project (sockets,
clock, checkpoints, audit replays in a thread, the master's own test error), the project
manager, the SQLite store, closures and the zoo."""
