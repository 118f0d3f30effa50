"""`mlitb model ...`: check a spec, convert model files, initialise a model."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mlitb import examples
from mlitb.closure import load_model
from mlitb.model import Model, ModelError
from mlitb.model.layers import Layer

EXAMPLES = examples.NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="check, convert and initialise models")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    c = msub.add_parser(
        "check",
        help="validate a spec or model file; print its expanded layers, shapes and parameters",
    )
    c.add_argument("spec", help="a JSON file (layer definitions or any model file), or the "
                   f"name of a built-in example: {', '.join(EXAMPLES)}")  # fmt: skip
    c.add_argument("--json", action="store_true", help="print the expanded spec as JSON")
    c.set_defaults(func=cmd_check)

    v = msub.add_parser("convert", help="convert a model file to another format")
    v.add_argument("input", help="mlitb, ConvNetJS or MLitB-prototype JSON (or a spec)")
    v.add_argument("output", help="file to write")
    v.add_argument("--to", choices=("convnetjs", "mlitb", "onnx"), default=None,
                   help="the format (default: ConvNetJS while the model has only its layers, "
                   "else mlitb)")  # fmt: skip
    v.set_defaults(func=cmd_convert)

    i = msub.add_parser("init", help="a new model from a spec, with seeded initial weights")
    i.add_argument("spec")
    i.add_argument("output")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--to", choices=("convnetjs", "mlitb", "onnx"), default="mlitb")
    i.set_defaults(func=cmd_init)


def _load(name: str) -> Model:
    if name in EXAMPLES and not Path(name).exists():
        return Model.from_json(examples.load(name))
    return load_model(name)  # a JSON model or a research closure


def _fail(exc: Exception) -> int:
    print(f"mlitb: error: {exc}", file=sys.stderr)
    return 1


def _details(layer: Layer) -> str:
    j = layer.to_json()
    skip = {"layer_type", "out_sx", "out_sy", "out_depth", "in_depth", "num_inputs", "layers"}
    return " ".join(f"{k}={v}" for k, v in j.items() if k not in skip)


def cmd_check(args) -> int:
    try:
        model = _load(args.spec)
    except (ModelError, OSError) as e:
        return _fail(e)
    spec = model.spec
    if args.json:
        print(json.dumps({"layers": spec.to_json(), "num_params": spec.num_params}, indent=1))
        return 0
    print(f"{'#':>5}  {'layer':<13} {'output (HxWxD)':<16} {'params':>10}  details")

    def show(layers, prefix: str) -> None:  # a block's sub-layers indented, numbered 3.0, 3.1, ...
        for i, layer in enumerate(layers):
            n = sum(math.prod(s) for _, s in layer.param_shapes())
            shape = "x".join(map(str, layer.out_shape))
            name = "  " * prefix.count(".") + layer.type
            print(f"{prefix + str(i):>5}  {name:<13} {shape:<16} {n:>10}  {_details(layer)}")
            show(layer.children(), f"{prefix}{i}.")

    show(spec.layers, "")
    h, w, d = spec.input_shape
    print(f"input {h}x{w}x{d}, {spec.num_outputs} outputs ({spec.loss}), "
          f"{spec.num_params} parameters ({spec.num_params * 4 / 1024:.1f} KiB as float32)")  # fmt: skip
    if model.labels:
        print("labels: " + ", ".join(model.labels))
    return 0


def cmd_convert(args) -> int:
    try:
        model = _load(args.input)
        model.save(args.output, format=args.to)
    except (ModelError, OSError) as e:
        return _fail(e)
    print(f"wrote {args.output} ({args.to}, {model.num_params} parameters)")
    return 0


def cmd_init(args) -> int:
    try:
        base = _load(args.spec)
        model = Model.from_spec(base.spec, seed=args.seed, labels=base.labels)
        model.save(args.output, format=args.to)
    except (ModelError, OSError) as e:
        return _fail(e)
    print(f"wrote {args.output} ({args.to}, {model.num_params} parameters, seed {args.seed})")
    return 0
