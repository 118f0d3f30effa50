"""Text for character-level language models (issue 27): `mlitb data upload FILE.txt --text`
makes a training and a validation set of character windows with their vocabulary; a
project with the built-in `charlm` spec takes the text's vocabulary and trains on it with
native workers (verification on, every audit replays), and the master measures the
validation loss in nats per character (`test_loss`). Bad text is refused with where and
why."""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile

import numpy as np
import pytest
from conftest import ROOT
from test_device_data import worker
from test_master_integration import MLITB, brief, create_project, details, kill_all, tail, wait_for

from mlitb import examples

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


WORDS = [
    "the", "and", "to", "of", "my", "that", "is", "in", "you", "not", "with", "me", "it", "be", "your",
    "his", "this", "but", "for", "have", "thou", "thy", "what", "so", "will", "shall", "love", "night",
    "day", "heart", "sweet", "death", "life", "good", "lord", "sir",
]  # fmt: skip


def play(chars: int, seed: int = 0) -> str:
    """A made-up play, where the workplace's corpus is absent (a clean clone elsewhere): named
    speakers and lines drawn from a small vocabulary of words, seeded, so a model has
    structure to learn (speaker names, capitals after a newline, common words)."""
    rng = np.random.default_rng(seed)
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR", "PRINCE", "MERCUTIO"]
    words = WORDS
    out = []
    while sum(map(len, out)) < chars:
        line = " ".join(rng.choice(words, rng.integers(4, 12)))
        out.append(f"{rng.choice(names)}:\n{line[0].upper()}{line[1:]}{rng.choice(['.', ',', '!', '?'])}\n\n")
    return "".join(out)[:chars]


def text_file(tmp_path, chars: int = 120_000):
    """The first `chars` characters of tiny Shakespeare (../shared/data, never committed
    here), or of a made-up play where it is absent."""
    path = tmp_path / "shakespeare.txt"
    if SHAKESPEARE.exists() and not os.environ.get("MLITB_TEST_PLAY"):  # MLITB_TEST_PLAY=1: the made-up one
        path.write_bytes(SHAKESPEARE.read_bytes()[:chars])
    else:
        path.write_text(play(chars))
    return path


