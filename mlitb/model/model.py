"""`Model`: a spec, its flat float32 parameters and optional class labels.

The one object other components and users hold; files in every supported
format load into it and leave from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from . import convnetjs_format, mlitb_format, native_format
from .errors import FormatError
from .jsonfloats import dumps
from .layout import init_params
from .spec import Spec

FORMATS = ("convnetjs", "mlitb", "onnx")


class Model:
    def __init__(self, spec: Spec, params: np.ndarray, labels: Sequence[str] | None = None):
        params = np.ascontiguousarray(params, dtype=np.float32)
        if params.shape != (spec.num_params,):
            raise ValueError(f"params must have shape ({spec.num_params},), got {params.shape}")
        if labels is not None:
            labels = [str(x) for x in labels]
            if len(labels) != spec.num_outputs:
                raise ValueError(f"{len(labels)} labels for {spec.num_outputs} outputs")
        self.spec = spec
        self.params = params
        self.labels = labels

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_spec(cls, layer_defs: object, seed: int = 0, labels: Sequence[str] | None = None) -> Model:
        spec = layer_defs if isinstance(layer_defs, Spec) else Spec.from_json(layer_defs)
        return cls(spec, init_params(spec, seed), labels)

    @classmethod
    def from_json(cls, data: object) -> Model:
        """Any supported JSON document, detected: mlitb, ConvNetJS, MLitB prototype,
        or a bare spec (layer definitions; parameters then initialised with seed 0)."""
        if native_format.is_native(data):
            return cls(*native_format.from_native(data))
        if convnetjs_format.is_convnetjs(data):
            return cls(*convnetjs_format.from_convnetjs(data))
        if mlitb_format.is_mlitb_prototype(data):
            return cls(*mlitb_format.from_mlitb_prototype(data))
        if isinstance(data, list) or (isinstance(data, Mapping) and "layer_defs" in data):
            return cls.from_spec(data["layer_defs"] if isinstance(data, Mapping) else data)
        raise FormatError(
            "not a model file: expected an mlitb model ({'format': 'mlitb.model'}), a ConvNetJS "
            "net.toJSON() ({'layers': [...]}), an MLitB prototype model ({'params', 'configs', "
            "...}) or a list of layer definitions"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """A JSON model file. A research closure (.mlitb, a zip) is the closure package's
        to open (`mlitb.closure.load_model` takes both): the model package does not import
        the closure package, which builds on it."""
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            raise FormatError(
                f"{path}: a zip file (a research closure?), expected a JSON model; "
                "fix: mlitb.closure.load_model(path) opens closures and models alike"
            )
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from None
        except UnicodeDecodeError:
            raise FormatError(f"{path}: not a JSON text file (an .onnx file cannot be loaded)") from None
        return cls.from_json(data)

    # -- output ----------------------------------------------------------------
    @property
    def default_format(self) -> str:
        """ConvNetJS's JSON while the model has only ConvNetJS's layers (the prototype's
        and ConvNetJS's tools read it), else mlitb's own."""
        known = convnetjs_format.CONVNETJS_TYPES
        return "convnetjs" if all(layer.type in known for layer in self.spec.walk) else "mlitb"

    def to_json(self, format: str | None = None) -> dict:
        format = format or self.default_format
        if format == "convnetjs":
            return convnetjs_format.to_convnetjs(self.spec, self.params, self.labels)
        if format == "mlitb":
            return native_format.to_native(self.spec, self.params, self.labels)
        raise ValueError(f"unknown JSON format {format!r}; use 'convnetjs' or 'mlitb'")

    def save(self, path: str | os.PathLike, format: str | None = None) -> None:
        format = format or self.default_format
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if format == "onnx":
            from .onnx_export import to_onnx_bytes

            data = to_onnx_bytes(self.spec, self.params)
            with open(path, "wb") as f:
                f.write(data)
            return
        text = dumps(self.to_json(format))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    # -- compute -----------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return self.spec.num_params

    def executor(self, device: str | None = "cpu", **kw):
        from .torch_executor import TorchNet

        return TorchNet(self.spec, self.params, device=device, **kw)

    def predict(self, x: np.ndarray, device: str | None = "cpu") -> np.ndarray:
        """x: float32 [N, H, W, C] -> [N, outputs] (probabilities for softmax)."""
        return self.executor(device).predict(np.asarray(x, dtype=np.float32))

    def __repr__(self) -> str:
        h, w, d = self.spec.input_shape
        return (f"Model({len(self.spec.layers)} layers, input {h}x{w}x{d}, "
                f"{self.num_params} params, {self.spec.loss})")  # fmt: skip
