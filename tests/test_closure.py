"""Research closures (.mlitb files) end to end, with real files, real PyTorch scoring,
a real master server and its SQLite zoo.

Covered:
  1. Building a closure from a project's state (a small model, a stepped AdaGrad, a
     synthetic test set): deterministic bytes, a faithful round trip (parameters, labels,
     spec, optimizer state whose next step is bit-identical), the claim equal to a direct
     `score`, `verify` passing, the documented members and a coreutils-format SHA256SUMS.
  2. Tampering: a changed weight, label, embedded test label, claim or an added member
     fails verification, naming what does not match (with and without SHA256SUMS
     recomputed to hide the change).
  3. Bad files refused with a ClosureError a user can act on: not a zip, truncated,
     missing members, unknown format version, bad JSON, wrong array sizes, path
     traversal, zip bombs, a malformed SHA256SUMS.
  4. Where a non-embedded test set comes from: nothing given, the right zip, a wrong zip.
  5. The master (slow): a project's closure download, publishing to the zoo, the zoo's
     REST routes (list, entry, file, start as transfer or weights, delete), the zoo
     across a master restart, and resuming a project from an uploaded closure.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile

import httpx
import numpy as np
import pytest
from conftest import digit_zip
from test_master_integration import FC_SPEC, ThreadWorker, details

from mlitb.closure import FORMAT_VERSION, Closure, ClosureError, ProjectState, build_closure, verify
from mlitb.closure import score as score_model
from mlitb.closure.arrays import to_npy
from mlitb.closure.testset import TestSet as ItemSet  # not `Test*`: pytest would collect it
from mlitb.closure.testset import from_zip
from mlitb.model import Model
from mlitb.optim import make_optimizer

# --------------------------------------------------------------------------- a tiny project

TINY_SPEC = [
    {"type": "input", "out_sx": 8, "out_sy": 8, "out_depth": 1},
    {"type": "fc", "num_neurons": 6, "activation": "relu"},
    {"type": "softmax", "num_classes": 3},
]
LABELS = ["0", "1", "2"]
# The synthetic test set names its labels in another order and has one the project lacks.
TEST_LABEL_NAMES = ["2", "0", "1", "x"]
TEST_LABEL_MAP = [2, 0, 1, -1]  # dataset label index -> output index (-1: skipped)
ITEMS, WRONG, SKIPPED = 60, 5, 4
TEST_ID, TRAIN_ID = 7, 3
SUMS = "SHA256SUMS"


def trained_tiny() -> tuple[Model, object]:
    """The tiny model after two AdaGrad steps (non-zero optimizer state)."""
    model = Model.from_spec(TINY_SPEC, seed=0, labels=LABELS)
    optimizer = make_optimizer("adagrad", model.num_params)
    rng = np.random.default_rng(5)
    for _ in range(2):
        optimizer.step(model.params, rng.normal(0, 0.1, model.num_params).astype(np.float32))
    return model, optimizer


def synthetic_test_set(model: Model) -> ItemSet:
    """Random pixels labelled with the model's own predictions, except WRONG items labelled
    wrongly and SKIPPED items labelled "x" (not a project label): the claim is WRONG errors."""
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (ITEMS, 8, 8, 1), dtype=np.uint8)
    pred = model.predict(pixels.astype(np.float32) * np.float32(1 / 255)).argmax(axis=1)
    to_dataset = {out: i for i, out in enumerate(TEST_LABEL_MAP) if out >= 0}
    labels = np.array([to_dataset[int(p)] for p in pred], np.uint16)
    labels[:WRONG] = [to_dataset[(int(p) + 1) % 3] for p in pred[:WRONG]]
    labels[-SKIPPED:] = TEST_LABEL_NAMES.index("x")
    return ItemSet("synthetic", (8, 8, 1), list(TEST_LABEL_NAMES), pixels, labels)


def project_state(model: Model, optimizer, test: ItemSet, label_map: list[int]) -> ProjectState:
    train_info = {
        "name": "train-set",
        "shape": [8, 8, 1],
        "content_hash": "sha256:" + "ab" * 32,
        "label_names": LABELS,
        "labels": {"0": 10, "1": 10, "2": 10},
    }
    return ProjectState(
        name="tiny",
        description="a tiny project",
        created=1_700_000_000.0,
        spec=model.spec,
        labels=list(LABELS),
        params=model.params.copy(),
        optimizer=optimizer,
        hyper={"algorithm": "sync_sgd", "optimizer": "adagrad", "learning_rate": 0.01, "seed": 0},
        iteration=2,
        totals={"vectors": 64, "rejected": 1, "late": 0, "contributors": {"trainer": 2}},
        sources=[
            {"dataset": TRAIN_ID, "role": "train", "items": 30, "label_map": [0, 1, 2], "info": train_info},
            {
                "dataset": TEST_ID,
                "role": "test",
                "items": test.items,
                "label_map": label_map,
                "info": {"name": test.name},
            },
        ],
        history=[
            {"iteration": 0, "t": 1_700_000_001.5, "train_loss": 1.1, "vectors": 32, "extra": "dropped"},
            {"iteration": 1, "t": 1_700_000_002.5, "train_loss": 1.05, "vectors": 32},
        ],
        data_url="http://data.example",
    )


def tiny_closure(embed_test: bool = True) -> tuple[Closure, bytes, ProjectState, ItemSet]:
    model, optimizer = trained_tiny()
    test = synthetic_test_set(model)
    state = project_state(model, optimizer, test, TEST_LABEL_MAP)
    closure = build_closure(state, {TEST_ID: test}, embed_test=embed_test)
    return closure, closure.to_bytes(), state, test


@pytest.fixture(scope="module")
def tiny() -> tuple[Closure, bytes, ProjectState, ItemSet]:
    return tiny_closure()


# --------------------------------------------------------------------------- zip surgery


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def rewrite(
    data: bytes,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    resum: bool = False,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """The closure zip with members replaced, added or dropped, every other member kept;
    `resum`: SHA256SUMS recomputed over the result, as a careful forger would."""
    members = members_of(data)
    for name in drop:
        del members[name]
    members.update(replace or {})
    if resum:
        members[SUMS] = "".join(f"{sha(members[n])}  {n}\n" for n in sorted(members) if n != SUMS).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return out.getvalue()


def edit_manifest(data: bytes, change) -> bytes:
    manifest = json.loads(members_of(data)["manifest.json"])
    change(manifest)
    return json.dumps(manifest, sort_keys=True, indent=1).encode()


def failing(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def check(report, suffix: str):
    found = [c for c in report.checks if c.name.endswith(suffix)]
    assert found, f"no check named ...{suffix!r} in {[c.name for c in report.checks]}"
    return found[0]


# =========================================================================== 1. building


def test_closure_bytes_are_deterministic(tiny):
    closure, data, _, _ = tiny
    assert closure.to_bytes() == data
    again, data2, _, _ = tiny_closure()  # a second build from equal inputs
    assert data2 == data and again.id == closure.id and again.sha256 == closure.sha256 == sha(data)
    assert Closure.from_bytes(data).to_bytes() == data
    # Fixed member order and timestamps: the file's bytes depend on its content only.
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_closure_round_trips():
    closure, data, state, test = tiny_closure()  # its own: the optimizer is stepped below
    back = Closure.from_bytes(data)
    assert back.id == closure.id and back.id == "sha256:" + sha(members_of(data)[SUMS])
    assert back.params.dtype == np.float32 and np.array_equal(back.params, state.params)
    assert back.labels == LABELS and back.spec.to_json() == state.spec.to_json()
    assert back.model().spec.num_outputs == 3
    m = back.manifest
    assert m["format"] == "mlitb.closure" and m["format_version"] == FORMAT_VERSION
    assert m["project"] == {"name": "tiny", "description": "a tiny project",
                            "created": "2023-11-14T22:13:20.000000Z"}  # fmt: skip
    assert m["created"] == "2023-11-14T22:13:22.500000Z"  # the last history row's time
    t = m["training"]
    assert (t["iteration"], t["vectors_processed"], t["rejected_results"], t["clients"]) == (2, 64, 1, 2)
    assert t["optimizer"] == "adagrad" and t["optimizer_state"]["t"] == 2
    assert [r["iteration"] for r in m["metrics"]] == [0, 1] and "extra" not in m["metrics"][0]
    assert [d["dataset"] for d in m["data"]["train"]] == [TRAIN_ID]
    entry = m["data"]["test"][0]
    assert entry["label_map"] == TEST_LABEL_MAP and entry["content_hash"] == test.content_hash()
    assert entry["label_counts"]["x"] == SKIPPED
    # The embedded test set comes back item for item.
    ts = back.test_sets[0]
    assert np.array_equal(ts.pixels, test.pixels) and np.array_equal(ts.labels, test.labels)
    assert ts.label_names == TEST_LABEL_NAMES and ts.content_hash() == test.content_hash()

    # The optimizer continues exactly: the same gradient gives bit-identical parameters.
    grad = np.random.default_rng(9).normal(0, 0.2, state.params.size).astype(np.float32)
    original, restored = state.params.copy(), back.params.copy()
    opt = back.optimizer()
    assert opt.t == state.optimizer.t == 2 and opt.lr == state.optimizer.lr
    assert np.any(opt.state["gsum"] != 0)
    assert np.array_equal(opt.state["gsum"], state.optimizer.state["gsum"])
    state.optimizer.step(original, grad)
    opt.step(restored, grad)
    assert np.array_equal(original, restored) and not np.array_equal(original, state.params)


def test_claim_is_the_measured_error_and_verifies(tiny):
    closure, data, state, test = tiny
    claim = closure.claim
    direct = score_model(Model(state.spec, state.params, LABELS), test, TEST_LABEL_MAP)
    assert (direct.errors, direct.count) == (WRONG, ITEMS - SKIPPED)
    assert (claim["errors"], claim["count"]) == (direct.errors, direct.count)
    assert claim["value"] == round(direct.error, 6) and claim["iteration"] == 2
    assert claim["test_sets"][0]["test_loss"] == pytest.approx(direct.loss, rel=1e-5)
    assert claim["tolerance_items"] == 1 and claim["executor"] == "pytorch"

    report = verify(Closure.from_bytes(data))
    assert report.ok, report.failures()
    assert [c.name for c in report.checks] == [
        "checksums", "claim iteration", "claim totals", "test set 'synthetic' label map",
        "test set 'synthetic' content hash", "test set 'synthetic' test error",
    ]  # fmt: skip
    assert report.scores[0]["errors"] == WRONG and report.scores[0]["count"] == ITEMS - SKIPPED
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_members_and_sha256sums_format(tiny):
    _, data, _, _ = tiny
    members = members_of(data)
    assert sorted(members) == [
        SUMS, "manifest.json", "optimizer/gsum.npy", "params.npy",
        "testsets/0/labels.npy", "testsets/0/pixels.npy",
    ]  # fmt: skip
    # Every member is a plain .npy any NumPy reads, of the documented dtype and shape.
    expected = {
        "params.npy": ("<f4", (411,)),
        "optimizer/gsum.npy": ("<f4", (411,)),
        "testsets/0/pixels.npy": ("|u1", (ITEMS, 8, 8, 1)),
        "testsets/0/labels.npy": ("<u2", (ITEMS,)),
    }
    for name, (dtype, shape) in expected.items():
        array = np.load(io.BytesIO(members[name]), allow_pickle=False)
        assert (array.dtype.str, array.shape) == (dtype, shape), name
    # `sha256sum -c SHA256SUMS` format: "<64 hex>  <name>\n", sorted, every other member once.
    text = members[SUMS].decode("ascii")
    assert text.endswith("\n")
    lines = text.splitlines()
    listed = []
    for line in lines:
        digest, name = line.split("  ", 1)
        assert re.fullmatch("[0-9a-f]{64}", digest), line
        assert digest == hashlib.sha256(members[name]).hexdigest(), name
        listed.append(name)
    assert listed == sorted(set(members) - {SUMS})


# =========================================================================== 2. tampering


def params_member(params: np.ndarray) -> dict[str, bytes]:
    return {"params.npy": to_npy(params, "<f4")}


def test_changed_weight_fails_the_checksums(tiny):
    closure, data, _, _ = tiny
    params = closure.params.copy()
    params[17] += 0.5
    report = verify(Closure.from_bytes(rewrite(data, params_member(params))))
    assert not report.ok
    detail = failing(report)["checksums"]
    assert "params.npy: checksum mismatch" in detail and "changed after export" in detail
    assert "manifest.json" not in detail


def test_changed_weights_with_forged_sums_fail_the_test_error(tiny):
    closure, data, _, _ = tiny
    forged = Closure.from_bytes(rewrite(data, params_member(np.zeros_like(closure.params)), resum=True))
    report = verify(forged)
    assert check(report, "checksums").ok
    assert check(report, "content hash").ok
    error = check(report, "test error")
    assert not error.ok and "the parameters do not give the claimed result" in error.detail
    assert f"claimed {WRONG}/{ITEMS - SKIPPED}" in error.detail
    assert report.scores[0]["errors"] > WRONG + 10  # all outputs equal: always output 0


def test_swapped_labels_fail(tiny):
    _, data, _, _ = tiny

    def swap(m):
        m["model"]["labels"][0], m["model"]["labels"][1] = m["model"]["labels"][1], m["model"]["labels"][0]

    manifest = edit_manifest(data, swap)
    report = verify(Closure.from_bytes(rewrite(data, {"manifest.json": manifest})))
    assert "manifest.json: checksum mismatch" in failing(report)["checksums"]

    forged = Closure.from_bytes(rewrite(data, {"manifest.json": manifest}, resum=True))
    assert forged.labels == ["1", "0", "2"]
    report = verify(forged)
    assert check(report, "checksums").ok and not report.ok
    label_map = check(report, "label map")
    assert not label_map.ok and "labels were changed" in label_map.detail
    assert str(TEST_LABEL_MAP) in label_map.detail  # what was recorded


def test_changed_test_labels_fail_the_content_hash(tiny):
    _, data, _, test = tiny
    labels = test.labels.copy()
    labels[WRONG] = (labels[WRONG] + 1) % 3
    forged = rewrite(data, {"testsets/0/labels.npy": to_npy(labels, "<u2")}, resum=True)
    report = verify(Closure.from_bytes(forged))
    assert check(report, "checksums").ok
    hashed = check(report, "content hash")
    assert not hashed.ok and "not the same test set" in hashed.detail
    assert test.content_hash() in hashed.detail
    assert not any(c.name.endswith("test error") for c in report.checks)  # not scored on other data


def test_changed_claimed_errors_fail_the_test_error(tiny):
    _, data, _, _ = tiny

    def better(m):
        m["claim"]["test_sets"][0]["errors"] = 0
        m["claim"]["errors"], m["claim"]["value"] = 0, 0.0

    forged = rewrite(data, {"manifest.json": edit_manifest(data, better)}, resum=True)
    report = verify(Closure.from_bytes(forged))
    assert check(report, "checksums").ok
    error = check(report, "test error")
    assert not error.ok and f"recomputed {WRONG}/{ITEMS - SKIPPED}" in error.detail
    assert f"claimed 0/{ITEMS - SKIPPED}" in error.detail


def test_changed_headline_claim_fails_verification(tiny):
    _, data, _, _ = tiny

    def better(m):
        m["claim"]["value"], m["claim"]["errors"] = 0.0, 0

    forged = Closure.from_bytes(rewrite(data, {"manifest.json": edit_manifest(data, better)}, resum=True))
    assert forged.claim["value"] == 0.0
    report = verify(forged)
    assert not report.ok
    assert any("claim" in name or "test error" in name for name in failing(report))


def test_added_or_unlisted_member_fails_the_checksums(tiny):
    _, data, _, _ = tiny
    report = verify(Closure.from_bytes(rewrite(data, {"notes.txt": b"trust me"})))
    assert "notes.txt: not listed in SHA256SUMS (added after export?)" in failing(report)["checksums"]
    sums = members_of(data)[SUMS] + ("0" * 64 + "  ghost.npy\n").encode()
    report = verify(Closure.from_bytes(rewrite(data, {SUMS: sums})))
    assert "ghost.npy: listed in SHA256SUMS but missing from the file" in failing(report)["checksums"]


# =========================================================================== 3. bad files


def refused(data: bytes, *needles: str) -> ClosureError:
    with pytest.raises(ClosureError) as info:
        Closure.from_bytes(data)
    for needle in needles:
        assert needle in info.value.message, info.value.message
    return info.value


@pytest.mark.parametrize(
    "data",
    [np.random.default_rng(0).bytes(5000), b"", b'{"format": "mlitb.closure"}', b"PK"],
    ids=["random", "empty", "json", "just-PK"],
)
def test_not_a_zip(data):
    refused(data, "not a closure file", "zip")


def test_load_of_a_missing_or_non_zip_file(tmp_path):
    with pytest.raises(ClosureError, match="cannot read"):
        Closure.load(tmp_path / "nope.mlitb")
    (tmp_path / "model.json").write_text(json.dumps({"layers": []}))
    with pytest.raises(ClosureError, match="expected a zip archive"):
        Closure.load(tmp_path / "model.json")


def test_truncated_zip(tiny):
    _, data, _, _ = tiny
    refused(data[: len(data) // 2], "not a closure file", "cannot be read")
    refused(data[:-30], "not a closure file")


@pytest.mark.parametrize("member", ["manifest.json", "params.npy", "optimizer/gsum.npy", SUMS])
def test_missing_member(tiny, member):
    _, data, _, _ = tiny
    err = refused(rewrite(data, drop=(member,), resum=member != SUMS), f"member {member!r} is missing")
    assert err.member == member


def test_unknown_format_version(tiny):
    _, data, _, _ = tiny
    manifest = edit_manifest(data, lambda m: m.update(format_version=99))
    refused(
        rewrite(data, {"manifest.json": manifest}, resum=True),
        "closure format version 99 is not supported",
        f"this mlitb reads version {FORMAT_VERSION}",
    )


@pytest.mark.parametrize(
    "manifest, needle",
    [
        (b"{not json", "manifest.json is not valid JSON"),
        (b"\xff\xfe\x00", "manifest.json is not valid JSON"),
        (b"[1, 2]", "this is not a closure"),
        (b'{"format": "something.else", "format_version": 1}', "this is not a closure"),
        (b'{"format": "mlitb.closure", "format_version": 1}', "section 'model' lacks spec"),
    ],
    ids=["broken", "binary", "list", "other-format", "no-sections"],
)
def test_bad_manifest(tiny, manifest, needle):
    _, data, _, _ = tiny
    refused(rewrite(data, {"manifest.json": manifest}, resum=True), needle)


def test_manifest_disagreeing_with_its_spec(tiny):
    _, data, _, _ = tiny
    fewer = edit_manifest(data, lambda m: m["model"]["labels"].pop())
    refused(rewrite(data, {"manifest.json": fewer}, resum=True), "2 names for 3 outputs")
    count = edit_manifest(data, lambda m: m["model"].update(num_params=12))
    refused(rewrite(data, {"manifest.json": count}, resum=True), "num_params is 12", "411 parameters")


def test_arrays_of_the_wrong_size_or_type(tiny):
    closure, data, _, _ = tiny
    n = closure.params.size
    err = refused(
        rewrite(data, {"params.npy": to_npy(np.zeros(n + 1), "<f4")}),
        "member 'params.npy'",
        f"expected shape ({n},) (from the manifest), got ({n + 1},)",
    )
    assert err.member == "params.npy"
    refused(rewrite(data, {"params.npy": to_npy(np.zeros(n), "<f8")}), "expected dtype <f4, got <f8")
    refused(rewrite(data, {"params.npy": to_npy(np.zeros(10 * n), "<f4")}), "declares", "expected at most")
    refused(rewrite(data, {"params.npy": b"\x93NUMPY garbage"}), "not a readable .npy array")
    refused(rewrite(data, {"optimizer/gsum.npy": to_npy(np.zeros(3), "<f4")}), "'optimizer/gsum.npy'")
    refused(
        rewrite(data, {"testsets/0/labels.npy": to_npy(np.full(ITEMS, 9), "<u2")}),
        "label index 9 but the set has 4 label names",
    )


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a\\b", "a//b"])
def test_odd_member_names(tiny, name):
    _, data, _, _ = tiny
    err = refused(rewrite(data, {name: b"x"}), "unexpected name")
    assert err.member == name


def test_duplicate_member(tiny):
    _, data, _, _ = tiny
    out = io.BytesIO(data)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(out, "a") as zf:
        zf.writestr("params.npy", b"second copy")
    refused(out.getvalue(), "'params.npy' appears twice")


def test_zip_bombs_are_refused_before_inflating(tiny):
    _, data, _, _ = tiny
    zeros = bytes(50 << 20)
    # bzip2 packs 50 MB of zeros into ~100 bytes: a ratio no closure member has.
    bomb = rewrite(data, {"junk.bin": zeros}, compression=zipfile.ZIP_BZIP2)
    refused(bomb, "member 'junk.bin': declares 52428800 bytes from", "(a zip bomb?)")
    # Deflate tops out near 1030:1, so a deflated 50 MB member is refused by the size it
    # declares against what the manifest allows for that member.
    big = rewrite(data, {"params.npy": zeros})
    refused(big, "member 'params.npy' declares 52428800 bytes, expected at most")
    # A header that lies: the central directory claims 1 GiB for the small params.npy.
    lying = bytearray(data)
    at = lying.find(b"PK\x01\x02")
    while lying[at + 46 : at + 46 + len(b"params.npy")] != b"params.npy":
        at = lying.find(b"PK\x01\x02", at + 4)
    lying[at + 24 : at + 28] = (1 << 30).to_bytes(4, "little")  # uncompressed size
    refused(bytes(lying), "member 'params.npy': declares 1073741824 bytes from", "(a zip bomb?)")


@pytest.mark.parametrize(
    "sums, needle",
    [
        (b"not a sums file\n", "SHA256SUMS line 1: expected '<sha256 hex>  <member>'"),
        (b"0" * 64 + b" params.npy\n", "SHA256SUMS line 1"),  # one space: not coreutils format
        (b"Z" * 64 + b"  params.npy\n", "SHA256SUMS line 1"),
        (b"0" * 64 + b"  /params.npy\n", "SHA256SUMS line 1"),
        ("é".encode() * 40, "SHA256SUMS is not ASCII text"),
    ],
    ids=["words", "one-space", "not-hex", "absolute", "not-ascii"],
)
def test_malformed_sha256sums(tiny, sums, needle):
    _, data, _, _ = tiny
    err = refused(rewrite(data, {SUMS: sums}), needle)
    assert err.member == SUMS


def patch_headers(data: bytes, member: str, offsets: tuple[int, int], value: bytes) -> bytes:
    """`value` written at `offsets` (central directory, local header) in `member`'s two headers."""
    out, name = bytearray(data), member.encode()
    for signature, offset, name_at in ((b"PK\x01\x02", offsets[0], 46), (b"PK\x03\x04", offsets[1], 30)):
        at = out.find(signature)
        while out[at + name_at : at + name_at + len(name)] != name:
            at = out.find(signature, at + 4)
        out[at + offset : at + offset + len(value)] = value
    return bytes(out)


