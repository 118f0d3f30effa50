"""The master server: projects and their synchronized map-reduce loop, by concern.

- `project/`: the sans-I/O core, one project's loop as a state machine (`Engine`): events
  in, effects out, no sockets, no clock, no randomness of its own.
- `learning/`: plug-ins for what a work order asks and how results become a step
  (algorithms, aggregation rules, the accumulator).
- `trust/`: plug-ins for whether a result is believed (screening, audits by
  recomputation, held results, bans) behind one `Trust` interface.
- `sched/`: who holds which data and how long each client works; shared with relays.
- `server/`: the asyncio and HTTP side (app and routes, runners, projects, SQLite store,
  closures, zoo). Only it does I/O.

`config.Hyper` is the one schema of a project's settings, read by all of them.
Imports go one way: server -> project -> learning, trust, sched -> config.
"""
