"""Fleets of native workers on Ray (the optional extra `mlitb[ray]`).

A fleet is N Ray actors, each running the existing native worker
(`mlitb.worker.session.Worker`, no second implementation) against one project. Ray
places them on the cluster's machines (CPUs and GPUs per worker), restarts an actor
whose process dies (`max_restarts=-1`: its new worker joins the project like any
worker), and keeps them after the command that started them exits (detached actors in
the namespace `mlitb`). A small registry actor remembers each fleet's settings and how
often each worker started, for `mlitb fleet status` and `mlitb fleet stop`.

Imports worker code only, never master code.
"""
