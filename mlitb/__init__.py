"""mlitb: machine learning in the browser, with a Python master.

The package is split by concept: `mlitb.model` (the model spec, its parameter
layout, file formats and the PyTorch executor), `mlitb.optim` (server-side
optimizers on flat vectors) and `mlitb.cli` (the `mlitb` command).
"""

__version__ = "0.1.0"
