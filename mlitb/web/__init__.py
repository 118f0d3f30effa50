"""The browser client: static ES modules and Web Worker scripts served by the master.

Vendor files (TensorFlow.js and its backends, uPlot, the QR encoder, ConvNetJS for the
benchmark) are installed by npm (package-lock.json pins them) and copied into
`static/vendor/` by `build.py` (`make setup` runs it); they are never committed.
"""

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
