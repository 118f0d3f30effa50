"""A research closure: model, algorithm configuration, parameters, optimizer state and
provenance in one deterministic file (docs/closure.md is the format's reference).

Members of format version 1:
    manifest.json               everything readable (see docs/closure.md)
    params.npy                  float32 (num_params,), the flat layout of docs/model.md
    optimizer/<array>.npy       float32 (num_params,) per optimizer accumulator
    testsets/<k>/pixels.npy     uint8 (N, H, W, C)  } optional: test set k embedded
    testsets/<k>/labels.npy     uint16 (N,)         }
    SHA256SUMS                  sha256 of every other member (archive.py)

`Closure.to_bytes` is deterministic; `Closure.from_bytes` checks structure, sizes and
the format version but not checksums (so `inspect` can still show a tampered file):
`verify.py` checks those, and `resume` refuses a file whose checksums fail.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlitb.model import Model
from mlitb.model.errors import ModelError
from mlitb.model.spec import Spec
from mlitb.optim import Optimizer, OptimizerError, optimizer_from_bytes
from mlitb.optim.base import MAGIC, STATE_VERSION

from .archive import Archive, sha256_hex, write_archive
from .arrays import from_npy, npy_limit, to_npy
from .errors import ClosureError
from .testset import TestSet

FORMAT = "mlitb.closure"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.npy"
MAX_MANIFEST_BYTES = 256 << 20
MAX_PARAMS = 50_000_000  # the model core's own limit


@dataclass
class Closure:
    manifest: dict
    params: np.ndarray  # float32 (num_params,)
    optimizer_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    test_sets: dict[int, TestSet] = field(default_factory=dict)  # index in data.test -> embedded set
    id: str = ""  # sha256 of SHA256SUMS (set by from_bytes / to_bytes)
    sha256: str = ""  # of the whole file
    archive: Archive | None = None

    # ----------------------------------------------------------------- views
    @property
    def spec(self) -> Spec:
        return Spec.from_json(self.manifest["model"]["spec"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["model"]["labels"])

    @property
    def claim(self) -> dict | None:
        return self.manifest.get("claim")

    def model(self) -> Model:
        return Model(self.spec, self.params, self.labels)

    def optimizer(self) -> Optimizer:
        """The optimizer exactly as it was: its next step is the original project's next step."""
        state = self.manifest["training"]["optimizer_state"]
        header = {
            "name": state["name"],
            "hyper": state["hyper"],
            "schedule": state["schedule"],
            "t": state["t"],
            "num_params": state["num_params"],
            "arrays": [[a["name"], state["num_params"]] for a in state["arrays"]],
        }
        head = json.dumps(header, sort_keys=True).encode()
        body = b"".join(self.optimizer_arrays[a["name"]].astype("<f4").tobytes() for a in state["arrays"])
        try:
            return optimizer_from_bytes(MAGIC + struct.pack("<II", STATE_VERSION, len(head)) + head + body)
        except OptimizerError as exc:
            raise ClosureError(f"optimizer state: {exc}", MANIFEST) from None

    # ----------------------------------------------------------------- writing
    def to_bytes(self) -> bytes:
        members = {PARAMS: to_npy(self.params, "<f4")}
        for a in self.manifest["training"]["optimizer_state"]["arrays"]:
            members[a["member"]] = to_npy(self.optimizer_arrays[a["name"]], "<f4")
        for k, entry in enumerate(self.manifest["data"]["test"]):
            embedded = entry.get("embedded")
            if embedded:
                ts = self.test_sets[k]
                members[embedded["pixels"]] = to_npy(ts.pixels, "u1")
                members[embedded["labels"]] = to_npy(ts.labels, "<u2")
        members[MANIFEST] = dump_manifest(self.manifest)
        data = write_archive(members)
        self.archive = Archive(data)
        self.id, self.sha256 = self.archive.id, sha256_hex(data)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    # ----------------------------------------------------------------- reading
    @classmethod
    def load(cls, path: str | Path) -> Closure:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ClosureError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Closure:
        archive = Archive(data)
        manifest = _load_manifest(archive)
        model = manifest["model"]
        try:
            spec = Spec.from_json(model["spec"])
        except ModelError as exc:
            raise ClosureError(f"manifest model.spec is not a valid spec: {exc}", MANIFEST) from None
        n = spec.num_params
        if model.get("num_params") != n or n > MAX_PARAMS:
            raise ClosureError(
                f"manifest model.num_params is {model.get('num_params')}, the spec has {n} parameters",
                MANIFEST,
            )
        if len(model.get("labels") or []) != spec.num_outputs:
            raise ClosureError(
                f"manifest model.labels has {len(model.get('labels') or [])} names for "
                f"{spec.num_outputs} outputs",
                MANIFEST,
            )
        params = from_npy(archive.read(PARAMS, npy_limit("<f4", (n,))), PARAMS, "<f4", (n,))
        state = manifest["training"]["optimizer_state"]
        if state.get("num_params") != n:
            raise ClosureError(
                f"optimizer state is for {state.get('num_params')} parameters, the model has {n}", MANIFEST
            )
        arrays = {}
        for a in state["arrays"]:
            member = a["member"]
            arrays[a["name"]] = from_npy(archive.read(member, npy_limit("<f4", (n,))), member, "<f4", (n,))
        test_sets = {}
        for k, entry in enumerate(manifest["data"]["test"]):
            embedded = entry.get("embedded")
            if not embedded:
                continue
            shape = tuple(entry["shape"])
            items = int(entry["items"])
            pix = from_npy(
                archive.read(embedded["pixels"], npy_limit("u1", (items, *shape))),
                embedded["pixels"],
                "u1",
                (items, *shape),
            )
            lab = from_npy(
                archive.read(embedded["labels"], npy_limit("<u2", (items,))),
                embedded["labels"],
                "<u2",
                (items,),
            )
            if lab.size and int(lab.max()) >= len(entry["label_names"]):
                raise ClosureError(
                    f"member {embedded['labels']!r}: label index {int(lab.max())} but the set has "
                    f"{len(entry['label_names'])} label names",
                    embedded["labels"],
                )
            test_sets[k] = TestSet(entry["name"], shape, list(entry["label_names"]), pix, lab)
        closure = cls(manifest, params, arrays, test_sets, archive.id, sha256_hex(data), archive)
        return closure


