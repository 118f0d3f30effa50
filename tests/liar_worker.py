"""A real native worker that lies, for the verification tests: `python tests/liar_worker.py
URL PROJECT ATTACK NAME`. It computes honestly (and keeps honest proofs), then sends
a forged result (sign_flip: x -100; minus8: x -8; little: half its change; scale: x 1e6; overflow:
its result / its count x 1e30 with a count of 1; inflate: a count of 100,000,000;
silence: zeros with its count x 1,000), or trains on flipped labels (label_flip: its
results and proofs agree, its labels do not).
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import torch


def main(url: str, project: str, attack: str, name: str) -> int:
    import mlitb.worker.session as session
    from mlitb.protocol import codecs, frames
    from mlitb.worker import cache

    honest_encode = frames.encode_result

    def encode_result(project_id, iteration, values, vectors, loss, vps, ms, **kw):
        kw = {**kw, "payload": None, "dtype": codecs.FLOAT32}
        values = np.asarray(values, np.float32)
        if attack == "sign_flip":
            values = values * np.float32(-100)
        elif attack == "minus8":  # issue 23's liar under a relay
            values = values * np.float32(-8)
        elif attack == "little":
            values = values * np.float32(0.5)
        elif attack == "scale":
            values = values * np.float32(1e6)
        elif attack == "overflow":  # the "gradient/n x 1e30, count 1", kept finite
            peak = float(np.max(np.abs(values))) or 1.0
            values, vectors = (values / np.float32(peak) * np.float32(1e30)).astype(np.float32), 1
        elif attack == "inflate":
            vectors = 100_000_000
        elif attack == "silence":
            values, vectors = np.zeros_like(values), vectors * 1000
        return honest_encode(project_id, iteration, values, vectors, loss, vps, ms, **kw)

    frames.encode_result = encode_result
    if attack == "label_flip":
        honest_batch = cache.ItemCache.batch_keys

        def flipped(self, rows):
            x, y, keys = honest_batch(self, rows)
            return x, (9 - y) % 10, keys

        cache.ItemCache.batch_keys = flipped
    torch.set_num_threads(1)
    worker = session.Worker(url, project, name=name, seed=7)
    try:
        asyncio.run(worker.run())
    except session.FatalError as exc:
        print(f"stopped: {exc}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
