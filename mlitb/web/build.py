"""Copy the npm-installed vendor files the page and its workers load into static/vendor.

Run by `make setup` (`python -m mlitb.web.build`) and, if the folder is missing, by
`mlitb serve` at start. Sources are found in ./node_modules or above, or next to the
package; a missing package is a clear error naming `npm ci`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from . import STATIC

VENDOR = STATIC / "vendor"
WASM = "@tensorflow/tfjs-backend-wasm/dist/"
# node_modules path -> file name under static/vendor
FILES = {
    "@tensorflow/tfjs/dist/tf.min.js": "tf.min.js",
    WASM + "tf-backend-wasm.min.js": "tf-backend-wasm.min.js",
    WASM + "tfjs-backend-wasm.wasm": "tfjs-backend-wasm.wasm",
    WASM + "tfjs-backend-wasm-simd.wasm": "tfjs-backend-wasm-simd.wasm",
    WASM + "tfjs-backend-wasm-threaded-simd.wasm": "tfjs-backend-wasm-threaded-simd.wasm",
    "@tensorflow/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js": "tf-backend-webgpu.min.js",
    "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "uplot/dist/uPlot.min.css": "uPlot.min.css",
    "qrcode-generator/dist/qrcode.js": "qrcode.js",
    "convnetjs/build/convnet-min.js": "convnet-min.js",
    # the master's API docs at /docs, served from here rather than a CDN (works offline)
    "swagger-ui-dist/swagger-ui-bundle.js": "swagger-ui-bundle.js",
    "swagger-ui-dist/swagger-ui.css": "swagger-ui.css",
}


def find_node_modules() -> Path:
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "node_modules" / "@tensorflow" / "tfjs").is_dir():
                return folder / "node_modules"
    raise FileNotFoundError(
        "node_modules with @tensorflow/tfjs not found: run `npm ci` in the repository (make setup does)"
    )


def build(force: bool = False) -> Path:
    nm = find_node_modules()
    VENDOR.mkdir(parents=True, exist_ok=True)
    versions = {}
    for src, name in FILES.items():
        source = nm / src
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: run `npm ci` (package-lock.json pins it)")
        target = VENDOR / name
        if force or not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            shutil.copy2(source, target)
        parts = src.split("/")
        package = "/".join(parts[:2] if src.startswith("@") else parts[:1])  # "@scope/name" or "name"
        manifest = nm / package / "package.json"
        versions[package] = json.loads(manifest.read_text())["version"]
    (VENDOR / "versions.json").write_text(json.dumps(versions, indent=1, sort_keys=True))
    return VENDOR


def ensure_built() -> bool:
    """True if the vendor files are there (building them if node_modules allows)."""
    if all((VENDOR / name).exists() for name in FILES.values()):
        return True
    try:
        build()
        return True
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    try:
        out = build(force="--force" in sys.argv)
    except FileNotFoundError as exc:
        print(f"mlitb: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"vendor files in {out}")
