"""What the browser engine (mlitb/web/static/engine/tfjs_engine.js) can run.

Checked at project creation so a spec the browser cannot run is refused with the
reason then, never when a volunteer's tab starts training. Keep BROWSER_LAYERS equal
to the engine's SUPPORTED list (tests/test_tfjs_golden.py runs every type through it).
"""

from __future__ import annotations

from .spec import Spec

BROWSER_LAYERS = frozenset(
    {
        "input",
        "conv",
        "fc",
        "pool",
        "relu",
        "sigmoid",
        "tanh",
        "maxout",
        "dropout",
        "lrn",
        "softmax",
        "svm",
        "regression",
        # the layers of today's models (engine/layout.js lays out their arrays)
        "gelu",
        "layernorm",
        "batchnorm",
        "globalavgpool",
        "embedding",
        "posembedding",
        "attention",
        "residual",
        "seqsoftmax",
    }
)
# A browser tab holds parameters, gradients and optimizer-free copies on the device; past
# this a typical phone runs out of memory (4 bytes x 3 x 25M = 300 MB).
BROWSER_MAX_PARAMS = 25_000_000


def browser_problems(spec: Spec) -> list[str]:
    problems = [
        f"layer {i} ({layer.type}) is not supported by the browser engine"
        for i, layer in enumerate(spec.walk)
        if layer.type not in BROWSER_LAYERS
    ]
    if spec.num_params > BROWSER_MAX_PARAMS:
        problems.append(
            f"{spec.num_params:,} parameters are more than a browser worker can hold "
            f"({BROWSER_MAX_PARAMS:,}); use native workers or a smaller model"
        )
    return problems
