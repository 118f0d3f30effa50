"""A server-rendered status page at /status: what runs, without JavaScript. (The full
dashboard is the browser client's.) On a phone the table scrolls in its own box."""

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
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/favicon.ico"><title>mlitb master</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}th{{background:#f4f4f4}}
.scroll{{overflow-x:auto;max-width:100%}}p{{overflow-wrap:anywhere}}
@media (max-width:600px){{body{{margin:.75rem}}}}</style>
</head><body><h1>mlitb master</h1>
<div class="scroll"><table><thead><tr>{head}</tr></thead>
<tbody>{rows or '<tr><td colspan="12">no projects</td></tr>'}</tbody></table></div>
<p>Data server: <a href="{escape(data_url)}/datasets">{escape(data_url)}</a> ·
API: <a href="/api/projects">/api/projects</a> · <a href="/metrics">/metrics</a> ·
<a href="/docs">/docs</a></p>
</body></html>"""
