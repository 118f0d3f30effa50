"""Projects whose training data stays on the devices (`data_source=device`, issue 26):
the worker's reader (the data server's rules on a folder or zip), and a real master with
a native `mlitb worker --data` that learns MNIST from a local folder the master never sees."""

from __future__ import annotations

import subprocess
import time

import httpx
import numpy as np
import pytest
from conftest import ROOT, make_zip, png_bytes
from test_master_integration import (
    HTTP_TIMEOUT,
    MLITB,
    MNIST_SPEC,
    bearer,
    brief,
    create_project,
    kill_all,
    tail,
    upload,
    wait_for,
)

from mlitb.worker import device_data

LABELS = [str(d) for d in range(10)]


def image(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8))


def write_folder(root, files: dict[str, bytes]):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_a_device_folder_is_read_with_the_upload_rules(tmp_path):
    files = {
        "0/a.png": image(1),
        "0/b.png": image(2),
        "1/c.png": image(3),
        "1/d.PNG": png_bytes(np.zeros((56, 40, 3), np.uint8)),  # colour, another size: resized
        "0/notes.txt": b"not an image",
        "0/bad.png": b"\x89PNG\r\n\x1a\n broken",
        "cat/e.png": image(4),  # a label the project does not have
        ".DS_Store": b"x",
        "0/.hidden.png": image(5),
        "loose.png": image(6),  # not inside a label folder
        "1/huge.png": png_bytes(np.zeros((6000, 7000), np.uint8)),  # 42M pixels: over the 40M limit
    }
    got = device_data.load(write_folder(tmp_path / "dev", files), (28, 28, 1), LABELS)
    assert len(got) == 4 and got.pixels.shape == (4, 28, 28, 1) and got.pixels.dtype == np.uint8
    assert got.per_label == {"0": 2, "1": 2} and sorted(got.labels.tolist()) == [0, 0, 1, 1]
    assert got.unknown == {"cat": 1}
    skipped = dict(got.skipped)
    assert set(skipped) == {"0/notes.txt", "0/bad.png", "loose.png", "1/huge.png"}, got.skipped
    assert "image too large" in skipped["1/huge.png"]
    assert "not inside a label folder" in skipped["loose.png"]
    assert "cat (1)" in got.describe() and "files skipped" in got.describe()
    # the same as a zip: the same items
    zipped = make_zip(tmp_path / "dev.zip", files)
    again = device_data.load(zipped, (28, 28, 1), LABELS)
    assert again.per_label == got.per_label and np.array_equal(
        np.sort(again.pixels, 0), np.sort(got.pixels, 0)
    )


def test_nothing_usable_says_why(tmp_path):
    with pytest.raises(device_data.NoData, match="no such file or folder"):
        device_data.load(tmp_path / "missing", (28, 28, 1), LABELS)
    only_cats = write_folder(tmp_path / "cats", {"cat/a.png": image(1), "dog/b.png": image(2)})
    with pytest.raises(device_data.NoData, match="label folders found: cat, dog"):
        device_data.load(only_cats, (28, 28, 1), LABELS)
    no_images = write_folder(tmp_path / "text", {"0/a.txt": b"hello", "1/b.txt": b"world"})
    with pytest.raises(device_data.NoData, match="no usable image"):
        device_data.load(no_images, (28, 28, 1), LABELS)
    (tmp_path / "fake.zip").write_bytes(b"this is not a zip")
    with pytest.raises(device_data.NoData, match="not a zip"):
        device_data.load(tmp_path / "fake.zip", (28, 28, 1), LABELS)


def mnist_folder(root, count: int):
    from mlitb.data import mnist

    images, labels = mnist.load("train", mnist.find_source(ROOT), count)
    for i, (px, label) in enumerate(zip(images, labels, strict=True)):
        path = root / str(int(label)) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(px.reshape(28, 28)))
    return root


def worker(url: str, project: str, log, *extra: str) -> subprocess.Popen:
    args = [MLITB, "worker", url, "--project", project, "--threads", "1", "--quiet", "--log-level", "info",
            *extra]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.slow
