"""`mlitb worker URL --project NAME`: a native PyTorch worker (trainer or tracker)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join a project as a native PyTorch worker (trainer or tracker)")
    p.add_argument("url", help="the master's URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--project", required=True)
    p.add_argument("--role", choices=("trainer", "tracker"), default="trainer")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="most data ids to hold (default: what a quarter of the free memory holds, up to 4 GiB)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="vectors per batch (default: the project's batch_size)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for a trainer, the thread the master replays its audits "
        "on, so that they match bit for bit; torch's choice for a tracker; 0: torch's choice)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR_OR_ZIP",
        help="train on this device's own data (a folder with one sub-folder per label, or a zip of "
        "one), for projects with data_source=device: the items never leave this machine",
    )
    p.add_argument(
        "--name", default="", help="a name shown in the master's client list and its contributors (credit)"
    )
    p.add_argument(
        "--anonymous",
        action="store_true",
        help="no volunteer key: credit counts for this connection only (default: this machine's key, "
        "kept beside the owner tokens, so credit adds up across runs)",
    )
    p.add_argument("--join-key", default="")
    p.add_argument("--quiet", action="store_true", help="no progress line and no status lines")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from mlitb import local_tokens as tokens
    from mlitb.worker.session import FatalError, Worker

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # A trainer sums its gradients in the order the master's replay does (one torch thread):
    # with more, the last bits differ, and a max-pool window tied to the last bit can route
    # the other way and carry an honest round past the audit's tolerance (docs/security.md).
    threads = args.threads if args.threads is not None else (1 if args.role == "trainer" else 0)
    if threads:
        torch.set_num_threads(threads)
    if args.role == "tracker":
        # Scoring must not compete with training for the CPU: a tracker runs at a lower
        # priority (and scores a sample on the master's schedule, docs/protocol.md).
        with contextlib.suppress(OSError, AttributeError):
            os.nice(10)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("mlitb: --device cuda but no CUDA device is available here", file=sys.stderr)
        return 1
    bar = tqdm(total=None, bar_format="{desc}", disable=args.quiet or not sys.stderr.isatty())
    seen = {"state": None, "project": None, "failures": 0}
    power = {"vec_s": 0.0}  # the project's vectors/s as the master reports it (poll_power)

    def show(s) -> None:
        if s.test_error is not None:
            extra = f"test error {s.test_error:.4f}"
        else:
            extra = f"{s.vectors_per_s:,.0f} vec/s"
            if power["vec_s"] > 0 and s.vectors_per_s > 0:
                extra += f" ({share(s.vectors_per_s, power['vec_s']):.1f} % of the project)"
        bar.set_description_str(
            f"{args.role} {s.client_id or '-'} | {s.state} | project {s.project_state or '-'} | "
            f"iteration {s.iteration} | cached {s.cached} | {s.vectors_processed:,} vectors | {extra}"
        )
        if not args.quiet:
            for line, err in status_lines(args, s, seen):
                tqdm.write(line, file=sys.stderr if err else sys.stdout)

    worker = Worker(
        args.url,
        args.project,
        args.role,
        args.device,
        args.capacity,
        args.name,
        args.join_key,
        args.batch_size,
        on_update=show,
        data=args.data,
        volunteer="" if args.anonymous else tokens.volunteer_key(),
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        poller = (
            None if args.quiet or args.role != "trainer" else asyncio.create_task(poll_power(args, power))
        )
        try:
            await worker.run()
        finally:
            if poller:
                poller.cancel()

    try:
        asyncio.run(main())
    except FatalError as exc:
        bar.close()
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    bar.close()
    return 0


def share(mine: float, project: float) -> float:
    """This worker's percentage of the project's power (both in vectors/s; capped at 100:
    the project's figure is the last iteration's, this worker's a moving average)."""
    return min(100.0, 100.0 * mine / project) if project > 0 else 0.0


async def poll_power(args: argparse.Namespace, power: dict, every_s: float = 10.0) -> None:
    """The project's power from GET /api/projects/NAME every `every_s` seconds, for the live
    line's share (what the volunteer page shows a browser). Failures are silent: the
    socket's own status lines say when the master is unreachable."""
    import httpx

    url = f"{args.url.rstrip('/')}/api/projects/{args.project}"
    headers = {"X-Join-Key": args.join_key} if args.join_key else {}
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, TypeError, AttributeError):
                resp = await http.get(url)
                if resp.status_code == 200:
                    power["vec_s"] = float(resp.json().get("power") or 0.0)
            await asyncio.sleep(every_s)


def status_lines(args: argparse.Namespace, s, seen: dict) -> list[tuple[str, bool]]:
    """One line per change of state (joined, training, disconnected and each retry), as
    (text, is an error); `seen` remembers what was said last."""
    lines: list[tuple[str, bool]] = []
    if s.failures != seen["failures"]:  # a connection attempt failed (or one was lost)
        seen["failures"] = s.failures
        wait = f"{s.retry_in:.0f}" if s.retry_in >= 2 else f"{s.retry_in:.1f}"
        what = "lost the connection to" if s.reached else "cannot reach"
        lines.append((f"{what} {args.url}: {s.failure}; retrying in {wait} s", True))
        if s.failures == 1 and not s.connects:
            lines.append(("  is the master running? (mlitb serve, or make run; else check the URL)", True))
    elif s.state != seen["state"]:
        if s.state == "joined":
            lines.append((f"joined project {args.project} as {args.role}, client id {s.client_id} "
                          f"({args.url})", False))  # fmt: skip
        elif s.state == "training":
            lines.append((f"training (iteration {s.iteration})", False))
        elif s.state == "tracking":
            lines.append((f"tracking: scoring the test set (iteration {s.iteration})", False))
        elif s.state == "model changed":
            lines.append(("the model changed (a label was added); its new parameters follow", False))
    seen["state"] = s.state
    if s.project_state and s.project_state != seen["project"] and s.state not in ("joining", "disconnected"):
        if seen["project"] is not None or s.project_state != "running":
            lines.append((f"project {args.project} is {s.project_state}", False))
        seen["project"] = s.project_state
    return lines
