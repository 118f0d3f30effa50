"""What runs inside Ray: one native worker per actor, and the fleets' registry.

These classes are plain Python; `control.py` wraps them with `ray.remote` and the
resources of the fleet (so importing this module needs no Ray). A worker actor runs the
native worker's asyncio loop in a thread, so Ray can call `status` and `stop` meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading
import time


class FleetWorker:
    """One `mlitb worker` inside a Ray actor. Ray runs `__init__` again in a fresh process
    when the actor's process dies: the new worker joins the project as a new client (the
    project returned the old one's data to its pool when its socket closed)."""

    def __init__(self, fleet: str, index: int, spec: dict) -> None:
        import ray
        import torch

        from mlitb.worker.session import Worker

        self.fleet, self.index, self.spec = fleet, index, spec
        self.name = f"{fleet}-{index}"
        registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
        self.starts = ray.get(registry.started.remote(self.name))
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned: with any, train on CUDA
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        self.started = time.time()
        self.fatal = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.worker = Worker(
            spec["url"],
            spec["project"],
            spec.get("role", "trainer"),
            self.device,
            spec.get("capacity"),
            name=self.name,
            join_key=spec.get("join_key", ""),
            batch_size=spec.get("batch_size"),
        )
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from mlitb.worker.session import FatalError

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.worker.run()

        try:
            asyncio.run(main())
        except FatalError as exc:  # refused for good (banned, wrong key): say so, do not retry
            self.fatal = str(exc)

    def status(self) -> dict:
        s = dataclasses.asdict(self.worker.stats)
        s.pop("errors", None)
        return {
            **s,
            "name": self.name,
            "fleet": self.fleet,
            "index": self.index,
            "device": self.device,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "starts": self.starts,
            "uptime_s": round(time.time() - self.started, 1),
            "running": self._thread.is_alive(),
            "fatal": self.fatal,
        }

    def pid(self) -> int:
        return os.getpid()

    def stop(self, timeout: float = 10.0) -> bool:
        """Leave the project cleanly (the socket closes, the data goes back to the pool)."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.worker.stop)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class FleetRelay:
    """One `mlitb relay` inside a Ray actor, on this node's address and a fixed port
    (`relay_port` + index, so a restarted relay is found where its workers look)."""

    def __init__(self, fleet: str, index: int, spec: dict) -> None:
        import ray

        from mlitb.relay.server import RelayService, build_app
        from mlitb.server_runner import BackgroundServer

        self.fleet, self.index, self.name = fleet, index, f"{fleet}-relay-{index}"
        registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
        self.starts = ray.get(registry.started.remote(self.name))
        self.service = RelayService(spec["url"], spec["project"], spec["owner_token"], self.name)
        port = int(spec.get("relay_port") or 0)
        host = spec.get("relay_host") or "0.0.0.0"
        self.server = BackgroundServer(build_app(self.service), host, port + index if port else 0)
        # all interfaces: the node's address as Ray knows it (what other nodes reach)
        shown = ray.util.get_node_ip_address() if host in ("0.0.0.0", "::") else host
        self.url = f"http://{shown}:{self.server.sock.getsockname()[1]}"
        # its volunteers' address, reported up with the next subtree (the dashboard's link)
        self.service.public_url = self.service.core.public_url = self.url

    def address(self) -> str:
        return self.url

    def status(self) -> dict:
        return {**self.service.status(), "name": self.name, "url": self.url, "starts": self.starts,
                "pid": os.getpid(), "host": socket.gethostname()}  # fmt: skip

    def pid(self) -> int:
        return os.getpid()

    def stop(self, timeout: float = 10.0) -> bool:
        self.server.stop()
        return True


NAMESPACE = "mlitb"
REGISTRY = "mlitb-fleets"


class FleetRegistry:
    """The fleets' settings and each worker's start count (1 = never restarted)."""

    def __init__(self) -> None:
        self.fleets: dict[str, dict] = {}
        self.starts: dict[str, int] = {}

    def add(self, fleet: str, spec: dict) -> None:
        self.fleets[fleet] = spec

    def remove(self, fleet: str) -> dict | None:
        spec = self.fleets.pop(fleet, None)
        for name in [n for n in self.starts if n.rsplit("-", 1)[0] == fleet]:
            del self.starts[name]
        return spec

    def started(self, name: str) -> int:
        self.starts[name] = self.starts.get(name, 0) + 1
        return self.starts[name]

    def list(self) -> dict[str, dict]:
        return {f: {**spec, "starts": {n: c for n, c in self.starts.items() if n.rsplit("-", 1)[0] == f}}
                for f, spec in self.fleets.items()}  # fmt: skip