def test_a_native_worker_learns_from_its_own_folder_the_master_never_sees(master, mnist_zips, tmp_path):
    _train, test = upload(master.data, mnist_zips)
    hyper = {"data_source": "device", "algorithm": "local_sgd", "iteration_time": 2.0, "test_interval": 1}
    token = create_project(master.url, "dev", [], [test], hyper=hyper, labels=LABELS, spec=MNIST_SPEC)
    # a training set cannot be attached to it
    resp = httpx.post(f"{master.url}/api/projects/dev/datasets", json={"train": [_train], "test": []},
                      headers=bearer(token), timeout=HTTP_TIMEOUT)  # fmt: skip
    assert resp.status_code == 400 and "data_source=device" in resp.text, resp.text
    folder = mnist_folder(tmp_path / "mine", 1500)
    proc = worker(master.url, "dev", tmp_path / "w.log", "--data", str(folder), "--name", "phone")
    try:
        s = wait_for(
            master.url,
            "dev",
            lambda s: s["test_error"] is not None and s["test_error"] < 0.12 and s["iteration"] >= 3,
            240,
            "test error under 12 % from the device's own data",
        )
        assert proc.poll() is None, tail(tmp_path / "w.log")
    finally:
        kill_all([proc])
    assert s["data_source"] == "device" and s["data_size"] == 0 and s["data_allocated"] == 0, brief(s)
    (c,) = [c for c in s["clients"] if c["role"] == "trainer"]
    assert (
        c["data_cached"] == 1500 and c["data_allocated"] == 0 and "device_labels" not in c
    )  # histograms stay private
    # what the trainer sent: results and small messages, never its 1,500 images (1.2 MB of pixels)
    per_result = c["bytes_in"] / max(c["results"], 1)
    assert per_result < 4 * 5994 + 8192, (c["bytes_in"], c["results"])
    assert not s["verify"] and s["audits"] == 0


@pytest.mark.slow
def test_the_wrong_data_for_a_project_stops_the_worker_with_the_reason(master, mnist_zips, tmp_path):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "srv", [train], [test], hyper={"algorithm": "local_sgd"})
    create_project(
        master.url, "dev", [], [test], hyper={"data_source": "device"}, labels=LABELS, spec=MNIST_SPEC
    )
    folder = mnist_folder(tmp_path / "mine", 20)
    cats = write_folder(tmp_path / "cats", {"cat/a.png": image(1)})
    cases = [
        ("srv", ["--data", str(folder)], "is for projects whose data stays on the devices"),
        ("dev", [], "run with --data DIR_OR_ZIP"),
        ("dev", ["--data", str(cats)], "no items with a label of this project"),
    ]
    for project, extra, why in cases:
        log = tmp_path / f"{project}-{len(extra)}.log"
        proc = worker(master.url, project, log, *extra)
        try:
            rc = proc.wait(120)
        finally:
            kill_all([proc])
        assert rc == 2 and why in tail(log), (project, extra, tail(log))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the last one joined, said nothing usable, left
        s = httpx.get(f"{master.url}/api/projects/dev", timeout=HTTP_TIMEOUT).json()
        if not [c for c in s["clients"] if c["role"] == "trainer"]:
            break
        time.sleep(0.25)
    assert s["iteration"] == 0, brief(s)