def member_data_offset(data: bytes, member: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    return info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)


def test_corrupt_member_data(tiny):
    _, data, _, _ = tiny
    wrong_crc = patch_headers(data, "params.npy", (16, 14), b"\0\0\0\0")
    err = refused(wrong_crc, "member 'params.npy' is corrupt", "CRC")
    assert err.member == "params.npy"


def unreadable(data: bytes, how: str) -> bytes:
    if how == "bad-deflate-stream":  # a corrupted download: block type 3 does not exist
        at = member_data_offset(data, "params.npy")
        return data[:at] + b"\xff\xff" + data[at + 2 :]
    if how == "encrypted":  # general purpose flag bit 0
        return patch_headers(data, "params.npy", (8, 6), b"\x01\x00")
    return patch_headers(data, "params.npy", (10, 8), b"\x09\x00")  # deflate64 (Windows' big zips)


UNREADABLE = ["bad-deflate-stream", "encrypted", "deflate64"]


@pytest.mark.parametrize("how", UNREADABLE)
def test_unreadable_member_is_a_closure_error(tiny, how):
    _, data, _, _ = tiny
    err = refused(unreadable(data, how), "member 'params.npy'")
    assert err.member == "params.npy"


# =========================================================================== 4. test set sources


def test_non_embedded_test_set_comes_from_a_zip(tmp_path):
    model, optimizer = trained_tiny()
    test_zip = digit_zip(tmp_path / "digits.zip", per_label=6, shape=(8, 8))
    test = from_zip(test_zip, (8, 8, 1))
    assert test.label_names == LABELS and test.items == 18
    state = project_state(model, optimizer, test, [0, 1, 2])
    closure = build_closure(state, {TEST_ID: test}, embed_test=False)
    data = closure.to_bytes()
    assert not any(n.startswith("testsets/") for n in members_of(data))
    assert len(data) < len(tiny_closure()[1])
    closure = Closure.from_bytes(data)
    assert closure.test_sets == {} and closure.manifest["data"]["test"][0]["embedded"] is None

    report = verify(closure)
    assert not report.ok
    detail = check(report, "data").detail
    assert "not embedded" in detail and "--server" in detail and "--data" in detail

    report = verify(closure, zips=[test_zip])
    assert report.ok, report.failures()
    assert report.scores[0]["count"] == 18

    other = digit_zip(tmp_path / "other.zip", per_label=6, shape=(8, 8), seed=1)
    report = verify(closure, zips=[other])
    detail = failing(report)["test set 'digits' data"]
    assert "none of the zips" in detail and test.content_hash() in detail
    # The right zip among wrong ones is found by its content hash.
    assert verify(closure, zips=[other, test_zip]).ok

    # A zip of another shape cannot be the test set either.
    small = digit_zip(tmp_path / "small.zip", per_label=2, shape=(4, 4))
    assert not verify(closure, zips=[small]).ok


