"""Version-2 proofs, commit then reveal (mlitb.protocol.proofs; docs/protocol.md, "Audits"),
as the master and a relay both take them.

A version-2 trainer answers `audit` with a commit: hashes of its whole record and the int8
chain of its parameters (or gradient sums). The commit's cheap checks run at once
(mlitb.master.trust.verification.check_commit), the segments to replay are chosen from it
as from a whole proof, and the trainer is asked to `reveal` just those checkpoints and
keys. The reveal, checked against the commit, is what the replay thread takes (its job
is queued only then); until it arrives the audit stays open, so the audit's deadline and
strikes (mlitb.master.trust.audits) cover it. A version-1 proof (no `phase`) goes to
the Auditor as before.
"""

from __future__ import annotations

from mlitb.master.trust.verification import ProofInvalid, check_commit
from mlitb.protocol import messages as msg
from mlitb.protocol import proofs


def on_proof(auditor, client, data: bytes, num_params: int) -> tuple[str | None, dict | None]:
    """A proof frame of any version arrived from `client` -> (why it is refused (a ban;
    "unasked": ignored), the `reveal` message to send back, if any)."""
    try:
        phase = proofs.phase(data)
    except proofs.ProofError as exc:
        return ("unasked" if client.trust.audit is None else f"unreadable proof: {exc}"), None
    if phase is None:  # version 1: the whole record
        return auditor.on_proof(client, data, num_params), None
    job = client.trust.audit
    if job is None:
        return "unasked", None  # not an offence: a proof racing a timeout
    if phase == proofs.COMMIT:
        if job.commit is not None:
            return f"a second commit for the audit of iteration {job.iteration}", None
        try:
            _project, iteration, header, chain, scales = proofs.decode_commit(data, num_params)
        except proofs.ProofError as exc:
            return f"unreadable proof: {exc}", None
        if iteration != job.iteration:
            return f"commit for iteration {iteration}, the audit asked for {job.iteration}", None
        try:
            job.commit = check_commit(job, header, chain, scales)
        except ProofInvalid as exc:
            return str(exc), None
        c = job.commit
        return None, msg.reveal(job.iteration, c.chosen, c.full, c.firsts)
    if phase == proofs.REVEAL:
        if job.commit is None:
            return f"a reveal before its commit (iteration {job.iteration})", None
        arrays = len(job.commit.header["arrays"])
        try:
            iteration, states, keys, header = proofs.decode_reveal(
                data, num_params, arrays, job.commit.request(), job.commit.key_counts()
            )
        except proofs.ProofError as exc:
            return f"unreadable proof: {exc}", None
        if iteration != job.iteration:
            return f"reveal for iteration {iteration}, the audit asked for {job.iteration}", None
        job.proof = (header, (states, keys))
        client.trust.audit = None
        auditor.enqueue(job)
        return None, None
    return f"unreadable proof: phase {phase!r}, expected 'commit' or 'reveal'", None
