"""A project's model from what a request sends (layer definitions or a model file), and
transfer learning's cut (the output layer replaced for new labels). Refusals are
ProjectErrors that name the layer, so the layer editor can point at it."""

from __future__ import annotations

import math

import numpy as np

from mlitb.master.server.errors import ProjectError
from mlitb.model import Model
from mlitb.model.errors import ModelError
from mlitb.model.spec import Spec


def build_model(spec: list | dict, seed: int) -> Model:
    """Layer definitions (a list, or {"layer_defs": [...]}) or a model file (ConvNetJS / mlitb)."""
    try:
        if isinstance(spec, list) or "layer_defs" in spec:
            return Model.from_spec(spec["layer_defs"] if isinstance(spec, dict) else spec, seed=seed)
        return Model.from_json(spec)
    except ModelError as exc:
        err = ProjectError(400, f"spec: {exc}", "bad_spec")
        err.layer = getattr(exc, "index", None)  # the layer editor highlights it
        raise err from None


def fit_language_model(
    spec: list | dict, model: Model, labels: list[str], hyper, warnings: list[str]
) -> Model:
    """A language model at project creation: its vocabulary fitted to the labels (its text's
    characters) where it is written as definitions, else checked; refused on device data."""
    if model.spec.loss != "seqsoftmax":
        return model
    if hyper.data_source == "device":
        raise ProjectError(
            400,
            "data_source=device: devices bring folders of images today, not text; a language model "
            "trains on a text dataset (mlitb data upload FILE.txt --text)",
            "device_data",
        )
    fitted = fit_vocabulary(spec, model, len(labels), hyper.seed)
    if fitted is not None:
        warnings.append(
            f"vocabulary: the spec's {model.spec.num_outputs} tokens became the text's {len(labels)}"
        )
        model = fitted
    short = [
        layer.vocab for layer in model.spec.walk if layer.type == "embedding" and layer.vocab != len(labels)
    ]
    if short:  # a token id would miss its row (or a row would never be used)
        raise ProjectError(
            400,
            f"the model's embedding takes {short[0]} tokens but the vocabulary has {len(labels)}; "
            f"fix: set vocab to {len(labels)} in the embedding, or give matching labels",
            "label_mismatch",
        )
    return model


def fit_vocabulary(spec: list | dict, model: Model, vocab: int, seed: int) -> Model | None:
    """A language model written as layer definitions (fresh parameters) takes its text's
    vocabulary: every embedding's `vocab` and the seqsoftmax's `num_classes` become
    `vocab`, so `--spec charlm` fits any text. None when there is nothing to fit (a
    trained model file keeps its vocabulary, and a mismatch is refused later)."""
    embeddings = [layer.vocab for layer in model.spec.walk if layer.type == "embedding"]
    if model.spec.loss != "seqsoftmax" or all(v == vocab for v in [model.spec.num_outputs, *embeddings]):
        return None
    defs = spec["layer_defs"] if isinstance(spec, dict) and "layer_defs" in spec else spec
    if not isinstance(defs, list) or not all(isinstance(d, dict) and "type" in d for d in defs):
        return None
    fitted = [
        {**d, "vocab": vocab} if d["type"] == "embedding"
        else {**d, "num_classes": vocab} if d["type"] == "seqsoftmax" and "num_classes" in d
        else d
        for d in defs
    ]  # fmt: skip
    return build_model(fitted, seed)


def drop_last_layer(model: Model, classes: int, seed: int) -> Model:
    """Keep every layer but the output fc + loss (their parameters are a prefix of the
    flat vector), then a fresh fc + softmax for `classes` labels (paper 6.1)."""
    layers = model.spec.to_json()
    if len(layers) < 3 or layers[-2]["layer_type"] != "fc":
        raise ProjectError(400, "drop_last_layer: the model does not end in fc + loss", "bad_spec")
    kept = layers[:-2]
    h, w, d = (kept[-1]["out_sy"], kept[-1]["out_sx"], kept[-1]["out_depth"])
    fc = {"layer_type": "fc", "out_sx": 1, "out_sy": 1, "out_depth": classes, "num_inputs": h * w * d,
          "l1_decay_mul": 0.0, "l2_decay_mul": 1.0, "bias_pref": 0.0}  # fmt: skip
    loss = {
        "layer_type": "softmax",
        "out_sx": 1,
        "out_sy": 1,
        "out_depth": classes,
        "num_inputs": classes,
    }
    try:
        spec = Spec.from_json([*kept, fc, loss])
    except ModelError as exc:
        raise ProjectError(400, f"drop_last_layer: {exc}", "bad_spec") from None
    fresh = Model.from_spec(spec, seed=seed).params
    prefix = model.spec.num_params - sum(math.prod(sh) for _, sh in model.spec.layers[-2].param_shapes())
    params = np.concatenate([model.params[:prefix], fresh[prefix:]]).astype(np.float32)
    return Model(spec, params)
