"""`mlitb fleet start|status|stop`: native workers placed and restarted by Ray."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="run many native workers on a Ray cluster (pip install 'mlitb[ray]')",
        description="Fleets of native workers on Ray: each worker is a Ray actor running `mlitb worker`, "
        "placed on the cluster's machines and restarted by Ray when its process dies. With no --address a "
        "local Ray instance is started (or reused).",
    )
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    def address(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--address",
            default=None,
            help="the Ray cluster: auto (the cluster this machine is part of) or ray://HOST:10001 "
            "(Ray Client); default: the local instance, started if none runs",
        )

    q = fsub.add_parser("start", help="add N native workers to a project")
    q.add_argument("url", help="the master's URL, e.g. http://127.0.0.1:8000 (as the workers reach it)")
    q.add_argument("--project", required=True)
    q.add_argument("--workers", type=int, default=1, help="how many workers (default 1)")
    q.add_argument("--role", choices=("trainer", "tracker"), default="trainer")
    q.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per worker (default 1)")
    q.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per worker (default 0: CPU)")
    q.add_argument("--name", default="", help="the fleet's name (default: the project's)")
    q.add_argument("--join-key", default="")
    q.add_argument("--capacity", type=int, default=None, help="most data ids per worker (default: memory)")
    q.add_argument("--batch-size", type=int, default=None)
    q.add_argument("--relays", type=int, default=0, help="K relays as Ray actors; the workers join them")
    q.add_argument(
        "--relay-port", type=int, default=8100, help="relay i listens on this port + i (default 8100)"
    )
    q.add_argument("--relay-host", default="0.0.0.0", help="the relays' interface (default 0.0.0.0)")
    q.add_argument(
        "--token", default=None, help="the project's owner token (relays need it; default: stored)"
    )
    q.add_argument("--no-wait", action="store_true", help="return at once, before the workers joined")
    q.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the workers to join")
    address(q)
    q.set_defaults(func=start)

    q = fsub.add_parser("status", help="the fleets and each worker's state")
    q.add_argument("--json", action="store_true")
    address(q)
    q.set_defaults(func=status)

    q = fsub.add_parser("stop", help="stop a fleet (its workers leave the project cleanly)")
    q.add_argument("name", nargs="?", help="the fleet (see mlitb fleet status)")
    q.add_argument("--all", action="store_true", help="every fleet")
    q.add_argument("--shutdown", action="store_true", help="then stop the local Ray instance too")
    address(q)
    q.set_defaults(func=stop)


def _fail(exc: Exception) -> int:
    print(f"mlitb: {exc}", file=sys.stderr)
    return 2


def start(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mlitb.fleet import control

    if args.workers < 1:
        return _fail(ValueError(f"--workers: expected at least 1, got {args.workers}"))
    if args.relays < 0:
        return _fail(ValueError(f"--relays: expected 0 or more, got {args.relays}"))
    name = args.name or args.project
    token = ""
    if args.relays:
        from mlitb import local_tokens as tokens

        token = (
            args.token
            or os.environ.get("MLITB_OWNER_TOKEN")
            or tokens.get_token(args.url, args.project)
            or ""
        )
        if not token:
            return _fail(ValueError(f"relays need the owner token of {args.project!r} (--token)"))
    spec = {
        "url": args.url,
        "project": args.project,
        "role": args.role,
        "join_key": args.join_key,
        "capacity": args.capacity,
        "batch_size": args.batch_size,
        "threads": max(1, int(args.cpus_per_worker)),
        "owner_token": token,
        "relay_port": args.relay_port,
        "relay_host": args.relay_host,
    }
    try:
        how = control.connect(args.address, start=True)
        print(f"Ray: {how}")
        note = control.capacity_note(args.workers, args.cpus_per_worker, args.gpus_per_worker, args.relays)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        urls = control.start_fleet(name, spec, args.workers, args.cpus_per_worker, args.gpus_per_worker,
                                   args.relays)  # fmt: skip
        print(f"fleet {name}: {args.workers} {args.role}s for project {args.project} at {args.url}")
        for url in urls:
            print(f"  relay {url} (volunteers: {url}/join/{args.project})")
        if args.no_wait:
            return 0
        with tqdm(total=args.workers, desc="workers joined", unit="worker", file=sys.stderr) as bar:

            def progress(n: int) -> None:
                bar.update(n - bar.n)

            joined = control.wait_joined(name, args.workers, args.timeout, progress)
    except control.FleetError as exc:
        return _fail(exc)
    if joined < args.workers:
        print(f"mlitb: only {joined} of {args.workers} workers joined within {args.timeout:g} s; they keep "
              f"trying (see mlitb fleet status)", file=sys.stderr)  # fmt: skip
        return 1
    print(f"all {joined} workers joined; mlitb fleet status shows them, mlitb fleet stop {name} stops them")
    return 0


def status(args: argparse.Namespace) -> int:
    from mlitb.fleet import control

    try:
        control.connect(args.address)
        fleets = control.status()
    except control.FleetError as exc:
        if args.json:
            print("{}")
        return _fail(exc) if not args.json else 0
    if args.json:
        print(json.dumps(fleets))
        return 0
    if not fleets:
        print("no fleets")
    for name, f in fleets.items():
        print(f"fleet {name}: {f['workers']} {f['role']}s, project {f['project']} at {f['url']} "
              f"({f['cpus_per_worker']:g} CPU, {f['gpus_per_worker']:g} GPU each)")  # fmt: skip
        for i, r in enumerate(f.get("relay_status", [])):
            if r is None:
                print(f"  {name}-relay-{i}: not reachable now (restarting, or waiting for resources)")
                continue
            up = "connected" if r["connected"] else "not connected"
            print(f"  {r['name']}: relay at {r['url']}, {up}, {len(r['children'])} clients, "
                  f"{r['results_up']} results up, restarts {r['starts'] - 1}")  # fmt: skip
        for i, r in enumerate(f["status"]):
            if r is None:
                print(f"  {name}-{i}: not reachable now (restarting, or waiting for resources)")
                continue
            state = f"refused: {r['fatal']}" if r["fatal"] else r["state"]
            print(f"  {r['name']}: {state}, client {r['client_id'] or '-'}, {r['device']} on {r['host']}, "
                  f"iteration {r['iteration']}, {r['vectors_per_s']:,.0f} vectors/s, cached {r['cached']}, "
                  f"restarts {r['starts'] - 1}")  # fmt: skip
    return 0


def stop(args: argparse.Namespace) -> int:
    from mlitb.fleet import control

    if not args.name and not args.all:
        return _fail(ValueError("name a fleet (see mlitb fleet status) or pass --all"))
    try:
        control.connect(args.address)
        names = list(control.status()) if args.all else [args.name]
        for name in names:
            n = control.stop_fleet(name)
            print(f"fleet {name}: {n} workers stopped")
    except control.FleetError as exc:
        if not (args.all and args.shutdown and "no Ray instance" in str(exc)):
            return _fail(exc)
    if args.shutdown:
        if args.address:
            return _fail(ValueError("--shutdown stops the local Ray instance only; drop --address"))
        control.shutdown_local()
        print("local Ray instance stopped")
    return 0