# =========================================================================== 5. the master

HYPER = {"algorithm": "sync_sgd", "optimizer": "adagrad", "learning_rate": 0.01, "iteration_time": 1.0}
FC_PREFIX = 28 * 28 * 16 + 16  # parameters before the last fc of FC_SPEC


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def trained_project(master, mnist_zips, name: str, iterations: int) -> tuple[str, int, int]:
    """Upload MNIST, create `name` with FC_SPEC, train it to `iterations` and pause it;
    returns (owner token, train dataset, test dataset)."""
    train = master.data.upload(mnist_zips["train"], "28x28x1", kind="train")["dataset"]
    test = master.data.upload(mnist_zips["test"], "28x28x1", kind="test")["dataset"]
    body = {"name": name, "spec": FC_SPEC, "train": [train], "test": [test], "hyper": HYPER, "start": True}
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=30)
    assert resp.status_code == 201, resp.text
    token = resp.json()["owner_token"]
    with ThreadWorker(master.url, name, "trainer"):
        deadline = time.monotonic() + 60
        while details(master.url, name)["iteration"] < iterations:
            assert time.monotonic() < deadline, f"{name} did not reach iteration {iterations}"
            time.sleep(0.2)
    resp = httpx.post(f"{master.url}/api/projects/{name}/pause", headers=bearer(token), timeout=30)
    assert resp.status_code == 200, resp.text
    time.sleep(0.5)  # results in flight are refused as late; the state is settled
    return token, train, test


