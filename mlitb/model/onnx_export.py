"""ONNX export through torch.onnx, from the same executor that trains.

The graph takes NHWC float32 input `[batch, H, W, C]` (as our data and ConvNetJS
are laid out) and returns the model's outputs `[batch, outputs]` (probabilities for
softmax). The batch axis is dynamic. Dropout exports in its prediction form.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from .spec import Spec
from .torch_executor import TorchNet

OPSET = 17


class _Exportable(torch.nn.Module):
    def __init__(self, net: TorchNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward(x)


def to_onnx_bytes(spec: Spec, params: np.ndarray) -> bytes:
    net = TorchNet(spec, params, device="cpu").eval()
    h, w, d = spec.input_shape
    example = torch.zeros(2, h, w, d)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.9+ deprecates this exporter in favour of the dynamo one, which needs the
        # extra onnxscript package; the TorchScript exporter handles every op we emit.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Exportable(net),
            (example,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
        )
    return buf.getvalue()