def dump_manifest(manifest: dict) -> bytes:
    """Canonical manifest text: sorted keys, fixed indentation, exact float reprs."""
    return (
        json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode()


REQUIRED = {
    "model": ("spec", "labels", "num_params", "input_shape"),
    "training": ("optimizer", "hyper", "optimizer_state", "iteration", "vectors_processed"),
    "data": ("train", "test"),
}


def _load_manifest(archive: Archive) -> dict:
    raw = archive.read(MANIFEST, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClosureError(f"{MANIFEST} is not valid JSON: {exc}", MANIFEST) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ClosureError(f'{MANIFEST}: expected "format": "{FORMAT}"; this is not a closure', MANIFEST)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ClosureError(
            f"closure format version {version!r} is not supported (this mlitb reads version "
            f"{FORMAT_VERSION}); fix: use the mlitb version that wrote it "
            f"({manifest.get('mlitb_version', 'unknown')}) or a newer one",
            MANIFEST,
        )
    for section, keys in REQUIRED.items():
        part = manifest.get(section)
        missing = [k for k in keys if not isinstance(part, dict) or k not in part]
        if missing:
            raise ClosureError(f"{MANIFEST}: section {section!r} lacks {', '.join(missing)}", MANIFEST)
    state = manifest["training"]["optimizer_state"]
    try:
        for a in state["arrays"]:
            str(a["name"]), str(a["member"])
        int(state["t"]), str(state["name"])
        for entry in manifest["data"]["test"]:
            str(entry["name"]), list(entry["label_names"]), int(entry["items"]), list(entry["shape"])
            list(entry["label_map"]), str(entry["content_hash"])
            if entry.get("embedded"):
                str(entry["embedded"]["pixels"]), str(entry["embedded"]["labels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ClosureError(
            f"{MANIFEST}: malformed optimizer state or test set entry ({exc!r})", MANIFEST
        ) from None
    return manifest
