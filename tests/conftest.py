"""Shared test helpers: the real ConvNetJS in node, small specs, random data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONVNETJS_REF = ROOT / "tests" / "js" / "convnetjs_ref.js"


def run_node(script: str | Path, request: object) -> object:
    """Run a node script (a file, or code for `node -e`) with `request` as JSON on stdin
    and return its JSON stdout. Fails (never skips) without node or the npm packages:
    `make test` installs both, so their absence is a real error."""
    node = shutil.which("node")
    assert node, "node is not installed (make test needs Node.js for the ConvNetJS reference)"
    assert (ROOT / "node_modules" / "convnetjs").is_dir(), "run `npm ci` first (make test does)"
    args = [node, str(script)] if isinstance(script, Path) else [node, "-e", script]
    proc = subprocess.run(
        args, input=json.dumps(request), capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_convnetjs(request: dict) -> dict:
    """One request to tests/js/convnetjs_ref.js (see its header for the tasks)."""
    return run_node(CONVNETJS_REF, request)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# A small net with every layer type the reference check names.
SMALL_NET = [
    {"type": "input", "out_sx": 8, "out_sy": 7, "out_depth": 2},
    {"type": "conv", "sx": 3, "filters": 4, "stride": 1, "pad": 1, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "conv", "sx": 2, "sy": 3, "filters": 3, "stride": 2, "pad": 1, "activation": "tanh"},
    {"type": "fc", "num_neurons": 6, "activation": "sigmoid", "drop_prob": 0.3},
    {"type": "fc", "num_neurons": 5, "activation": "tanh"},
    {"type": "softmax", "num_classes": 4},
]
