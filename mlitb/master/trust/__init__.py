"""Trust plug-ins: whether a result is believed. Screening (norms, counts), verification by
recomputation (audits, proofs, replays, near-ties), results held for their verdict, and
bans, behind the one `Trust` interface the engine calls."""
