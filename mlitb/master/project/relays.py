"""What a relay (a client of kind "relay") reports about the clients under it: its
subtree (capacity, count ceiling, the dashboard's rows) and whose work each of its
results holds (their credit). Bans it reports are mlitb.master.project.bans'."""

from __future__ import annotations

from mlitb.protocol import messages as msg

CONTRIBUTIONS_KEPT = 8  # iterations of a relay's `contributions` kept (results up to that late)


def subtree(e, cid: str, message: msg.Subtree) -> None:
    """A relay's subtree changed: its capacity (applied at the next boundary's rebalance)
    and the clients under it (its count ceiling, the dashboard's rows)."""
    if (c := e.clients.get(cid)) is None:
        return
    c.share.capacity = message.capacity
    c.relay.clients = message.clients
    c.relay.children = [child.model_dump() for child in message.children]
    url = message.url.strip()
    c.relay.url = url if url.startswith(("http://", "https://")) and " " not in url else ""
    if c.admitted and c.role == "trainer":
        c.share.limit = e._capacity(c)
    e.changed()


def contributions(e, cid: str, message: msg.Contributions) -> None:
    """Whose work a relay's next result holds, kept for the step that applies it (the
    credit split: mlitb.master.project.step.reduce, mlitb.master.project.credit)."""
    if (c := e.clients.get(cid)) is None or c.kind != "relay":
        return
    kept = c.relay.contributions
    kept[message.iteration] = list(message.rows)
    while len(kept) > CONTRIBUTIONS_KEPT:
        del kept[min(kept)]
