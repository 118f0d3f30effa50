"""Parameters out: whole frames (join, resync, a new view) and the per-step broadcast.

Version-1 clients always get whole float32 frames. Version-2 clients hold a view
(`codecs.ParamView`): the exact parameters, or with `compression` the parameters as the
quantised changes they applied; after a step they get the change to the view, and whole
parameters every FULL_EVERY iterations and whenever the view starts over (start, restart,
a new shape, compression changed)."""

from __future__ import annotations

import logging

import numpy as np

from mlitb.master.project.effects import Send
from mlitb.protocol import codecs, frames

log = logging.getLogger("mlitb.master")

FULL_EVERY = 50  # with compression, whole parameters every this many iterations


class Broadcaster:
    def __init__(self, project_id: int, name: str, effects: list) -> None:
        self.project_id = project_id
        self.name = name
        self.effects = effects  # the engine's effects channel
        self.view = codecs.ParamView()  # what protocol-2 clients hold when compressing
        self.dtype = codecs.FLOAT32
        self._frames: dict[int, bytes] = {}  # protocol -> whole-parameters frame, built on demand
        self.params: np.ndarray | None = None
        self.iteration = 0

    def restart(self, params: np.ndarray, iteration: int, compression: str) -> None:
        """Whole parameters from now on."""
        self.dtype = codecs.DTYPES[compression]
        self.params, self.iteration = params, iteration
        self.view.full(params, iteration)
        self._frames = {}

    def whole(self, protocol: int) -> bytes:
        """Whole parameters: the exact ones for protocol 1, the view (= what in-sync
        clients hold; the exact ones unless compressing) for protocol 2."""
        frame = self._frames.get(protocol)
        if frame is None:
            values = self.params if protocol == 1 else self.view.view
            frame = self._frames[protocol] = frames.encode_parameters(
                self.project_id, self.iteration, values, protocol
            )
        return frame

    def send_whole(self, cid: str, protocol: int) -> None:
        self.effects.append(Send(cid, self.whole(protocol)))

    def step(self, params: np.ndarray, iteration: int, clients, compression: str, full: bool = False) -> None:
        """After a step (or when everyone must start over, `full`): to every client."""
        delta = None
        if full or self.dtype == codecs.FLOAT32 or iteration % FULL_EVERY == 0:
            self.restart(params, iteration, compression)
        else:
            try:
                base, payload = self.view.delta(params, iteration, self.dtype)
            except codecs.CodecError as exc:  # cannot happen for finite parameters: whole ones then
                log.warning("project %s: parameter delta not encodable (%s); whole frames", self.name, exc)
                self.restart(params, iteration, compression)
            else:
                self.params, self.iteration = params, iteration
                delta = frames.encode_param_delta(
                    self.project_id, base, iteration, payload, params.size, self.dtype
                )
                self._frames = {}
        for c in clients:
            self.effects.append(
                Send(c.id, delta if delta is not None and c.protocol >= 2 else self.whole(c.protocol))
            )