def upload(master, path, *extra) -> subprocess.CompletedProcess:
    args = [MLITB, "data", "upload", str(path), "--text", "--server", f"{master.url}/data",
            "--token", master.data_token, *extra]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_a_text_becomes_a_training_and_a_validation_set(master, tmp_path):
    path = text_file(tmp_path)
    done = upload(master, path, "--context", "32", "--name", "bard", "--json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    train, valid = r["datasets"]
    text = path.read_text()
    assert r["characters"] == len(text) and r["vocab"] == sorted(set(text))
    assert (train["name"], train["kind"], valid["name"], valid["kind"]) == (
        "bard (train)", "train", "bard (validation)", "test")  # fmt: skip
    assert train["shape"] == [1, 33, 1] and train["content"] == "text" and train["context"] == 32
    cut = len(text) - len(text) // 10
    assert train["items"] == (cut - 1) // 32 and valid["items"] == (len(text) - cut - 1) // 32
    listed = json.loads(subprocess.run([MLITB, "data", "list", "--json", "--server", f"{master.url}/data"],
                                       capture_output=True, text=True, timeout=60).stdout)  # fmt: skip
    assert {d["dataset"]: d["items"] for d in listed} == {train["dataset"]: train["items"],
                                                          valid["dataset"]: valid["items"]}  # fmt: skip
    # the items are the windows: ids of the text's characters, overlapping by one
    _ids, _labels, pixels = master.data.get_items(train["dataset"], "0:2")
    vocab = r["vocab"]
    assert "".join(vocab[i] for i in pixels[0].ravel()) == text[:33]
    assert "".join(vocab[i] for i in pixels[1].ravel()) == text[32:65]
    # the words of the CLI
    said = upload(master, path, "--context", "32", "--name", "again")
    assert (
        said.returncode == 0
        and f"vocabulary of {len(r['vocab'])}" in said.stdout
        and "windows of 33 characters" in said.stdout
    )


@pytest.mark.parametrize(
    ("body", "context", "words"),
    [
        (b"hello \xe9t\xe9 world", 4, ["not UTF-8", "byte 6 (line 1, column 7)", "0xe9", "iconv"]),
        (b"", 4, ["empty"]),
        (b"to be or not to be", 64, ["context 64 is longer than the text allows", "--context"]),
        ("".join(chr(0x4E00 + i) for i in range(300)).encode() * 3, 4, ["300 different characters", "256"]),
        (b"abcdefghij" * 100, 1, ["context: expected 2-4096"]),
    ],
)
def test_bad_text_is_refused_with_where_and_why(master, tmp_path, body, context, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(body)
    done = upload(master, path, "--context", str(context))
    assert done.returncode != 0
    for w in words:
        assert w in done.stderr, done.stderr
    assert json.loads(subprocess.run([MLITB, "data", "list", "--json", "--server", f"{master.url}/data"],
                                     capture_output=True, text=True, timeout=60).stdout) == []  # fmt: skip


def test_a_zip_of_texts_is_joined_in_name_order(master, tmp_path):
    path = tmp_path / "texts.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("b.txt", "second part. " * 40)
        zf.writestr("a.txt", "first part. " * 40)
        zf.writestr("notes.md", "not text for the model")
        zf.writestr(".hidden.txt", "ignored")
    done = upload(master, path, "--context", "8", "--json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["files"] == ["a.txt", "b.txt"] and r["characters"] == 12 * 40 + 13 * 40
    assert r["skipped"] == [{"file": "notes.md", "reason": "not a .txt file"}]


SMALL_LM = [
    {"type": "input", "out_sx": 32, "out_sy": 1, "out_depth": 1},
    {"type": "embedding", "vocab": 65, "dim": 32},
    {"type": "posembedding"},
    {"type": "transformer", "heads": 2, "causal": True},
    {"type": "layernorm"},
    {"type": "seqsoftmax", "num_classes": 65},
]


@pytest.mark.slow
def test_a_character_model_trains_on_the_text_and_every_audit_replays(master, tmp_path):
    done = upload(master, text_file(tmp_path), "--context", "32", "--json")
    r = json.loads(done.stdout)
    train, valid = r["split"]["train"], r["split"]["test"]
    hyper = {"iteration_time": 2.0, "test_interval": 1, "test_sample": 200}
    create_project(master.url, "bard", [train], [valid], spec=SMALL_LM, hyper=hyper)
    d = details(master.url, "bard")
    assert d["labels"] == r["vocab"]
    procs = [worker(master.url, "bard", tmp_path / f"w{i}.log") for i in range(2)]
    try:
        learnt = lambda s: s["test_loss"] is not None and s["test_loss"] < 3.0 and s["audits_passed"] >= 3  # noqa: E731
        s = wait_for(master.url, "bard", learnt, 400, "validation loss under 3 nats per character")
        for i, p in enumerate(procs):
            assert p.poll() is None, tail(tmp_path / f"w{i}.log")
    finally:
        kill_all(procs)
    assert s["audits_failed"] == 0 and s["banned_count"] == 0, brief(s)
    assert s["test_loss"] < np.log(len(r["vocab"])) - 1.0  # learnt more than the letters' frequencies
    shown = json.loads(subprocess.run([MLITB, "project", "show", "bard", "--json", "--server", master.url],
                                      capture_output=True, text=True, timeout=60).stdout)  # fmt: skip
    assert shown["test_loss"] == pytest.approx(s["test_loss"], rel=0.5)


def test_the_built_in_charlm_takes_the_texts_vocabulary(master, tmp_path):
    done = upload(master, text_file(tmp_path, 5000), "--context", "64", "--json")
    r = json.loads(done.stdout)
    assert len(r["vocab"]) != 65  # a slice of the text lacks some characters
    create_project(master.url, "lm", [r["split"]["train"]], [r["split"]["test"]],
                   spec=examples.load("charlm")["layer_defs"], hyper={}, start=False)  # fmt: skip
    d = details(master.url, "lm")
    assert d["labels"] == r["vocab"] and d["spec"][1]["vocab"] == len(r["vocab"])
    # a language model's own defaults (config.SEQUENCE_DEFAULTS), and the editor's view of them
    assert (d["hyper"]["batch_size"], d["hyper"]["inner_learning_rate"]) == (12, 1e-3), d["hyper"]
    import httpx

    check = httpx.post(f"{master.url}/api/spec/check", json={"spec": examples.load("charlm")["layer_defs"]})
    assert check.json()["hyper_defaults"] == {"batch_size": 12, "inner_learning_rate": 1e-3}
    check = httpx.post(f"{master.url}/api/spec/check", json={"spec": examples.load("fashion")["layer_defs"]})
    assert check.json()["hyper_defaults"] == {"batch_size": 32, "inner_learning_rate": 0.002}
    # the wrong kind of data, and the wrong context, are refused with the fix
    body = {"name": "lm2", "spec": examples.load("charlm")["layer_defs"], "train": [r["split"]["train"]],
            "test": [], "hyper": {}}  # fmt: skip
    body["spec"] = [{**body["spec"][0], "out_sx": 32}, *body["spec"][1:]]
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=60)
    assert resp.status_code == 400 and "--context 32" in resp.text, resp.text


@pytest.mark.slow
@pytest.mark.browser
def test_a_browser_tab_trains_the_character_model_and_passes_its_audits(master, tmp_path, page):
    done = upload(master, text_file(tmp_path), "--context", "32", "--json")
    r = json.loads(done.stdout)
    hyper = {"iteration_time": 2.0, "test_interval": 1, "test_sample": 200}
    create_project(
        master.url, "tabbard", [r["split"]["train"]], [r["split"]["test"]], spec=SMALL_LM, hyper=hyper
    )
    page.goto(f"{master.url}/join/tabbard")

    def audited(s):
        tabs = [c for c in s["clients"] if c.get("kind") == "browser"]
        return bool(s["banned_count"]) or (tabs and tabs[0]["verified"] >= 3 and s["test_loss"] is not None)

    s = wait_for(master.url, "tabbard", audited, 400, "three audits of the tab")
    assert s["banned_count"] == 0 and s["audits_failed"] == 0, brief(s)
    (c,) = [c for c in s["clients"] if c.get("kind") == "browser"]
    assert c["backend"] == "wasm" and c["audit_error"] < 0.01, c
    print(f"character transformer, wasm vs PyTorch: {c['verified']} audits, largest error {c['audit_error']}")
    # the dashboard speaks of a language model's validation loss and vocabulary
    board = page.context.new_page()
    board.goto(f"{master.url}/#/p/tabbard")
    board.wait_for_selector("dd[data-key='validation-loss']")
    loss_shown = """document.querySelector("dd[data-key='validation-loss']").textContent.includes("nats")"""
    board.wait_for_function(loss_shown)
    assert "nats per token" in board.inner_text("dd[data-key='validation-loss']")
    assert board.is_visible("dd[data-key='vocabulary']")
    assert not board.locator("dd[data-key='test-error']").count()
    # the page's tracker writes on from a prompt, in the vocabulary's characters
    board.click("#btn-add-tracker")
    board.fill("#prompt", "ROMEO:")
    board.fill("#generate-length", "40")
    deadline = time.monotonic() + 120  # the tracker checks this device's backends first
    while time.monotonic() < deadline and not board.inner_text("#generated").strip():
        board.click("#btn-generate")
        board.wait_for_timeout(1000)
    written = board.inner_text("#generated")
    assert written.startswith("ROMEO:") and len(written) == len("ROMEO:") + 40, written
    assert set(written[len("ROMEO:") :]) <= set(r["vocab"])


@pytest.mark.slow
def test_a_language_models_closure_carries_its_layers_vocabulary_and_validation_loss(master, tmp_path):
    """The closure of a text project: the new layers, the vocabulary (its labels), the claimed
    validation loss recomputed by `closure verify` from the embedded validation set; the
    model leaves as ONNX, and ConvNetJS is refused by name."""
    done = upload(master, text_file(tmp_path, 40_000), "--context", "32", "--json")
    r = json.loads(done.stdout)
    hyper = {"iteration_time": 1.0, "test_interval": 1, "test_sample": 0}
    token = create_project(
        master.url, "verse", [r["split"]["train"]], [r["split"]["test"]], spec=SMALL_LM, hyper=hyper
    )
    proc = worker(master.url, "verse", tmp_path / "w.log")
    try:
        wait_for(
            master.url, "verse", lambda s: s["test_loss"] is not None and s["iteration"] >= 3, 300, "a score"
        )
    finally:
        kill_all([proc])
    out = tmp_path / "verse.mlitb"
    cli = lambda *a: subprocess.run([MLITB, *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    assert (
        cli("closure", "export", "verse", "--server", master.url, "-o", str(out), "--embed-test").returncode
        == 0
    )
    inspect = cli("closure", "inspect", str(out))
    assert inspect.returncode == 0 and "seqsoftmax" in inspect.stdout, inspect.stdout + inspect.stderr
    report = json.loads(cli("closure", "verify", str(out), "--json").stdout)
    assert report["ok"], report
    from mlitb.closure import load_model

    model = load_model(out)
    assert model.labels == r["vocab"] and model.spec.loss == "seqsoftmax"
    onnx = cli("closure", "export-model", str(out), str(tmp_path / "verse.onnx"), "--to", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    refused = cli("closure", "export-model", str(out), str(tmp_path / "verse.json"), "--to", "convnetjs")
    assert (
        refused.returncode != 0
        and "has no ConvNetJS form" in refused.stderr
        and "Traceback" not in refused.stderr
    )
    # the zoo lists it as what it is, verified
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    published = httpx.post(f"{master.url}/api/projects/verse/publish", headers=auth, timeout=120)
    assert published.status_code in (200, 201), published.text
    (entry,) = httpx.get(f"{master.url}/api/zoo", timeout=60).json()
    assert entry["task"] == f"character language model, context 32, vocabulary of {len(r['vocab'])}", entry
    assert entry["verification"] == "verified", entry


def test_a_text_may_start_with_pk_and_size_limits_are_said(master, tmp_path, monkeypatch):
    """The body's Content-Type, not its first bytes, says zip; a text over the size limit and
    a text cut into too many windows are refused with the fix, before they fill memory."""
    from mlitb.data import text as textsets
    from mlitb.data.errors import DataError
    from mlitb.data.limits import Limits

    path = tmp_path / "pk.txt"
    path.write_text("PKWARE wrote this. " * 100)
    done = upload(master, path, "--context", "8", "--json")
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr(textsets, "MAX_TEXT_BYTES", 1000)
    with pytest.raises(DataError, match="over the limit of 1,000") as err:
        textsets.read_upload(path, Limits())
    assert err.value.status == 413
    monkeypatch.setattr(textsets, "MAX_WINDOWS", 10)
    with pytest.raises(DataError, match="a longer --context"):
        textsets.build("abcdefgh" * 100, 8, lambda suffix: tmp_path / f"x{suffix}", ["t.txt"], [])


def test_an_embedding_that_misses_the_vocabulary_is_fitted_or_refused(master, tmp_path):
    """A language model's embedding must take every token of its text: a fresh spec is fitted
    (the dashboard sets only the head's num_classes), a trained model file is refused."""
    import httpx

    r = json.loads(upload(master, text_file(tmp_path, 5000), "--context", "16", "--json").stdout)
    v = len(r["vocab"])
    defs = [
        {**SMALL_LM[0], "out_sx": 16},
        {**SMALL_LM[1], "vocab": 65},
        *SMALL_LM[2:5],
        {**SMALL_LM[5], "num_classes": v},
    ]
    create_project(master.url, "fit", [r["split"]["train"]], [], spec=defs, hyper={}, start=False)
    assert details(master.url, "fit")["spec"][1]["vocab"] == v
    from mlitb.model import Model

    trained = Model.from_spec([{**SMALL_LM[0], "out_sx": 16}, {**SMALL_LM[1], "vocab": 65}, *SMALL_LM[2:5],
                               {**SMALL_LM[5], "num_classes": v}]).to_json("mlitb")  # fmt: skip
    body = {"name": "nofit", "spec": trained, "train": [r["split"]["train"]], "test": [], "hyper": {}}
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=60)
    assert resp.status_code == 400 and "embedding takes 65 tokens" in resp.text, resp.text
