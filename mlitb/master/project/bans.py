"""Bans: the one place they take effect, and bans a relay reports of its own clients.

The trust policy decides (mlitb.master.trust: a failed audit, a bad proof, a third audit
unanswered, a third impossible result) and queues the decision; `apply_bans` carries it
out after each event."""

from __future__ import annotations

import logging

from mlitb.master.project.clients import Client, Share
from mlitb.master.project.effects import Close
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")


def child_banned(e, cid: str, message: msg.ChildBanned, now: float) -> None:
    """A relay banned a client under it (an audit failed there): listed among the
    project's bans with the relay's name; its address makes later clients from there
    suspect here too."""
    relay = e.clients.get(cid)
    if relay is None or relay.kind != "relay":
        return
    child = Client("", "trainer", message.kind, "", message.name, 0.0, Share(0))
    entry = e.trust.list_ban(child, f"{cid}/{message.name}", message.iteration, message.reason,
                                now + e.epoch)  # fmt: skip
    entry["relay"] = relay.name or cid
    entry["relay_address"] = message.address  # on the relay's network: suspect there, not here
    if message.volunteer:  # its credit here is gone, as a direct client's
        e.credit.forfeit_volunteer(message.volunteer, message.reason, now + e.epoch)
    e.changed()
    log.warning("project %s: relay %s banned %s: %s", e.name, cid, message.name, message.reason)


def apply_bans(e, now: float) -> None:
    """The one place bans take effect. A lying trainer: its result still in the open
    iteration is taken back (with its bucket), its data returns to the pool, its socket
    is closed with CLOSE_BANNED, and the ban is listed (with its address: later clients
    from there are audited every time)."""
    while e.trust.bans:
        ban = e.trust.bans.pop(0)
        cid, client = ban.client, e.clients.get(ban.client)
        e.trust.banish(cid)
        if e.trust.listed(cid):
            continue  # a verdict on another of its results, after the ban
        log.warning("project %s: client %s (%s) banned: %s", e.name, cid,
                    client.address if client is not None else "gone", ban.reason)  # fmt: skip
        iteration = ban.job.iteration if ban.job is not None else e.iteration
        e.trust.list_ban(client, cid, iteration, ban.reason, now + e.epoch)
        e.credit.forfeit(cid, ban.reason, now + e.epoch)  # its volunteer's credit here is gone
        e.changed()
        if client is None:
            continue  # it left before the verdict: listed, nothing to close
        if ban.job is not None and ban.job.accepted_in == e.iteration and e.working:
            gone = e.algorithm.take_back(e.acc, cid)  # with its bucket: honest mates lose this round
            e.trust.taken_back(gone)
            if len(gone) > 1:
                log.info("project %s: results of %s went with the banned one's bucket", e.name,
                         ", ".join(c for c in gone if c != cid))  # fmt: skip
        e.send(cid, msg.error("banned", f"banned from project {e.name}: {ban.reason}"))
        e.effects.append(Close(cid, msg.CLOSE_BANNED, "banned: a result failed verification"))
        e.disconnect(cid, now, "banned")
