"""What the engine shows: a client's dashboard row, the project summary (REST, the
dashboard, metrics, `mlitb project show --json`) and bans as anyone may read them."""

from __future__ import annotations

import ipaddress
import re

from mlitb.master.project.clients import Client
from mlitb.master.project.credit import GMAC, KEY_PATTERN, volunteer_id
from mlitb.master.project.step import last_test_error


def public_ban(entry: dict) -> dict:
    """A ban as anyone may read it: addresses cut to their network (IPv4 /16, IPv6 /32);
    the full one is in the store and the master's log line of the ban."""
    out = {k: v for k, v in entry.items() if k not in ("address", "relay_address")}
    for key in ("address", "relay_address"):
        if entry.get(key):
            out[key] = mask_address(entry[key])
    return out


def mask_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "?"
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def client_row(c: Client, held: int, now: float) -> dict:
    """One client's row: `held` the ids allocated to it (a tracker: the test items)."""
    s, o, t = c.stats, c.orders, c.trust
    return {
        "id": c.id,
        "name": c.name,
        "kind": c.kind,
        "role": c.role,
        "backend": c.backend,
        "threads": c.threads,
        "volunteer": c.volunteer,
        "vectors_per_s": round(s.vectors_per_s, 1),
        "vectors_processed": s.vectors_processed,
        "data_allocated": held,
        "data_cached": (len(c.share.cached) or c.share.device_items)
        if c.role == "trainer"
        else sum(c.share.tracked.values()),
        "lag_ms": None if o.latency.lag_ms is None else round(o.latency.lag_ms, 1),
        "benched": o.latency.benched,
        "working": o.scheduled is not None,
        "results": s.results,
        "rejected": s.rejected,
        "clipped": s.clipped,
        "verified": t.audits_passed,
        "proof_bytes": t.proof_bytes,
        "audit_error": float(f"{t.audit_error:.3g}"),
        "auditing": t.audit is not None,
        "suspect": t.suspect,
        "recheck": t.recheck,
        "held_back": t.held_back,
        "probation": c.share.probation if c.role == "trainer" else None,
        **(
            {"relay_clients": c.relay.clients, "children": c.relay.children, "relay_url": c.relay.url}
            if c.kind == "relay"
            else {}
        ),
        "test_error": s.test_error,
        "late": s.late,
        "stale": s.stale,
        "admitted": c.admitted,
        "protocol": c.protocol,
        "capacity": c.share.limit or c.share.capacity,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "compute_s": round(s.compute_ms / 1000, 3),
        "connected_s": round(max(now - c.joined, 0.0), 3),
        # share of a trainer's time computing since its first work order (before it: data
        # fetch, waiting to be admitted); the rest is waiting for orders and parameters
        "computing": round(min(s.compute_ms / 1000 / max(now - o.first_work, 1e-3), 1.0), 3)
        if c.role == "trainer" and o.first_work is not None
        else None,
    }


# A trainer's figures that say when it took part, how much it holds or did: not shown when
# the algorithm keeps participation secret (dp: the epsilon assumes nobody learns who was in
# a round); the keys stay, as None
PARTICIPATION = ("vectors_per_s", "vectors_processed", "data_allocated", "data_cached", "lag_ms", "benched",
                 "working", "results", "rejected", "clipped", "verified", "proof_bytes", "audit_error",
                 "auditing", "held_back", "late", "stale", "bytes_in", "bytes_out", "compute_s",
                 "computing")  # fmt: skip


def private_row(row: dict) -> dict:
    return {**row, **dict.fromkeys(k for k in PARTICIPATION if k in row)} if row["role"] == "trainer" else row


def summary(e, now: float) -> dict:
    """`e`: the Engine (its public state only)."""
    last = e.history[-1] if e.history else {}
    tested = next((r for r in reversed(e.history) if r.get("test_error") is not None), {})
    test = tested.get("test_error")
    test_items = sum(s.items for s in e.sources.values() if s.role == "test")
    clients = [
        client_row(c, len(e.allocator.held.get(c.id, ())) if c.role == "trainer" else test_items, now)
        for c in e.clients.values()
    ]
    if not e.algorithm.discloses_participation:
        clients = [private_row(r) for r in clients]
    n = e.counters
    return {
        "id": e.project_id,
        "name": e.name,
        "state": e.state,
        "iteration": e.iteration,
        "workers": sum(1 for c in e.clients.values() if c.role == "trainer"),
        "trackers": sum(1 for c in e.clients.values() if c.role == "tracker"),
        "workers_assigned": last.get("workers_assigned", 0) if e.algorithm.discloses_participation else None,
        "data_size": e.allocator.registered,
        "data_allocated": e.allocator.allocated,
        "data_unallocated": len(e.allocator.pool),
        "vectors_processed": n.vectors if e.algorithm.discloses_participation else None,
        "power": last.get("power", 0.0) if e.algorithm.discloses_participation else None,
        "iteration_seconds": last.get("seconds"),
        "round_time": e.round_s,  # s of work the open iteration's orders ask (rounds grow to T)
        "test_error": test,
        # nats per token (per test item for a classifier) of the same score; a language
        # model's figure of merit (its test_error: the share of next tokens mispredicted)
        "test_loss": tested.get("test_loss") if e.spec.loss in ("softmax", "seqsoftmax") else None,
        "train_loss": last.get("train_loss"),
        "rejected": n.rejected,
        "late": n.late,
        "stale": n.stale,
        "refused_steps": n.refused_steps,
        "clipped": n.clipped,
        "verify": e.hyper.verify,
        "audits": n.audits,
        "audits_passed": n.audits_passed,
        "audits_failed": n.audits_failed,
        "audits_skipped": n.audits_skipped,
        "held_back": n.held_back,
        **e.trust.view(),  # audits_queued, replay_s
        "banned": [public_ban(b) for b in n.banned[-20:]],
        "banned_count": len(n.banned),
        "aggregation": e.hyper.aggregation,
        "algorithm": e.hyper.algorithm,
        "data_source": e.hyper.data_source,
        "dp": e.hyper.dp,
        **e.algorithm.view(),  # dp projects: epsilon spent, budget, noise, clip, rounds
        "compression": e.hyper.compression,
        "bytes_in": n.bytes_in,
        "bytes_out": n.bytes_out,
        "contributors": dict(n.contributors),
        "clients": clients,
    }


def credit_view(e, key: str = "", shown: bool = True) -> dict:
    """GET /api/projects/{name}/credit: every volunteer's row by credit when `shown`, and
    the row of the volunteer holding `key` (the volunteer page's "your contribution")."""
    table = e.credit.table()
    mine = volunteer_id(key) if re.fullmatch(KEY_PATTERN, key or "") else None
    tested = last_test_error(e)
    return {
        "project": e.name,
        "unit": "GMAC",  # credit: 1e9 multiply-adds of applied training work
        "macs_per_vector": e.credit.macs_per_vector,
        "test_error": tested,
        "volunteers": len(table),
        "total": sum(r["macs"] for r in table) / GMAC,
        "shown": shown,
        "rows": table if shown else [],
        "you": next((r for r in table if r["volunteer"] == mine), None),
    }