def get_closure(master, name: str, embed: bool) -> httpx.Response:
    resp = httpx.get(
        f"{master.url}/api/projects/{name}/closure", params={"embed_test": int(embed)}, timeout=120
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    return resp


def project_model(master, name: str) -> Model:
    resp = httpx.get(f"{master.url}/api/projects/{name}/model", params={"format": "mlitb"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return Model.from_json(resp.json())


@pytest.mark.slow
def test_publish_and_the_zoo(master, mnist_zips):
    token, train, test = trained_project(master, mnist_zips, "p", iterations=4)
    url = master.url

    # ---- the project's closure: the same bytes each time, verified, the project's model
    first = get_closure(master, "p", embed=True)
    second = get_closure(master, "p", embed=True)
    assert first.content == second.content
    closure = Closure.from_bytes(first.content)
    assert first.headers["x-closure-id"] == closure.id and first.headers["etag"] == f'"{closure.sha256}"'
    iteration = closure.manifest["training"]["iteration"]
    assert iteration >= 4 and f'filename="p-{iteration}.mlitb"' in first.headers["content-disposition"]
    assert np.array_equal(closure.params, project_model(master, "p").params)
    assert closure.claim["count"] == 100 and closure.claim["iteration"] == iteration
    assert [n.startswith("testsets/") for n in members_of(first.content)].count(True) == 2
    report = verify(closure)
    assert report.ok, report.failures()
    # Without the test set embedded: verified against the master's data server by content hash.
    plain = Closure.from_bytes(get_closure(master, "p", embed=False).content)
    assert plain.test_sets == {} and plain.claim == closure.claim
    assert not verify(plain).ok
    assert verify(plain, server=f"{url}/data").ok

    # ---- publishing needs the owner token; the entry is verified, publishing twice is a no-op
    resp = httpx.post(f"{url}/api/projects/p/publish", timeout=60)
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
    resp = httpx.post(f"{url}/api/projects/p/publish", headers=bearer("not-the-token"), timeout=60)
    assert resp.status_code == 403
    resp = httpx.post(f"{url}/api/projects/p/publish", headers=bearer(token), timeout=120)
    assert resp.status_code == 201, resp.text
    assert resp.json()["created"] is True
    entry = resp.json()["entry"]
    assert entry["verification"] == "verified", entry["verification_detail"]
    assert entry["claimed_error"] == closure.claim["value"] and entry["closure_id"] == closure.id
    assert entry["iteration"] == iteration and entry["labels"] == closure.labels
    assert entry["task"] == "image classification, 28x28x1 input, 10 outputs"
    assert "publisher_hash" not in entry
    zoo_id = entry["id"]
    resp = httpx.post(f"{url}/api/projects/p/publish", headers=bearer(token), timeout=120)
    assert resp.status_code == 200 and resp.json()["created"] is False
    assert resp.json()["entry"]["id"] == zoo_id

    listing = httpx.get(f"{url}/api/zoo", timeout=30).json()
    assert [e["id"] for e in listing] == [zoo_id] and listing[0]["file"] == f"/api/zoo/{zoo_id}/file"
    resp = httpx.get(f"{url}/api/zoo/{zoo_id}/file", timeout=60)
    assert resp.status_code == 200 and resp.content == first.content
    assert verify(Closure.from_bytes(resp.content)).ok
    shown = httpx.get(f"{url}/api/zoo/{zoo_id}", timeout=30).json()
    assert shown["claim"] == closure.claim and shown["spec"] == closure.manifest["model"]["spec"]
    assert shown["data"]["test"][0]["content_hash"] == closure.manifest["data"]["test"][0]["content_hash"]
    resp = httpx.get(f"{url}/api/zoo/{zoo_id + 1}", timeout=30)
    assert resp.status_code == 404 and resp.json()["error"] == "unknown_entry"

    # ---- the zoo survives a master restart (SQLite row and file)
    master.restart()
    assert [e["id"] for e in httpx.get(f"{url}/api/zoo", timeout=30).json()] == [zoo_id]
    resp = httpx.get(f"{url}/api/zoo/{zoo_id}/file", timeout=60)
    assert resp.status_code == 200 and resp.content == first.content

    # ---- transfer learning: the last fc replaced for three new labels
    body = {"name": "t", "drop_last_layer": True, "labels": ["a", "b", "c"], "train": [], "test": []}
    resp = httpx.post(f"{url}/api/zoo/{zoo_id}/start", json=body, timeout=60)
    assert resp.status_code == 201, resp.text
    assert details(url, "t")["labels"] == ["a", "b", "c"]
    transfer = project_model(master, "t")
    assert transfer.spec.num_outputs == 3 and transfer.num_params == FC_PREFIX + 16 * 3 + 3
    assert np.array_equal(transfer.params[:FC_PREFIX], closure.params[:FC_PREFIX])
    assert not np.array_equal(transfer.params[FC_PREFIX : FC_PREFIX + 30], closure.params[FC_PREFIX:][:30])

    # ---- the weights as they are, on the datasets found by content hash
    resp = httpx.post(f"{url}/api/zoo/{zoo_id}/start", json={"name": "w"}, timeout=60)
    assert resp.status_code == 201, resp.text
    assert resp.json()["warnings"] == []
    weights = project_model(master, "w")
    assert np.array_equal(weights.params, closure.params) and weights.labels == closure.labels
    w = details(url, "w")
    assert sorted((d["role"], d["dataset"]) for d in w["datasets"]) == [("test", test), ("train", train)]
    assert w["iteration"] == 0

    # ---- deleting needs the publishing project's owner token
    for headers in ({}, bearer("wrong"), bearer(resp.json()["owner_token"])):  # w's token is not p's
        resp = httpx.delete(f"{url}/api/zoo/{zoo_id}", headers=headers, timeout=30)
        assert resp.status_code == 403 and "owner token of project 'p'" in resp.json()["detail"]
    zoo_file = master.state_dir / "zoo" / f"{closure.sha256}.mlitb"
    assert zoo_file.is_file()
    resp = httpx.delete(f"{url}/api/zoo/{zoo_id}", headers=bearer(token), timeout=30)
    assert resp.status_code == 200 and resp.json() == {"deleted": zoo_id}
    assert not zoo_file.exists()
    assert httpx.get(f"{url}/api/zoo/{zoo_id}/file", timeout=30).status_code == 404
    assert httpx.get(f"{url}/api/zoo", timeout=30).json() == []


@pytest.mark.slow
def test_resume_from_an_uploaded_closure(master, mnist_zips):
    trained_project(master, mnist_zips, "src", iterations=2)
    url = master.url
    data = get_closure(master, "src", embed=False).content
    closure = Closure.from_bytes(data)

    def post(body: bytes, name: str) -> httpx.Response:
        return httpx.post(f"{url}/api/closures", params={"name": name}, content=body, timeout=120)

    resp = post(np.random.default_rng(1).bytes(3000), "garbage")
    assert resp.status_code == 400 and resp.json()["error"] == "bad_closure"
    assert "not a closure file" in resp.json()["detail"]
    params = closure.params.copy()
    params[0] += 1
    resp = post(rewrite(data, params_member(params)), "tampered")
    assert resp.status_code == 400 and resp.json()["error"] == "bad_closure"
    assert "checksums" in resp.json()["detail"] and "params.npy" in resp.json()["detail"]
    assert "tampered" not in [p["name"] for p in httpx.get(f"{url}/api/projects", timeout=30).json()]

    resp = post(data, "r")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["closure_id"] == closure.id and body["warnings"] == [] and body["owner_token"]
    r = details(url, "r")
    assert r["iteration"] == closure.manifest["training"]["iteration"] >= 2
    assert r["state"] != "running" and r["labels"] == closure.labels
    assert np.array_equal(project_model(master, "r").params, closure.params)
    resp = post(data, "r")
    assert resp.status_code == 409 and resp.json()["error"] == "exists"


@pytest.mark.slow
def test_unreadable_closure_upload_is_refused_with_400(master, tiny):
    _, data, _, _ = tiny
    resp = httpx.post(
        f"{master.url}/api/closures",
        params={"name": "x"},
        content=unreadable(data, "bad-deflate-stream"),
        timeout=60,
    )
    assert resp.status_code == 400 and resp.json()["error"] == "bad_closure"


@pytest.mark.slow
def test_closure_is_unchanged_by_a_master_restart(master, mnist_zips):
    test = master.data.upload(mnist_zips["test"], "28x28x1", kind="test")["dataset"]
    body = {"name": "q", "spec": FC_SPEC, "train": [], "test": [test], "labels": [str(i) for i in range(10)]}
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=30)
    assert resp.status_code == 201, resp.text
    token = resp.json()["owner_token"]
    before = get_closure(master, "q", embed=True)
    resp = httpx.post(f"{master.url}/api/projects/q/publish", headers=bearer(token), timeout=60)
    assert resp.status_code == 201, resp.text
    master.restart()
    resp = httpx.post(f"{master.url}/api/projects/q/publish", headers=bearer(token), timeout=60)
    assert resp.status_code == 200 and resp.json()["created"] is False, "a second zoo entry"
    after = get_closure(master, "q", embed=True)
    assert after.headers["x-closure-id"] == before.headers["x-closure-id"]
    assert after.content == before.content


def test_model_load_reads_json_only_and_load_model_opens_closures(tiny, tmp_path):
    """The model package does not import the closure package (it builds on it): a closure
    is opened by mlitb.closure.load_model, which takes JSON models too (issue 24)."""
    from mlitb.closure import load_model
    from mlitb.model import FormatError

    closure, data, _, _ = tiny
    path = tmp_path / "c.mlitb"
    path.write_bytes(data)
    with pytest.raises(FormatError, match="load_model"):
        Model.load(path)
    model = load_model(path)
    np.testing.assert_array_equal(model.params, closure.model().params)
    (tmp_path / "m.json").write_text(json.dumps(model.to_json("mlitb")))
    np.testing.assert_array_equal(load_model(tmp_path / "m.json").params, model.params)
