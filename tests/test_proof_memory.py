"""A worker's proof records (charlm-sized checkpoints made and dropped round after round in
several threads) must give their memory back (mlitb.worker.proof.kept_copy): glibc's
arenas kept it before. Real allocations, real RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

RECORDS = """
import sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np, torch
from mlitb.worker.proof import ProofRecorder
n = 818_241  # charlm: p, m, v at 9.8 MB a checkpoint
p, m, v = torch.zeros(n), torch.zeros(n), torch.zeros(n)
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10
def one(k):
    rec = ProofRecorder("local", ("p", "m", "v"), n)
    rec.checkpoint(0, [p, m, v], True)
    for s in range(120 + 7 * k):
        p.add_(1e-3)
        rec.step(np.arange(12), s, lambda: [p, m, v])
    rec.checkpoint(0, [p, m, v], True)
    return rec
records, pool, base = {}, ThreadPoolExecutor(8), rss()
for k in range(16):  # the worker keeps the last three rounds' records, as session.py does
    records[k] = pool.submit(one, k).result()
    pool.submit(records[k].commit, 1, k).result()
    for old in [j for j in records if j < k - 2]:
        del records[old]
live = sum(4 * n * 3 * len(r.points) for r in records.values()) >> 20
print(rss() - base, live)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_proof_records_made_and_dropped_in_threads_give_their_memory_back():
    done = subprocess.run([sys.executable, "-c", RECORDS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown, live = map(int, done.stdout.split())
    # the records alive at the end plus one round in flight and its commit: with clones from
    # glibc's heap this workload grew by about 1.1 GB here; with kept_copy's own maps by
    # about the live records
    assert grown < live + 250, (grown, live)
