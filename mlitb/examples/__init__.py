"""Built-in example models, by name: a name works wherever a spec file does
(`mlitb model check NAME`, `mlitb model init NAME OUT`, `mlitb project create --spec NAME`).

- mnist: the paper's MNIST convnet (two conv+pool stages, 5,994 parameters);
- fashion: a small residual conv net with batch norm and global average pooling for
  28x28x1 images (Fashion-MNIST), about 27,000 parameters;
- charlm: a character-level transformer (4 layers, 128 wide, 4 heads, context 64) for a
  text dataset (`mlitb data upload FILE.txt --text`); a project fits its vocabulary to
  the text's.
"""

from __future__ import annotations

import json
from importlib import resources

NAMES = ("mnist", "fashion", "charlm")


def load(name: str) -> dict:
    """The example's JSON ({"name", "description", "layer_defs"}); KeyError naming the
    examples for an unknown name."""
    if name not in NAMES:
        raise KeyError(f"no built-in example {name!r}; the examples are {', '.join(NAMES)}")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())
