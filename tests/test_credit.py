"""Volunteer credit in the Engine, sans I/O (mlitb.master.project.credit): accepted
vectors x the model's multiply-adds, counted when the step is taken, from the master's
own counts; taken-back results and banned volunteers earn nothing; identities are keys."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from test_algorithms import MODEL, N, engine, frame, start
from test_engine import sends

from mlitb.master.project.credit import GMAC, NAME_CHARS, Ledger, clean_name, volunteer_id
from mlitb.master.project.views import credit_view
from mlitb.master.trust.policy import Ban
from mlitb.master.trust.verification import AuditJob
from mlitb.model.cost import multiply_adds
from mlitb.model.spec import Spec
from mlitb.protocol import frames
from mlitb.protocol import messages as msg

KEY_A, KEY_B = "a" * 16 + "-key-of-A", "b" * 16 + "_key-of-B"


def keyed(e, cid: str, key: str = "", name: str = "", **kw) -> None:
    fields = {"volunteer": key} if key else {}
    e.connect(cid, msg.Join(type="join", project="p", protocol=2, name=name, **fields, **kw), 0.0)


def running(cids_keys: dict[str, str], **hyper):
    """An engine past its first boundary with these clients (id -> key) admitted."""
    e = engine(algorithm="local_sgd", **hyper)
    for cid, key in cids_keys.items():
        keyed(e, cid, key, name=f"name of {cid}")
    sends(e)
    start(e, ())  # admits, caches, first boundary (no one else joins)
    return e


def step(e, results: dict[str, int], t: float = 0.5) -> None:
    """Each client's result (a small change of `vectors`) for the open iteration, then the step."""
    for cid, vectors in results.items():
        assert (
            e.on_result(cid, frame(frames.DELTA, e.iteration, np.full(N, 1e-3, np.float32), vectors), t)
            is None
        )
    e.poll(t)


def rows(e) -> dict[str, dict]:
    return {r["volunteer"]: r for r in e.credit.table()}


def test_a_vector_costs_its_forward_and_backward_multiply_adds():
    # input 4x4x1 -> softmax 3: an fc of 16 x 3 = 48 multiply-adds forward, 48 for the
    # weights' gradient, none for the input's (nothing below it needs it)
    assert multiply_adds(MODEL.spec) == 96
    conv = Spec.from_json(
        [
            {"type": "input", "out_sx": 6, "out_sy": 6, "out_depth": 1},
            {"type": "conv", "sx": 3, "filters": 2, "pad": 1},  # 36 positions x 2 x 9 = 648 forward
            {"type": "softmax", "num_classes": 2},  # fc 72 x 2 = 144 forward
        ]
    )
    # forward 792, weight gradients 792, the input gradient of the fc (144) only
    assert multiply_adds(conv) == 792 + 792 + 144


def test_applied_vectors_earn_credit_with_shares_that_sum_to_one():
    e = running({"A": KEY_A, "B": KEY_B})
    assert e.credit.macs_per_vector == 96
    step(e, {"A": 30, "B": 10})
    assert e.iteration == 1
    r = rows(e)
    a, b = r[volunteer_id(KEY_A)], r[volunteer_id(KEY_B)]
    assert (a["vectors"], a["macs"], a["results"], a["name"]) == (30, 30 * 96, 1, "name of A")
    assert (b["vectors"], b["macs"]) == (10, 960)
    assert a["credit"] == pytest.approx(30 * 96 / GMAC) and (a["share"], b["share"]) == (0.75, 0.25)
    assert [x["rank"] for x in e.credit.table()] == [1, 2] and e.credit.table()[0]["volunteer"] == a[
        "volunteer"
    ]
    view = credit_view(e, KEY_B)
    assert view["you"]["volunteer"] == b["volunteer"] and sum(x["share"] for x in view["rows"]) == 1.0
    assert credit_view(e, "not a key")["you"] is None and credit_view(e, KEY_B, shown=False)["rows"] == []
    # the client rows say whose work it is
    summary = e.summary()
    assert {c["id"]: c["volunteer"] for c in summary["clients"]} == {"A": a["volunteer"], "B": b["volunteer"]}


