"""The master <-> worker wire protocol: binary frames, JSON control messages, id text,
and the project hyperparameters (mlitb.master.config.Hyper) every layer shares.

The frame header is checked byte by byte against the module docstring of
mlitb.protocol.frames, with `struct` written out here rather than borrowed.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from pydantic import ValidationError

from mlitb.master.config import DEFAULT_ALGORITHM, Hyper, hyper_error, parse_set
from mlitb.optim import OPTIMIZERS
from mlitb.protocol import PROTOCOL_VERSION, frames
from mlitb.protocol import messages as msg
from mlitb.protocol.frames import FrameError
from mlitb.protocol.idtext import ids_to_text, text_to_ids
from mlitb.protocol.messages import ProtocolError, parse_client_message

# =========================================================================== frames


def test_parameters_round_trip(rng):
    params = rng.standard_normal(257).astype(np.float32)
    params[:3] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]  # sign of zero, denormal, max
    data = frames.encode_parameters(7, 123, params)
    assert isinstance(data, bytes) and len(data) == 40 + 4 * 257
    f = frames.decode(data)
    assert (f.kind, f.project, f.iteration) == (frames.PARAMETERS, 7, 123)
    assert (f.vectors, f.loss, f.vectors_per_s, f.compute_ms) == (0, 0.0, 0.0, 0)
    assert f.values.dtype == np.float32 and f.values.shape == (257,)
    assert f.values.tobytes() == params.tobytes()  # bit-exact, -0.0 included


def test_result_round_trip(rng):
    grad = rng.standard_normal(31).astype(np.float32)
    data = frames.encode_result(
        3, 2**32 - 1, grad, vectors=17, loss=12.3456789012345, vectors_per_s=812.5, compute_ms=950
    )
    f = frames.decode(bytearray(data))  # bytearray and memoryview work as well as bytes
    np.testing.assert_array_equal(frames.decode(memoryview(data)).values, grad)
    assert (f.kind, f.project, f.iteration, f.vectors) == (frames.RESULT, 3, 2**32 - 1, 17)
    assert f.loss == 12.3456789012345  # f64: exact
    assert f.vectors_per_s == 812.5 and f.compute_ms == 950
    np.testing.assert_array_equal(f.values, grad)


def test_decoded_values_are_a_read_only_view():
    f = frames.decode(frames.encode_parameters(1, 0, np.ones(4, np.float32)))
    assert not f.values.flags.writeable
    with pytest.raises(ValueError):
        f.values[0] = 2.0


def test_encode_converts_to_float32_little_endian():
    f = frames.decode(frames.encode_parameters(1, 0, np.array([1.5, -2.25], dtype=">f8")))
    np.testing.assert_array_equal(f.values, np.array([1.5, -2.25], np.float32))


def test_empty_frame_round_trips():
    f = frames.decode(frames.encode_parameters(1, 0, np.zeros(0, np.float32)))
    assert f.values.size == 0


def test_header_layout_matches_the_docstring():
    values = np.array([1.0, -2.0, 0.5], np.float32)
    data = frames.encode_result(0x01020304, 0x0A0B0C0D, values, 42, -1.25, 99.5, 1234)
    assert len(data) == 40 + 12
    assert data[0:4] == b"MLTF"  # magic
    assert data[4] == 2 == PROTOCOL_VERSION  # version
    assert data[5] == 2  # frame type: result
    assert data[6] == 1  # dtype: float32
    assert data[7] == 0  # flags
    assert struct.unpack_from("<I", data, 8) == (0x01020304,)  # project, little-endian
    assert data[8:12] == b"\x04\x03\x02\x01"
    assert struct.unpack_from("<I", data, 12) == (0x0A0B0C0D,)  # iteration
    assert struct.unpack_from("<I", data, 16) == (3,)  # element count
    assert struct.unpack_from("<I", data, 20) == (42,)  # vectors
    assert struct.unpack_from("<d", data, 24) == (-1.25,)  # summed loss, f64
    assert struct.unpack_from("<f", data, 32) == (99.5,)  # vectors per second, f32
    assert struct.unpack_from("<I", data, 36) == (1234,)  # compute ms
    assert struct.unpack_from("<3f", data, 40) == (1.0, -2.0, 0.5)
    params = frames.encode_parameters(5, 6, values)
    assert params[5] == 1  # frame type: parameters
    assert struct.unpack_from("<IdfI", params, 20) == (0, 0.0, 0.0, 0)  # result-only fields are 0


def test_a_hand_built_frame_decodes():
    head = struct.pack("<4sBBBBIIIIdfI", b"MLTF", 1, 2, 1, 0, 9, 4, 2, 5, 2.5, 10.0, 20)
    f = frames.decode(head + struct.pack("<2f", 0.25, -8.0))
    assert (f.kind, f.project, f.iteration, f.vectors, f.loss, f.vectors_per_s, f.compute_ms) == (
        2,
        9,
        4,
        5,
        2.5,
        10.0,
        20,
    )
    np.testing.assert_array_equal(f.values, [0.25, -8.0])


def _frame(**over) -> bytes:
    fields = {"magic": b"MLTF", "version": 1, "kind": 2, "dtype": 1, "count": 2, "payload": 2}
    fields.update(over)
    head = struct.pack(
        "<4sBBBBIIIIdfI",
        fields["magic"],
        fields["version"],
        fields["kind"],
        fields["dtype"],
        0,
        1,
        0,
        fields["count"],
        1,
        0.0,
        0.0,
        0,
    )
    return head + b"\0" * (4 * fields["payload"])


@pytest.mark.parametrize(
    ("data", "max_count", "words"),
    [
        (b"", None, "shorter than the 40-byte header"),
        (_frame()[:39], None, "39 bytes is shorter"),
        (_frame(magic=b"MLTX"), None, "magic"),
        (_frame(version=3), None, "protocol version 3"),
        (_frame(version=0), None, "protocol version 0"),
        (_frame(kind=3), None, "unknown frame type 3 for protocol 1"),
        (_frame(kind=0), None, "unknown frame type 0"),
        (_frame(dtype=2), None, "dtype 2 is not supported for protocol 1"),
        (_frame(count=5, payload=5), 4, "5 elements, the limit is 4"),
        (_frame(count=3, payload=2), None, "header says 3 values of dtype 1"),
        (_frame(count=2, payload=3), None, "the frame has 52 bytes"),
        (_frame(count=2**32 - 1, payload=2), None, "header says 4294967295"),
    ],
    ids=[
        "empty",
        "short",
        "magic",
        "version-3",
        "version-0",
        "type-3",
        "type-0",
        "dtype",
        "over-max-count",
        "too-short-for-count",
        "trailing-bytes",
        "huge-count",
    ],
)
def test_decode_refuses_bad_frames(data, max_count, words):
    with pytest.raises(FrameError, match=words):
        frames.decode(data, max_count=max_count)


def test_max_count_is_inclusive():
    assert frames.decode(_frame(count=4, payload=4), max_count=4).values.size == 4


# =========================================================================== control messages

VALID = {
    "join": {"type": "join", "project": "mnist"},
    "cached": {"type": "cached", "dataset": 1, "ids": [0, 1, 5]},
    "device_data": {"type": "device_data", "items": 12, "per_label": {"0": 5, "1": 7}},
    "heartbeat": {"type": "heartbeat", "t": 12.5},
    "test_result": {"type": "test_result", "iteration": 3, "error": 0.25, "loss": 0.5, "count": 100},
    "status": {"type": "status", "backend": "wasm"},
    "resync": {"type": "resync", "iteration": 4},
    "proof_missing": {"type": "proof_missing", "iteration": 4, "reason": "model changed"},
    "subtree": {
        "type": "subtree",
        "capacity": 9000,
        "clients": 3,
        "children": [
            {
                "name": "r0",
                "kind": "native",
                "backend": "torch-cpu",
                "vectors_per_s": 3100.0,
                "cached": 3000,
                "clients": 0,
            }
        ],
    },
    "child_banned": {
        "type": "child_banned",
        "name": "w3",
        "address": "10.0.0.7",
        "kind": "native",
        "reason": "the result sent is not the round's",
        "iteration": 41,
        "volunteer": "v0123456789abcdef",
    },
    "contributions": {
        "type": "contributions",
        "iteration": 41,
        "rows": [
            {
                "volunteer": "v0123456789abcdef",
                "vectors": 700,
                "name": "tab",
                "kind": "browser",
                "backend": "wasm",
                "threads": 4,
            },
            {
                "volunteer": "anon-site-c3",
                "vectors": 0,
                "name": "",
                "kind": "native",
                "backend": "torch-cpu",
                "threads": None,
            },
        ],
    },
    "leave": {"type": "leave", "reason": "bye"},
}


@pytest.mark.parametrize("kind", msg.CLIENT_TYPES)
def test_every_client_type_parses(kind):
    text = json.dumps(VALID[kind])
    m = parse_client_message(text)
    assert m.type == kind
    assert m.model_dump() | VALID[kind] == m.model_dump()  # every given field kept as given
    assert parse_client_message(text.encode()) == m  # bytes too


def test_join_defaults_and_full_form():
    j = parse_client_message('{"type": "join", "project": "p"}')
    assert isinstance(j, msg.Join)
    assert (j.protocol, j.role, j.kind, j.backend, j.capacity, j.name, j.join_key, j.capabilities) == (
        1,  # a join without a version is a version-1 client
        "trainer",
        "native",
        "unknown",
        3000,
        "",
        "",
        {},
    )
    full = {
        "type": "join",
        "protocol": 2,
        "project": "p",
        "role": "tracker",
        "kind": "browser",
        "backend": "webgpu",
        "capacity": 0,
        "memory_mb": 256,
        "name": "laptop",
        "join_key": "k",
        "capabilities": {"webgpu": True},
        "owner_token": "",
        "volunteer": "k3y-0f-a-v0lunteer_x",
        "threads": 4,
    }
    assert parse_client_message(json.dumps(full)).model_dump() == full


def test_messages_are_frozen():
    m = parse_client_message('{"type": "leave"}')
    with pytest.raises(ValidationError):
        m.reason = "changed"


def _refused(text, code: str) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.code == code
    assert str(info.value) == info.value.reason
    return info.value.reason


@pytest.mark.parametrize(
    "text", ["", "{", "{'type': 'join'}", '{"type": "join",}', "NaN NaN", b"\xff\xfe{", b'{"type": "\xff"}']
)
def test_bad_json(text):
    assert "invalid JSON" in _refused(text, "bad_json")


@pytest.mark.parametrize("text", ["[]", '["join"]', "3", '"join"', "null", "true"])
def test_not_an_object(text):
    reason = _refused(text, "bad_message")
    assert "expected a JSON object with a 'type'" in reason


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"type": "welcome"},
        {"type": "Join"},
        {"type": None},
        {"type": 1},
        {"type": ["join"]},
        {"type": "work", "iteration": 1},
    ],
    ids=["missing", "master-type", "case", "null", "number", "list", "work"],
)
def test_unknown_type(raw):
    reason = _refused(json.dumps(raw), "unknown_type")
    assert (
        "unknown message type" in reason
        and "join, cached, device_data, heartbeat, test_result, status, resync, proof_missing, subtree, "
        "child_banned, contributions, leave"
        in reason
    )


def test_too_large():
    text = '{"type": "heartbeat"}' + " " * msg.MAX_TEXT_BYTES
    assert "the limit is 1048576" in _refused(text, "too_large")
    assert "the limit" in _refused(text.encode(), "too_large")
    # exactly at the limit is still parsed
    at_limit = '{"type": "heartbeat"}'
    at_limit += " " * (msg.MAX_TEXT_BYTES - len(at_limit))
    assert parse_client_message(at_limit).type == "heartbeat"


def test_too_large_counts_utf8_bytes_not_characters():
    text = '{"type": "leave", "reason": "' + "\U0001f600" * 200 + '"}' + " " * (msg.MAX_TEXT_BYTES - 500)
    assert len(text) < msg.MAX_TEXT_BYTES < len(text.encode())
    _refused(text, "too_large")


def test_deeply_nested_json_is_a_protocol_error():
    _refused("[" * 100_000 + "]" * 100_000, "bad_json")


ROW = {"volunteer": "v" + "0" * 16, "vectors": 1}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"type": "join"}, "join: project: Field required"),
        ({"type": "join", "project": ""}, "join: project:"),
        ({"type": "join", "project": "p" * 201}, "join: project:"),
        ({"type": "join", "project": "p", "role": "boss"}, "join: role:"),
        ({"type": "join", "project": "p", "kind": "phone"}, "join: kind:"),
        ({"type": "join", "project": "p", "capacity": -1}, "join: capacity:"),
        ({"type": "join", "project": "p", "capacity": 10_000_001}, "join: capacity:"),
        ({"type": "join", "project": "p", "backend": "b" * 41}, "join: backend:"),
        ({"type": "join", "project": "p", "capabilities": []}, "join: capabilities:"),
        ({"type": "cached", "ids": [1]}, "cached: dataset: Field required"),
        ({"type": "cached", "dataset": 1}, "cached: ids: Field required"),
        ({"type": "cached", "dataset": -1, "ids": []}, "cached: dataset:"),
        ({"type": "cached", "dataset": 1, "ids": [0, -5]}, "cached: ids.1:"),
        ({"type": "cached", "dataset": 1, "ids": [1.5]}, "cached: ids.0:"),
        ({"type": "cached", "dataset": 1, "ids": "0:5"}, "cached: ids:"),
        ({"type": "heartbeat", "t": "soon"}, "heartbeat: t:"),
        ({"type": "test_result", "iteration": 1, "error": 1.5, "count": 1}, "test_result: error:"),
        ({"type": "test_result", "iteration": 1, "error": -0.1, "count": 1}, "test_result: error:"),
        ({"type": "test_result", "iteration": -1, "error": 0.1, "count": 1}, "test_result: iteration:"),
        ({"type": "test_result", "iteration": 1, "error": 0.1, "count": 0}, "test_result: count:"),
        ({"type": "test_result", "iteration": 1, "error": 0.1}, "test_result: count: Field required"),
        ({"type": "leave", "reason": "r" * 201}, "leave: reason:"),
        # a relay's word on whose work its result holds: ids, not keys or markup; bounded
        ({"type": "contributions", "iteration": 1, "rows": [{"volunteer": "<b>x</b>", "vectors": 1}]},
         "contributions: rows.0.volunteer:"),
        ({"type": "contributions", "iteration": 1, "rows": [{"volunteer": "v" + "0" * 16, "vectors": -1}]},
         "contributions: rows.0.vectors:"),
        ({"type": "contributions", "iteration": 1, "rows": [ROW] * 1025},
         "contributions: rows:"),
        ({"type": "contributions", "iteration": 1, "rows": [{"volunteer": "anon-" + "a" * 81, "vectors": 1}]},
         "contributions: rows.0.volunteer:"),
    ],
)  # fmt: skip
def test_bad_fields_name_the_field(raw, where):
    assert _refused(json.dumps(raw), "bad_message").startswith(where)


@pytest.mark.parametrize("kind", msg.CLIENT_TYPES)
def test_extra_fields_refused(kind):
    reason = _refused(json.dumps({**VALID[kind], "surprise": 1}), "bad_message")
    assert reason == f"{kind}: surprise: Extra inputs are not permitted"


def test_negative_ids_refused():
    assert "greater than or equal to 0" in _refused(
        '{"type": "cached", "dataset": 1, "ids": [3, 2, -1]}', "bad_message"
    )


def test_cached_with_many_ids():
    ok = {"type": "cached", "dataset": 0, "ids": list(range(1000))}
    assert parse_client_message(json.dumps(ok)).ids == list(range(1000))


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_test_result_loss_must_be_finite(value):
    text = '{"type": "test_result", "iteration": 1, "error": 0.5, "loss": ' + value + ', "count": 3}'
    assert "loss" in _refused(text, "bad_message")


def test_master_messages():
    w = msg.welcome(
        "c1", {"id": 1, "name": "p"}, [{"layer_type": "input"}], ["a"], 5, 2, "running", 4000, 10000, 1 << 20
    )
    assert w["type"] == "welcome" and w["protocol"] == PROTOCOL_VERSION and w["client_id"] == "c1"
    assert msg.work(3, 950) == {"type": "work", "iteration": 3, "work_ms": 950}
    assert msg.error("late", "x") == {"type": "error", "code": "late", "reason": "x"}
    assert msg.state("paused", 4) == {"type": "state", "state": "paused", "iteration": 4, "reason": ""}
    assert msg.allocation(2, [], []) == {"type": "allocation", "version": 2, "add": [], "remove": []}
    assert msg.dumps({"a": [1, 2]}) == '{"a":[1,2]}'


# =========================================================================== id text


@pytest.mark.parametrize(
    ("ids", "text"),
    [
        ([0, 1, 2, 5, 7, 8], "0:3,5,7:9"),
        ([], ""),
        ([4], "4"),
        ([4, 5], "4:6"),
        ([0, 2, 4], "0,2,4"),
        (list(range(100)), "0:100"),
        ([0, 1, 2, 3, 250, 300, 301, 302], "0:4,250,300:303"),
        ([2**32 - 2, 2**32 - 1], "4294967294:4294967296"),
    ],
)
def test_idtext_examples(ids, text):
    assert ids_to_text(ids) == text
    assert text_to_ids(text) == ids


def test_idtext_round_trip_property():
    rng = np.random.default_rng(7)
    for _ in range(400):
        n = int(rng.integers(0, 60))
        hi = int(rng.choice([n + 1, 2 * n + 2, 10_000]))
        ids = sorted(int(i) for i in rng.choice(hi, size=min(n, hi), replace=False))
        text = ids_to_text(ids)
        assert text_to_ids(text) == ids
        # canonical: no two parts could be merged, every range has at least two ids
        parts = text.split(",") if text else []
        assert len(parts) == sum(1 for i, x in enumerate(ids) if i == 0 or ids[i - 1] != x - 1)
        for p in parts:
            if ":" in p:
                a, b = map(int, p.split(":"))
                assert b - a >= 2


def test_text_to_ids_tolerates_empty_parts():
    assert text_to_ids("0:2,,5,") == [0, 1, 5]


# =========================================================================== Hyper


def test_hyper_defaults():
    h = Hyper()
    assert h.algorithm == DEFAULT_ALGORITHM == "local_sgd"
    # local_sgd's outer step: plain averaging (measured fastest); its clients: Adam
    assert (h.optimizer, h.learning_rate, h.momentum) == ("sgd", 1.0, 0.0)
    assert (h.inner_optimizer, h.inner_learning_rate, h.inner_momentum) == ("adam", 0.002, 0.9)
    assert (h.lr_decay, h.lr_decay_interval, h.lr_floor) == (1.0, 1, 0.0)
    assert (h.l1_decay, h.l2_decay) == (0.0, 0.0)
    assert (h.ro, h.eps, h.beta1, h.beta2) == (None,) * 4
    assert (h.iteration_time, h.iteration_ms) == (30.0, 30000)  # local_sgd's T; rounds grow to it
    assert (h.first_round_time, h.round_growth) == (0.5, 0.25)
    assert (h.capacity, h.batch_size, h.seed, h.save_period) == (10_000_000, 32, 0, 0.0)
    assert (h.work_vectors, h.max_staleness, h.compression) == (0, 2, "none")
    assert (h.test_interval, h.test_sample) == (5.0, 2000)
    assert Hyper(iteration_time=2.5).iteration_ms == 2500
    # the paper's loop: AdaGrad lr 0.01
    s = Hyper(algorithm="sync_sgd")
    assert (s.optimizer, s.learning_rate, s.momentum, s.iteration_time) == ("adagrad", 0.01, None, 4.0)


def test_hyper_algorithm_switch_takes_its_default_optimizer_unless_one_is_named():
    h = Hyper(algorithm="sync_sgd", iteration_time=2)
    local = h.updated({"algorithm": "local_sgd"})
    # its own optimizer and round length (T 2 s was sync_sgd's)
    assert (local.optimizer, local.learning_rate, local.momentum, local.iteration_time) == (
        "sgd",
        1.0,
        0.0,
        30.0,
    )
    back = local.updated({"algorithm": "sync_sgd"})
    assert (back.optimizer, back.learning_rate, back.momentum) == ("adagrad", 0.01, None)
    named = h.updated({"algorithm": "local_sgd", "optimizer": "sgd", "learning_rate": 1.0})
    assert (named.optimizer, named.learning_rate) == ("sgd", 1.0)
    tuned = h.updated({"algorithm": "local_sgd", "learning_rate": 0.5})  # the default optimizer, its lr
    assert (tuned.optimizer, tuned.learning_rate, tuned.momentum) == ("sgd", 0.5, 0.0)
    kept = local.updated({"iteration_time": 3, "optimizer": "nesterov"}).updated({"learning_rate": 0.7})
    assert (kept.optimizer, kept.iteration_time) == ("nesterov", 3.0)  # no switch: kept
    # saved before algorithms existed: the paper's loop with what was saved
    old = Hyper.stored({"optimizer": "adagrad", "learning_rate": 0.02})
    assert (old.algorithm, old.optimizer, old.learning_rate) == ("sync_sgd", "adagrad", 0.02)
    with pytest.raises(ValidationError):
        Hyper(algorithm="async_magic")


@pytest.mark.parametrize(
    "bad",
    [
        {"iteration_time": 0.5},
        {"iteration_time": 301},
        {"iteration_time": 0},
        {"learning_rate": -0.01},
        {"learning_rate": 0},
        {"learning_rate": 11},
        {"learning_rate": float("nan")},
        {"lr_decay": 0},
        {"lr_decay": 1.5},
        {"lr_decay_interval": 0},
        {"l2_decay": -1e-3},
        {"momentum": 1.0},
        {"ro": 0},
        {"eps": 0},
        {"beta2": 1},
        {"capacity": 0},
        {"batch_size": 5000},
        {"seed": -1},
        {"save_period": 11},
        {"optimizer": "rmsprop"},
        {"surprise": 1},
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_hyper_refuses_out_of_range(bad):
    with pytest.raises(ValidationError) as info:
        Hyper(**bad)
    key = next(iter(bad))
    assert hyper_error(info.value).startswith(f"{key}: ")
    assert f"(got {bad[key]!r})" in hyper_error(info.value)


@pytest.mark.parametrize(
    "ok",
    [{"iteration_time": 1}, {"iteration_time": 300}, {"learning_rate": 10}, {"momentum": 0}, {"lr_decay": 1}],
)
def test_hyper_accepts_range_ends(ok):
    Hyper(**ok)


def test_hyper_is_frozen():
    with pytest.raises(ValidationError):
        Hyper().learning_rate = 0.5


def test_hyper_updated():
    h = Hyper(algorithm="sync_sgd", learning_rate=0.1)
    h2 = h.updated({"iteration_time": 2, "optimizer": "sgd"})
    assert (h2.iteration_time, h2.optimizer, h2.learning_rate) == (2.0, "sgd", 0.1)
    assert (h.iteration_time, h.optimizer) == (4.0, "adagrad")  # the original is unchanged
    with pytest.raises(ValidationError):
        h.updated({"iteration_time": 0.5})
    with pytest.raises(ValidationError):
        h.updated({"no_such_field": 1})


@pytest.mark.parametrize(
    ("hyper", "params"),
    [
        ({}, {}),
        ({"eps": 1e-4, "momentum": 0.5, "ro": 0.9, "beta1": 0.8}, {"eps": 1e-4}),
        ({"optimizer": "sgd", "momentum": 0.5, "eps": 1e-4, "beta2": 0.9}, {"momentum": 0.5}),
        ({"optimizer": "nesterov", "ro": 0.9}, {}),
        ({"optimizer": "adadelta", "ro": 0.9, "eps": 1e-5, "momentum": 0.1}, {"ro": 0.9, "eps": 1e-5}),
        ({"optimizer": "windowgrad", "ro": 0.8}, {"ro": 0.8}),
        (
            {"optimizer": "adam", "beta1": 0.5, "beta2": 0.6, "eps": 1e-7, "momentum": 0.2, "ro": 0.3},
            {"beta1": 0.5, "beta2": 0.6, "eps": 1e-7},
        ),
    ],
)
def test_optimizer_params_picks_the_chosen_optimizers_keys(hyper, params):
    h = Hyper(**{"algorithm": "sync_sgd", **hyper})
    assert h.optimizer_params() == params
    opt = h.make_optimizer(11)
    assert type(opt) is OPTIMIZERS[h.optimizer]
    assert opt.hyper == {**OPTIMIZERS[h.optimizer].defaults, **params}
    assert opt.num_params == 11
    assert opt.schedule == h.schedule()


def test_schedule_from_hyper():
    s = Hyper(learning_rate=0.5, lr_decay=0.5, lr_decay_interval=2, lr_floor=0.1).schedule()
    assert [s.at(t) for t in range(6)] == [0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    assert s.at(100) == 0.1


def test_parse_set():
    assert parse_set(["learning_rate=0.5", "capacity=100", "optimizer=adam", " seed = 3", "x=1e-3"]) == {
        "learning_rate": 0.5,
        "capacity": 100,
        "optimizer": "adam",
        "seed": 3,
        "x": 0.001,
    }
    out = parse_set(["capacity=100", "lr=2.0"])
    assert type(out["capacity"]) is int and type(out["lr"]) is float
    assert parse_set(["name=a=b"]) == {"name": "a=b"}
    assert parse_set([]) == {}
    # the parsed values go through Hyper's validation
    assert Hyper().updated(parse_set(["iteration_time=2", "optimizer=sgd"])).iteration_ms == 2000
    with pytest.raises(ValidationError):
        Hyper().updated(parse_set(["iteration_time=0.5"]))


@pytest.mark.parametrize("item", ["capacity", "=5", ""])
def test_parse_set_refuses_items_without_key_and_value(item):
    with pytest.raises(ValueError, match="key=value"):
        parse_set([item])
