"""Attackers of issue 23, as real clients in a process of their own (used by
tests/test_trust_flood.py and benchmarks/robustness_bench.py):

  get_banned    a raw socket that joins, sends one result and answers its audit with a
                truncated proof: banned, and its address becomes suspect
  sybils        N official workers (mlitb.worker.session.Worker, honest) in one process,
                all from one address: each is audited every round (the address is suspect)
  trusted_liar  an official worker, honest until it has answered `--after` audits, then
                sends `--factor` x every result (the proof stays the honest round's)
  flood         all three, as issue 23 measured it: `get_banned` from `--address`, then
                `--count` sybils from that address and a trusted liar (named `--name`)
                from this machine's own address

`--address A` makes the master see the clients at address A: the connection carries
`X-Forwarded-For: A`, which uvicorn takes from a client on 127.0.0.1 (its default
`forwarded_allow_ips`), the way a local reverse proxy would. Run:
`python tests/attackers.py sybils --url URL --project P --count 12 --address 10.66.0.1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import sys

import numpy as np

ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("address", default="")


def forwarded_connect(address: str = ""):
    """websockets' `connect` with the X-Forwarded-For header set to `address`, or to the
    task's ADDRESS (tasks copy the context they were created in)."""
    from websockets.asyncio.client import connect

    def patched(uri, **kw):
        headers = dict(kw.pop("additional_headers", None) or {})
        if address or ADDRESS.get():
            headers["X-Forwarded-For"] = address or ADDRESS.get()
        return connect(uri, additional_headers=headers, **kw)

    return patched


async def get_banned(args) -> int:
    """Join, take data, send one plausible result, answer the audit with a truncated proof."""
    from mlitb.protocol import frames, proofs
    from mlitb.protocol import messages as msg
    from mlitb.protocol.idtext import text_to_ids

    connect = forwarded_connect(args.address)
    url = args.url.replace("http://", "ws://").replace("https://", "wss://") + "/ws"
    async with connect(url, compression=None, max_size=1 << 28) as ws:
        join = {"type": "join", "protocol": 2, "project": args.project, "role": "trainer",
                "kind": "native", "backend": "attacker", "name": args.name, "capacity": 500,
                "capabilities": {"proofs": 1}}  # fmt: skip
        await ws.send(json.dumps(join))
        pid, n = None, None
        async for data in ws:
            if isinstance(data, bytes):
                continue
            m = json.loads(data)
            if m["type"] == "welcome":
                pid, n = m["project"]["id"], m["num_params"]
            elif m["type"] == "allocation":
                for g in m["add"]:
                    await ws.send(
                        msg.dumps({"type": "cached", "dataset": g["dataset"], "ids": text_to_ids(g["ids"])})
                    )
            elif m["type"] == "work":
                values = np.full(n, 1e-4, np.float32)
                await ws.send(frames.encode_result(pid, m["iteration"], values, 1, 2.3, 10.0, 100,
                                                   kind=frames.DELTA, version=2))  # fmt: skip
            elif m["type"] == "audit":
                head = frames.HEADER.pack(frames.MAGIC, 2, proofs.PROOF, frames.FLOAT32, 0, pid,
                                          m["iteration"], n, 1000, 0.0, 0.0, 0)  # fmt: skip
                assert proofs.is_proof(head)
                await ws.send(head + b"{")  # a proof cut short: unreadable
            elif m["type"] == "error" and m.get("code") == "banned":
                print("banned:", m.get("reason"), flush=True)
                return 0
    return 1


def trusted_liar_worker(args):
    """A Worker that wraps its socket: once it has answered `after` audits, its result
    frames carry `factor` x the values it computed."""
    from mlitb.protocol import codecs, frames
    from mlitb.worker.session import Worker

    class Lying:
        def __init__(self, ws, worker) -> None:
            self._ws, self._worker = ws, worker

        def __getattr__(self, name):
            return getattr(self._ws, name)

        async def send(self, data) -> None:
            if isinstance(data, bytes | bytearray) and not self._worker.honest():
                f = frames.decode(data)
                if f.kind in (frames.RESULT, frames.DELTA):
                    self._worker.lies += 1
                    data = frames.encode_result(f.project, f.iteration, f.values * np.float32(args.factor),
                                                f.vectors, f.loss, f.vectors_per_s, f.compute_ms, kind=f.kind,
                                                dtype=codecs.FLOAT32, version=f.version)  # fmt: skip
            await self._ws.send(data)

    class Liar(Worker):
        lies = 0

        def honest(self) -> bool:
            return self.stats.audits < args.after

        async def _work(self, ws, m):
            return await super()._work(Lying(ws, self), m)

    return Liar(args.url, args.project, name=args.name, seed=args.seed)


async def sybils(args) -> int:
    from mlitb.worker.session import Worker

    workers = [Worker(args.url, args.project, name=f"{args.name}-{i}", seed=args.seed + i)
               for i in range(args.count)]  # fmt: skip
    done = await asyncio.gather(*(w.run() for w in workers), return_exceptions=True)
    for w, outcome in zip(workers, done, strict=True):
        if isinstance(outcome, BaseException):
            print(f"{w.name}: {outcome!r}", flush=True)
    return 0


async def flood(args) -> int:
    """The decoy banned from `address`, then sybils from there and the liar from here."""
    decoy = argparse.Namespace(**{**vars(args), "name": "decoy"})
    ADDRESS.set(args.address)
    if await get_banned(decoy) != 0:
        return 1
    ADDRESS.set("")
    liar = asyncio.create_task(trusted_liar_worker(args).run())
    ADDRESS.set(args.address)
    flood_args = argparse.Namespace(**{**vars(args), "name": "sybil"})
    # the liar's ban ends its run with an error: the sybils go on
    await asyncio.gather(liar, sybils(flood_args), return_exceptions=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("attack", choices=["get_banned", "sybils", "trusted_liar", "flood"])
    p.add_argument("--url", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--name", default="attacker")
    p.add_argument("--address", default="", help="the address the master sees (X-Forwarded-For)")
    p.add_argument("--count", type=int, default=12, help="sybils: workers in this process")
    p.add_argument("--after", type=int, default=3, help="trusted_liar: audits answered honestly first")
    p.add_argument("--factor", type=float, default=-1.0, help="trusted_liar: result x this")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    import mlitb.worker.session as session

    session.connect = forwarded_connect(args.address if args.attack != "flood" else "")
    if args.attack == "flood":
        return asyncio.run(flood(args))
    if args.attack == "get_banned":
        return asyncio.run(get_banned(args))
    if args.attack == "sybils":
        return asyncio.run(sybils(args))
    worker = trusted_liar_worker(args)
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
