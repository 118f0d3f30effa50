"""Counters of refused credentials (bad sign-in codes, stream sockets without their auth
message, ...): someone guessing or replaying shows up in GET /metrics as
`mlitb_security_events_total{event="..."}`, next to the log line each refusal writes."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("mlitb.master")


class SecurityEvents:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def refused(self, event: str, message: str, *args) -> None:
        """Count `event` and log the refusal (`message % args`, with no secret in it)."""
        self.counts[event] += 1
        log.warning("refused (%s, %d so far): " + message, event, self.counts[event], *args)

    def count(self, event: str) -> None:
        self.counts[event] += 1

    def render(self) -> str:
        lines = [
            "# HELP mlitb_security_events_total Credentials refused or accepted, by event.",
            "# TYPE mlitb_security_events_total counter",
        ]
        lines += [f'mlitb_security_events_total{{event="{e}"}} {n}' for e, n in sorted(self.counts.items())]
        return "\n".join(lines) + "\n"
