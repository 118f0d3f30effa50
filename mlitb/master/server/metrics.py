"""Prometheus text exposition (format 0.0.4) of every project's live numbers."""

from __future__ import annotations

GAUGES = [
    # (metric, summary key, help)
    ("mlitb_project_iteration", "iteration", "Iterations completed (optimizer steps)."),
    ("mlitb_project_workers", "workers", "Connected trainers."),
    ("mlitb_project_trackers", "trackers", "Connected trackers."),
    ("mlitb_project_workers_assigned", "workers_assigned", "Trainers whose results entered the last reduce."),
    (
        "mlitb_project_power_vectors_per_second",
        "power",
        "Vectors processed per second in the last iteration.",
    ),
    ("mlitb_project_vectors_processed_total", "vectors_processed", "Vectors processed since (re)start."),
    ("mlitb_project_test_error", "test_error", "Latest test error measured by the master."),
    ("mlitb_project_train_loss", "train_loss", "Mean training loss of the last iteration."),
    ("mlitb_project_data_size", "data_size", "Training items registered."),
    ("mlitb_project_data_unallocated", "data_unallocated", "Training items allocated to no trainer."),
    ("mlitb_project_results_rejected_total", "rejected", "Results refused (size, NaN/Inf, ...)."),
    ("mlitb_project_results_late_total", "late", "Results discarded: later than max_staleness iterations."),
    ("mlitb_project_results_stale_total", "stale", "Late results applied with a staleness weight."),
    ("mlitb_project_results_clipped_total", "clipped", "Results scaled down by the norm screen."),
    ("mlitb_project_steps_refused_total", "refused_steps", "Steps undone: they would have been non-finite."),
    ("mlitb_project_audits_passed_total", "audits_passed", "Audited results whose proof replayed."),
    ("mlitb_project_audits_failed_total", "audits_failed", "Audits failed (each bans its client)."),
    (
        "mlitb_project_audits_skipped_total",
        "audits_skipped",
        "Proofs not checked (replay queue full, data server failing); their senders are rechecked.",
    ),
    (
        "mlitb_project_held_back_total",
        "held_back",
        "Unverified clients' results left out of a step: no verdict in time, or not auditable.",
    ),
    ("mlitb_project_banned_total", "banned_count", "Clients banned (remembered: the last 1,000)."),
    ("mlitb_project_received_bytes_total", "bytes_in", "WebSocket bytes from workers since creation."),
    ("mlitb_project_sent_bytes_total", "bytes_out", "WebSocket bytes sent to workers since creation."),
]
# per client (label client=ID): (metric, client summary key, help)
CLIENT_GAUGES = [
    ("mlitb_client_received_bytes_total", "bytes_in", "WebSocket bytes received from this client."),
    ("mlitb_client_sent_bytes_total", "bytes_out", "WebSocket bytes sent to this client."),
    ("mlitb_client_compute_seconds_total", "compute_s", "Seconds this client reported computing."),
    ("mlitb_client_connected_seconds", "connected_s", "Seconds since this client joined."),
    ("mlitb_client_computing_ratio", "computing", "Share of its connected time a trainer computed."),
    ("mlitb_client_results_rejected_total", "rejected", "Results of this client refused."),
    ("mlitb_client_results_clipped_total", "clipped", "Results of this client clipped by the norm screen."),
    ("mlitb_client_audits_passed_total", "verified", "Audits of this client's results that passed."),
]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(summaries: list[dict]) -> str:
    lines = []
    for metric, key, help_text in GAUGES:
        kind = "counter" if metric.endswith("_total") else "gauge"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for s in summaries:
            value = s.get(key)
            if value is None:
                continue
            lines.append(f'{metric}{{project="{_label(s["name"])}"}} {float(value):.6g}')
    for metric, key, help_text in CLIENT_GAUGES:
        kind = "counter" if metric.endswith("_total") else "gauge"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for s in summaries:
            for c in s.get("clients", []):
                value = c.get(key)
                if value is None:
                    continue
                labels = f'project="{_label(s["name"])}",client="{_label(c["id"])}",role="{c["role"]}"'
                lines.append(f"{metric}{{{labels}}} {float(value):.6g}")
    lines.append("# HELP mlitb_projects Projects hosted.")
    lines.append("# TYPE mlitb_projects gauge")
    lines.append(f"mlitb_projects {len(summaries)}")
    return "\n".join(lines) + "\n"
