"""`mlitb project credit P [--json]`: a project's volunteers by credit, from the master's
own counts (mlitb.master.project.credit): rank, name, volunteer id, credit in GMAC
(1e9 multiply-adds of applied training work), share, backend, first and last seen."""

from __future__ import annotations

import json
import time


def credit(args, request) -> int:
    """`request`: project_cmd's call to the master (it registers this command)."""
    out = request(args, "GET", f"/api/projects/{args.name}/credit", reader=args.name).json()
    if args.json:
        print(json.dumps(out["rows"]))
        return 0
    if not out["shown"]:
        print(f"{out['project']}: a dp project: who took part is for its owner to see (with the owner token)")
        return 0
    rows = out["rows"]
    print(
        f"{out['project']}: {out['volunteers']} volunteers, {out['total']:.3f} GMAC of applied work "
        f"({out['macs_per_vector'] / 1e6:.3g} M multiply-adds per training vector)"
    )
    if not rows:
        return 0
    head = f"{'rank':>4} {'name':<20} {'volunteer':<22} {'GMAC':>12} {'share':>7} {'backend':<14}"
    print(f"{head} first / last seen")
    for r in rows:
        seen = f"{_when(r['first_seen'])} / {_when(r['last_seen'])}"
        gone = f"  forfeited: {r['forfeited']}" if r["forfeited"] else ""
        print(
            f"{r['rank']:>4} {(r['name'] or '-')[:20]:<20} {r['volunteer']:<22} {r['credit']:>12.3f} "
            f"{r['share']:>7.1%} {(r['backend'] or '-')[:14]:<14} {seen}{gone}"
        )
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