@pytest.mark.slow
def test_a_privacy_budget_stops_a_device_project_at_budget_spent(master, mnist_zips, tmp_path):
    """dp=central in a real master with a real worker: rounds run until the next would take
    epsilon past dp_epsilon; then state budget_spent, with epsilon <= the budget, shown."""
    _train, test = upload(master.data, mnist_zips)
    hyper = {"data_source": "device", "dp": "central", "dp_noise": 8.0, "dp_clip": 1.0, "dp_sample_rate": 1.0,
             "dp_epsilon": 1.0, "iteration_time": 1.0, "first_round_time": 0.5}  # fmt: skip
    create_project(master.url, "private", [], [test], hyper=hyper, labels=LABELS, spec=MNIST_SPEC)
    proc = worker(
        master.url, "private", tmp_path / "w.log", "--data", str(mnist_folder(tmp_path / "mine", 50))
    )
    try:
        s = wait_for(master.url, "private", lambda s: s["state"] == "budget_spent", 240, "budget_spent")
    finally:
        kill_all([proc])
    assert s["dp"] == "central" and s["dp_epsilon"] == 1.0 and s["dp_noise"] == 8.0 and s["dp_clip"] == 1.0
    # q = 1, z = 8: 3 rounds spend 0.866, a 4th would take it past 1.0 (RDP, delta 1e-5)
    assert s["rounds"] == 3 and s["epsilon"] == pytest.approx(0.8657, abs=1e-3), brief(s)
    assert s["iteration"] >= s["rounds"], brief(s)  # every round a step (one device, always drawn)
    shown = subprocess.run([MLITB, "project", "show", "private", "--server", master.url], capture_output=True,
                           text=True, timeout=120).stdout  # fmt: skip
    assert "private: budget_spent" in shown and "data on the devices:" in shown, shown
    assert "privacy (dp=central): epsilon 0.866 spent, budget 1, delta 1e-05, 3 rounds" in shown, shown
    # the closure records the guarantee and says its training data cannot be re-checked
    from mlitb.closure.closure import Closure

    data = httpx.get(f"{master.url}/api/projects/private/closure", timeout=HTTP_TIMEOUT).content
    record = Closure.from_bytes(data).manifest["privacy"]
    assert record["data_source"] == "device" and "cannot re-check" in record["training_data"]
    g = record["guarantee"]
    assert g["epsilon"] == pytest.approx(s["epsilon"], abs=1e-3) and g["rounds"] == 3 and g["delta"] == 1e-5
    assert g["runs"] == [[1.0, 8.0, 3]] and g["clip"] == 1.0 and g["budget"] == 1.0
    assert g["steps_with_dp"] == 3 and g["steps_without_dp"] == 0 and "caveat" not in g
    assert g["accountant"] == "rdp" and g["accountant_library"].startswith("dp-accounting")
    saved = tmp_path / "private.mlitb"
    saved.write_bytes(data)
    done = subprocess.run(
        [MLITB, "closure", "inspect", str(saved)], capture_output=True, text=True, timeout=120
    )
    inspect = done.stdout
    assert "privacy   epsilon 0.8657 at delta 1e-05 after 3 rounds" in inspect, done.stderr[-3000:]
    assert "cannot re-check" in inspect


@pytest.mark.slow
def test_the_dashboard_shows_the_budget_and_why_there_is_no_test_error(master, mnist_zips, page, tmp_path):
    """A dp device project without a test set: the page plots epsilon per step beside the
    (empty) error chart, says what is spent and left, and why there is no test error."""
    hyper = {"data_source": "device", "dp": "central", "dp_noise": 8.0, "dp_clip": 1.0, "dp_sample_rate": 1.0,
             "dp_epsilon": 1.0, "iteration_time": 1.0}  # fmt: skip
    create_project(master.url, "dpdash", [], [], hyper=hyper, labels=LABELS, spec=MNIST_SPEC)
    proc = worker(
        master.url, "dpdash", tmp_path / "w.log", "--data", str(mnist_folder(tmp_path / "mine", 30))
    )
    try:
        wait_for(master.url, "dpdash", lambda s: s["state"] == "budget_spent", 240, "budget_spent")
    finally:
        kill_all([proc])
    page.goto(f"{master.url}/#/p/dpdash")
    page.wait_for_selector("#summary")
    page.wait_for_function("window.mlitbPage && window.mlitbPage.privacy.points() === 3", timeout=30000)
    assert page.is_visible("#privacy-chart") and "budget 1" in page.inner_text("#privacy-chart")
    privacy = page.inner_text("dd[data-key='privacy']")
    assert "epsilon 0.8657 spent, 0.1343 left of 1" in privacy and "3 rounds" in privacy, privacy
    assert "No test error" in page.inner_text("#no-test-error")
    assert "on the devices" in page.inner_text("dd[data-key='data']")
    assert "budget_spent" in page.inner_text("dd[data-key='state']")


