"""A server-rendered status page at / : what runs, without JavaScript. (The full
dashboard is the browser client's.)"""

from __future__ import annotations

from html import escape

COLUMNS = [
    ("name", "project"),
    ("state", "state"),
    ("iteration", "iteration"),
    ("workers", "workers"),
    ("workers_assigned", "assigned"),
    ("test_error", "test error"),
    ("train_loss", "train loss"),
    ("data_size", "data size"),
    ("data_unallocated", "unallocated"),
    ("vectors_processed", "vectors processed"),
    ("power", "power (vectors/s)"),
    ("iteration_seconds", "iteration time (s)"),
]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_status(summaries: list[dict], data_url: str) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(s.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>"
        for s in summaries
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>mlitb master</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}th{{background:#f4f4f4}}</style>
</head><body><h1>mlitb master</h1>
<table><thead><tr>{head}</tr></thead>
<tbody>{rows or '<tr><td colspan="12">no projects</td></tr>'}</tbody></table>
<p>Data server: <a href="{escape(data_url)}/datasets">{escape(data_url)}</a> ·
API: <a href="/api/projects">/api/projects</a> · <a href="/metrics">/metrics</a> ·
<a href="/docs">/docs</a></p>
</body></html>"""