def test_work_not_applied_earns_nothing():
    e = running({"A": KEY_A})
    step(e, {"A": 20})
    before = rows(e)[volunteer_id(KEY_A)]["macs"]
    # a result for an iteration that is no longer open is refused as late: nothing applied
    assert e.on_result("A", frame(frames.DELTA, e.iteration + 5, np.ones(N, np.float32), 20), 1.0) is not None
    assert rows(e)[volunteer_id(KEY_A)]["macs"] == before


def test_a_ban_takes_the_open_result_back_and_forfeits_the_volunteers_credit():
    e = running({"A": KEY_A, "B": KEY_B, "C": "c" * 20}, aggregation="mean", bucket_size=1)
    step(e, {"A": 10, "B": 10, "C": 10})
    it = e.iteration
    for cid in ("A", "B", "C"):
        assert e.on_result(cid, frame(frames.DELTA, it, np.full(N, 1e-3, np.float32), 10), 0.6) is None
    job = AuditJob("A", it, "local", np.zeros(N, np.float32), 10, 0, e.params.copy(), None, 0.0, {}, 0.6,
                   accepted_in=it)  # fmt: skip
    e.trust.bans.append(Ban("A", "segment 3 does not replay", job))
    e.poll(0.7)  # the ban applies: A's result leaves the sums before the step
    e.next_start = e.deadline = 0.0
    e.poll(1.0)
    r = rows(e)
    a = r[volunteer_id(KEY_A)]
    assert a["macs"] == 0 and a["credit"] == 0 and a["forfeited"] == "segment 3 does not replay"
    assert r[volunteer_id(KEY_B)]["vectors"] == 20  # its two applied results
    assert e.history[-1]["vectors"] == 20  # the step had B's and C's only
    assert sum(x["share"] for x in e.credit.table()) == pytest.approx(1.0)
    # a forfeited volunteer earns nothing more here, whichever tab it comes back from
    keyed(e, "A2", KEY_A)
    e.credit.earn("A2", 50, 2.0)
    assert rows(e)[volunteer_id(KEY_A)]["macs"] == 0


def test_one_device_as_many_identities_earns_what_it_earns_as_one():
    one = running({"A": KEY_A})
    step(one, {"A": 90})
    many = running({f"A{i}": f"{i}" * 16 for i in range(3)})
    step(many, {"A0": 30, "A1": 30, "A2": 30})
    assert sum(r["macs"] for r in many.credit.table()) == rows(one)[volunteer_id(KEY_A)]["macs"]


def test_identity_is_a_secret_key_and_its_public_id_cannot_be_claimed():
    e = running({"A": KEY_A})
    public = volunteer_id(KEY_A)
    assert public.startswith("v") and len(public) == 17 and KEY_A not in public
    keyed(e, "X", public.replace("v", "x") + "forged")  # someone who read A's id from a page
    assert e.clients["X"].volunteer != public
    keyed(e, "Y")  # no key: a volunteer of this connection only
    assert e.clients["Y"].volunteer == "anon-Y"
    for bad in ("short", "has spaces in it here", "x" * 101, "<script>alert(1)</script>xxxxx"):
        with pytest.raises(ValidationError):
            msg.Join(type="join", project="p", volunteer=bad)


def test_display_names_are_text_of_bounded_length():
    assert (
        clean_name("<b>Ann</b>\u202e\u200b  Lee\n") == "<b>Ann</b> Lee"
    )  # markup stays text; bidi, zero width go
    assert len(clean_name("x" * 99)) == NAME_CHARS
    with pytest.raises(ValidationError):  # 10,000 characters: the join is refused
        msg.Join(type="join", project="p", name="n" * 10_000)
    e = running({"A": KEY_A})
    keyed(e, "A2", KEY_A, name="")  # a tab without a name keeps the volunteer's
    assert rows(e)[volunteer_id(KEY_A)]["name"] == "name of A"


def test_status_updates_backend_and_threads_of_the_client_and_the_row():
    e = running({"A": KEY_A})
    e.on_status("A", msg.Status(type="status", backend="wasm", threads=4))
    (row,) = e.summary()["clients"]
    assert (row["backend"], row["threads"]) == ("wasm", 4)
    assert (rows(e)[volunteer_id(KEY_A)]["backend"], rows(e)[volunteer_id(KEY_A)]["threads"]) == ("wasm", 4)