@pytest.mark.slow
def test_a_browser_tab_trains_on_a_folder_it_never_uploads(master, mnist_zips, page, tmp_path):
    """The volunteer page of a device project: a folder of MNIST PNGs given through its
    picker is read in the page, trains, and the model improves; the master holds no item
    and the tab sends only frames of the model's size; the data stays in IndexedDB for the
    next visit until "Forget my data"."""
    _train, test = upload(master.data, mnist_zips)
    hyper = {"data_source": "device", "iteration_time": 2.0, "test_interval": 1, "test_sample": 0}
    create_project(master.url, "tabdev", [], [test], hyper=hyper, labels=LABELS, spec=MNIST_SPEC)
    folder = mnist_folder(tmp_path / "digits", 800)
    (folder / "cat").mkdir()
    (folder / "cat" / "x.png").write_bytes(image(1))  # a label the project lacks
    (folder / "3" / "notes.txt").write_text("not an image")
    page.goto(f"{master.url}/join/tabdev")
    page.wait_for_selector("#device-data:not([hidden])", timeout=60000)
    page.set_input_files("#data-folder", str(folder))
    page.wait_for_function("document.getElementById('data-summary').textContent.includes('800 items used')",
                           timeout=60000)  # fmt: skip
    summary = page.inner_text("#data-summary")
    assert "They stay on this device" in summary and "cat (1)" in summary, summary
    assert "1 files skipped" in page.inner_text("#data-skipped-title")
    s = wait_for(master.url, "tabdev", lambda s: s["test_error"] is not None and s["test_error"] < 0.5
                 and s["iteration"] >= 3, 240, "test error under 50 % from the tab's own data")  # fmt: skip
    assert s["data_size"] == 0 and s["data_allocated"] == 0, brief(s)
    (c,) = [c for c in s["clients"] if c["role"] == "trainer"]
    assert c["kind"] == "browser" and c["data_cached"] == 800 and c["data_allocated"] == 0
    assert c["bytes_in"] / max(c["results"], 1) < 4 * 5994 + 8192, (c["bytes_in"], c["results"])  # no images
    # a second tab of the same browser does not train on the same data (it would count twice)
    second = page.context.new_page()
    second.goto(f"{master.url}/join/tabdev")
    second.wait_for_function(
        "document.getElementById('data-summary').textContent.includes('Another tab')", timeout=60000
    )
    second.close()
    # the next visit finds the data kept in this browser; "Forget my data" removes it
    page.reload()
    page.wait_for_function("document.getElementById('data-summary').textContent.includes('earlier visit')",
                           timeout=60000)  # fmt: skip
    page.click("#data-forget")
    page.wait_for_function("document.getElementById('data-summary').textContent.startsWith('Forgotten')")
    page.reload()
    page.wait_for_selector("#device-data:not([hidden])", timeout=60000)
    assert "No data given yet" in page.inner_text("#data-summary")


@pytest.mark.slow
def test_the_new_project_page_makes_a_private_device_project(master, mnist_zips, page):
    """The dashboard's new-project page: data on the devices and a privacy budget, picked in
    the page, make the same project `mlitb project create --set ...` makes, with a private
    project's own defaults (plain SGD on the devices, fixed work, server momentum)."""
    _train, test = upload(master.data, mnist_zips)
    page.goto(f"{master.url}/#/new")
    page.wait_for_selector("#create[data-defaults='loaded']")
    page.wait_for_selector("#spec-status.ok")
    assert page.is_hidden("#dp-fields")
    page.fill("#name", "pagedp")
    page.select_option("#data-source", "device")
    assert "type the labels" in page.inner_text("#data-source-note")
    page.select_option("#dp", "central")
    assert page.is_visible("#dp-fields") and page.input_value("#dp-sample-rate") == "0.05"
    page.fill("#dp-epsilon", "2")
    page.fill("#dp-rounds", "50")
    page.fill("#dp-sample-rate", "0.1")
    page.fill("#labels", ",".join(LABELS))
    page.select_option("#test-dataset", str(test))
    page.click("#create")
    page.wait_for_url("**/#/p/pagedp")
    d = httpx.get(f"{master.url}/api/projects/pagedp", timeout=HTTP_TIMEOUT).json()
    h = d["hyper"]
    assert (h["data_source"], h["dp"], h["dp_epsilon"], h["dp_rounds"], h["dp_sample_rate"]) == (
        "device", "central", 2.0, 50, 0.1)  # fmt: skip
    own = (h["optimizer"], h["momentum"], h["inner_optimizer"], h["inner_learning_rate"], h["work_vectors"])
    assert own == ("sgd", 0.9, "sgd", 0.1, 50)
    assert h["verify"] is False and d["data_size"] == 0
    assert [s["role"] for s in d["datasets"]] == ["test"]
    page.wait_for_selector("dd[data-key='privacy']")
    assert "2 left of 2" in page.inner_text("dd[data-key='privacy']")
