"""Shared test helpers: the real ConvNetJS in node, small specs, random data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
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


# --------------------------------------------------------------------------- data server
# A real data server (uvicorn on a free localhost port, real SQLite under tmp_path).


def png_bytes(pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    """An image file's bytes from an (H, W) or (H, W, C) uint8 array."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, fmt, **save)
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression: int | None = None) -> Path:
    """A zip holding `members` (name -> bytes) in the given order."""
    import zipfile

    comp = zipfile.ZIP_DEFLATED if compression is None else compression
    with zipfile.ZipFile(path, "w", comp) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def digit_zip(path: Path, per_label: int = 3, labels=("0", "1", "2"), shape=(28, 28), seed: int = 0) -> Path:
    """A small random-image dataset zip: `root/<label>/<i>.png`."""
    rng = np.random.default_rng(seed)
    members = {}
    for label in labels:
        for i in range(per_label):
            members[f"root/{label}/{i}.png"] = png_bytes(rng.integers(0, 256, shape, dtype=np.uint8))
    return make_zip(path, members)


class DataServerHandle:
    """A data server on a free port; `restart()` starts a fresh process-equivalent on the same dir.
    `client` sends its write token (the one it was given, else the one it generated); `auth`
    is the header for raw requests."""

    def __init__(self, data_dir: Path, **app_kwargs) -> None:
        self.data_dir = data_dir
        self.app_kwargs = app_kwargs
        self._start()

    def _start(self) -> None:
        from mlitb.data.app import create_app
        from mlitb.data.client import DataClient
        from mlitb.server_runner import BackgroundServer

        self.app = create_app(self.data_dir, **self.app_kwargs)
        self.token = self.app.state.write_token
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.server = BackgroundServer(self.app)
        self.url = self.server.url
        self.client = DataClient(self.url, token=self.token)

    def restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        self.client.close()
        self.server.stop()
        self.app.state.store.close()


@pytest.fixture
def data_server(tmp_path: Path):
    handle = DataServerHandle(tmp_path / "data")
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def mnist_big(tmp_path_factory) -> dict[str, Path]:
    """Real MNIST slices for training: the first 6,000 training and 1,000 test images."""
    from mlitb.data import mnist

    out = tmp_path_factory.mktemp("mnist-big")
    zips = {}
    for split, limit in (("train", 6000), ("test", 1000)):
        images, labels = mnist.load(split, mnist.find_source(ROOT), limit)
        zips[split] = mnist.write_zip(images, labels, out / f"mnist-{split}.zip", f"mnist-{split}")
    return zips


@pytest.fixture(scope="session")
def mnist_zips(tmp_path_factory) -> dict[str, Path]:
    """Real MNIST slices (first 300 training, 100 test images) as upload zips."""
    from mlitb.data import mnist

    out = tmp_path_factory.mktemp("mnist")
    zips = {}
    for split, limit in (("train", 300), ("test", 100)):
        images, labels = mnist.load(split, mnist.find_source(ROOT), limit)
        zips[split] = mnist.write_zip(images, labels, out / f"mnist-{split}.zip", f"mnist-{split}")
    return zips


# --------------------------------------------------------------------------- master server
# A real master (with the data server mounted at /data) on a free localhost port.


class MasterHandle:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._start()

    def _start(self) -> None:
        from mlitb.data.client import DataClient
        from mlitb.server_runner import BackgroundServer
        from mlitb.serving import build_app

        port = int(self.url.rsplit(":", 1)[1]) if getattr(self, "url", None) else 0
        self.server = BackgroundServer(port=port, factory=lambda url: build_app(self.state_dir, url))
        self.url = self.server.url
        self.app = self.server.app
        self.manager = self.app.state.manager
        self.data_token = self.app.state.data_token
        self.data = DataClient(f"{self.url}/data", token=self.data_token)

    def restart(self, pause: float = 0.0) -> None:
        """Stop and start again on the same directory and port (clients may reconnect)."""
        self.stop()
        time.sleep(pause)
        self._start()

    def stop(self) -> None:
        if self.server is not None:
            self.data.close()
            self.server.stop()
            self.server = None


@pytest.fixture
def master(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLITB_CONFIG", str(tmp_path / "tokens.json"))
    handle = MasterHandle(tmp_path / "state")
    yield handle
    handle.stop()


# --------------------------------------------------------------------------- browser
# Debian's chromium driven by Python playwright (DEVELOPERS.md: `playwright install`
# cannot work here; the executable and flags are fixed).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def playwright_sync():
    """Module-scoped: playwright's sync API keeps an event loop running in this thread
    while it is open, which would break later tests that call asyncio.run(). One per
    module, shared by its browsers (a second one in the same thread is refused)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def chromium(playwright_sync):
    browser = playwright_sync.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


# --enable-unsafe-webgpu gives headless Chromium a WebGPU adapter: SwiftShader, on the CPU
# (right for correctness, not speed), as on every desktop Chrome with WebGPU on by default
CHROMIUM_WEBGPU_ARGS = [*CHROMIUM_ARGS, "--enable-unsafe-webgpu"]


@pytest.fixture(scope="module")
def webgpu_chromium(playwright_sync):
    """Chromium with a WebGPU adapter: a volunteer page there offers webgpu, webgl and wasm."""
    browser = playwright_sync.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_WEBGPU_ARGS, headless=True
    )
    yield browser
    browser.close()


def _logged_page(browser):
    """A new page at laptop size that keeps its console lines (wait_for shows them)."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
    return context, page


@pytest.fixture
def webgpu_page(webgpu_chromium):
    context, page = _logged_page(webgpu_chromium)
    yield page
    context.close()


@pytest.fixture
def page(chromium):
    context, page = _logged_page(chromium)
    yield page
    context.close()


def pause(seconds: float, page=None) -> None:
    """Sleep; with a page, through playwright, so that its events (console lines, route
    handlers a test installed for the page's Web Workers) are handled meanwhile: the sync
    API handles them only inside its own calls."""
    if page is not None and not page.is_closed():
        page.wait_for_timeout(seconds * 1000)
    else:
        time.sleep(seconds)


def wait_for(fn, timeout: float, what: str, page=None):
    """Poll fn until it returns something truthy; the assertion shows the last value and,
    for browser tests, the page's last console lines."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        pause(0.3, page)
    logs = "\n".join(page.console_lines[-30:]) if page is not None else ""
    raise AssertionError(f"timed out waiting for {what}; last: {str(last)[:500]}\n{logs}")


# What every project summary holds (REST, CLI --json, Engine.summary): the paper's columns and more.
SUMMARY_KEYS = (
    "iteration", "state", "workers", "workers_assigned", "data_size", "data_allocated",
    "data_unallocated", "vectors_processed", "power", "test_error", "train_loss", "clients",
    "algorithm", "compression", "bytes_in", "bytes_out", "stale", "late", "rejected",
    "aggregation", "clipped", "refused_steps",
)  # fmt: skip
# per client in a project summary (and `project show --json`)
CLIENT_KEYS = ("bytes_in", "bytes_out", "compute_s", "connected_s", "computing", "protocol", "capacity",
               "rejected", "clipped", "probation", "test_error")  # fmt: skip
