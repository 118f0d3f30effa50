"""mlitb's own model file: the expanded spec, labels and the exact float32 vector.

    {"format": "mlitb.model", "version": 1,
     "layers": [expanded layers, docs/model.md],
     "labels": ["0", "1", ...] | null,
     "params": {"dtype": "float32", "byteorder": "little", "count": N,
                "sha256": hex of the raw bytes, "base64": the raw bytes}}

Base64 of the raw little-endian bytes is exact and ~3x smaller than decimal text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

import numpy as np

from .errors import FormatError
from .spec import Spec, from_expanded

FORMAT = "mlitb.model"
VERSION = 1


def is_native(data: object) -> bool:
    return isinstance(data, Mapping) and data.get("format") == FORMAT


def to_native(spec: Spec, params: np.ndarray, labels: list[str] | None) -> dict:
    raw = np.ascontiguousarray(params, dtype="<f4").tobytes()
    return {
        "format": FORMAT,
        "version": VERSION,
        "layers": spec.to_json(),
        "labels": list(labels) if labels is not None else None,
        "params": {
            "dtype": "float32",
            "byteorder": "little",
            "count": spec.num_params,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "base64": base64.b64encode(raw).decode("ascii"),
        },
    }


def from_native(data: Mapping) -> tuple[Spec, np.ndarray, list[str] | None]:
    version = data.get("version")
    if version != VERSION:
        raise FormatError(f"{FORMAT} version {version!r} is not supported (this mlitb reads {VERSION})")
    spec = from_expanded(data.get("layers"))
    p = data.get("params")
    if not isinstance(p, Mapping):
        raise FormatError("'params' must be an object with dtype, count, sha256 and base64")
    if p.get("dtype") != "float32" or p.get("byteorder") != "little":
        raise FormatError(
            f"params must be little-endian float32, got {p.get('dtype')!r} {p.get('byteorder')!r}"
        )
    if p.get("count") != spec.num_params:
        raise FormatError(f"params count {p.get('count')!r} does not match the spec's {spec.num_params}")
    try:
        raw = base64.b64decode(p.get("base64", ""), validate=True)
    except (binascii.Error, TypeError) as e:
        raise FormatError(f"params base64 is corrupt: {e}") from None
    if len(raw) != 4 * spec.num_params:
        raise FormatError(f"params hold {len(raw)} bytes, expected {4 * spec.num_params}")
    if hashlib.sha256(raw).hexdigest() != p.get("sha256"):
        raise FormatError("params sha256 does not match: the file is corrupt or was edited")
    params = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(params)):
        raise FormatError("params contain NaN or Inf")
    labels = data.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or len(labels) != spec.num_outputs
        or not all(isinstance(x, str) for x in labels)
    ):  # fmt: skip
        raise FormatError(f"'labels' must be null or a list of {spec.num_outputs} strings")
    return spec, params, labels