def test_the_ledger_round_trips_through_its_stored_rows():
    e = running({"A": KEY_A, "B": KEY_B})
    step(e, {"A": 30, "B": 10})
    stored = e.credit.take_dirty()
    assert {r["volunteer"] for r in stored} == {volunteer_id(KEY_A), volunteer_id(KEY_B)}
    assert e.credit.take_dirty() == []  # only what changed since
    back = Ledger.stored(96, [*stored, {"volunteer": "vold", "macs": 5, "unknown_field": 1}])
    table = {r["volunteer"]: r for r in back.table()}
    for k, row in rows(e).items():  # everything but the shares (vold's credit counts too)
        assert {**table[k], "share": 0} == {**row, "share": 0}
    assert table["vold"]["macs"] == 5  # a field it does not know is ignored


def test_credit_comes_from_the_masters_counts_not_from_what_a_client_says():
    # a "credit" message is no message at all: refused at parsing (the socket is closed)
    with pytest.raises(msg.ProtocolError):
        msg.parse_client_message('{"type": "credit", "volunteer": "v1", "credit": 1e12}')
    # a result that claims a speed of 1e9 vectors/s earns for its 40 vectors only, and the
    # claim is not even shown (the master's own measure is)
    e = running({"A": KEY_A})
    values = np.full(N, 1e-3, np.float32)
    data = frames.encode(frames.DELTA, 3, e.iteration, values, 40, loss=1.0, vectors_per_s=1e9, compute_ms=5)
    assert e.on_result("A", frames.decode(data), 0.5) is None
    e.poll(0.5)
    row = rows(e)[volunteer_id(KEY_A)]
    assert (row["vectors"], row["macs"]) == (40, 40 * 96)
    assert e.summary()["clients"][0]["vectors_per_s"] < 1e6


def test_a_relays_applied_work_is_credited_to_the_volunteers_under_it():
    """A relay computes nothing: what the master applies of its result is split among the
    volunteers its `contributions` name (largest remainders: the vectors add up); one of
    them banned at the relay forfeits its credit here."""
    e = engine(algorithm="local_sgd")
    keyed(e, "A", KEY_A, name="direct")
    keyed(e, "R", "r" * 20, name="site relay", kind="relay")
    sends(e)
    start(e, ())
    under_1, under_2 = volunteer_id("u" * 20), volunteer_id("w" * 20)
    said = [{"volunteer": under_1, "vectors": 2, "kind": "browser", "backend": "wasm", "name": "tab",
             "threads": 4},
            {"volunteer": under_2, "vectors": 1, "kind": "native", "backend": "torch-cpu"}]  # fmt: skip
    e.on_contributions("R", msg.parse_client_message(msg.dumps(msg.contributions(e.iteration, said))))
    step(e, {"A": 10, "R": 20})
    r = rows(e)
    assert (r[under_1]["vectors"], r[under_2]["vectors"]) == (13, 7)  # 20 x 2/3 and 1/3, rounded
    assert (r[under_1]["kind"], r[under_1]["backend"], r[under_1]["threads"], r[under_1]["name"]) == (
        "browser", "wasm", 4, "tab")  # fmt: skip
    assert r[volunteer_id("r" * 20)]["macs"] == 0 and r[volunteer_id(KEY_A)]["vectors"] == 10
    assert sum(x["share"] for x in e.credit.table()) == pytest.approx(1.0)
    # a worker cannot say whose work its result is
    e.on_contributions("A", msg.parse_client_message(msg.dumps(msg.contributions(e.iteration, said))))
    assert e.clients["A"].relay.contributions == {}
    # banned at the relay: its credit here is gone
    e.on_child_banned(
        "R", msg.ChildBanned(type="child_banned", name="tab", reason="lied", volunteer=under_1), 1.0
    )
    r = rows(e)
    assert r[under_1]["macs"] == 0 and r[under_1]["forfeited"] == "lied" and r[under_2]["vectors"] == 7
