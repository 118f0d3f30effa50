"""The tracker's camera in real Chromium (its own module: it launches Chromium with the fake
camera flags, and a sync playwright session must not overlap another)."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
from conftest import ARTIFACTS, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@contextlib.contextmanager
def camera_page(master):
    """A page of a Chromium with the fake camera (two extra flags on top of the fixed ones),
    the camera allowed for the master's origin."""
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        context = browser.new_context()
        context.grant_permissions(["camera"], origin=master.url)
        try:
            yield context.new_page()
        finally:
            browser.close()


def test_tracker_classifies_a_camera_picture_and_adds_it_with_a_label(master, mnist_zips):
    """getUserMedia with Chromium's fake camera."""
    train = master.data.upload(mnist_zips["train"], "28x28x1", "train")["dataset"]
    spec = json.loads((ARTIFACTS.parent / "mlitb" / "examples" / "mnist.json").read_text())
    r = httpx.post(f"{master.url}/api/projects", json={"name": "cam", "spec": spec, "train": [train]})
    assert r.status_code == 201, r.text
    token = r.json()["owner_token"]
    with camera_page(master) as page:
        page.goto(master.url)
        page.evaluate(f"localStorage.setItem('mlitb.tokens', JSON.stringify({{cam: {json.dumps(token)}}}))")
        page.evaluate(f"localStorage.setItem('mlitb.dataToken', {json.dumps(master.data_token)})")
        page.goto(f"{master.url}/#/p/cam")
        page.wait_for_selector("#summary")
        page.click("#btn-add-tracker")
        page.wait_for_function("window.mlitbPage.handles[0].status.backend === 'wasm'", timeout=60000)
        page.click("#btn-camera")
        page.wait_for_function("document.getElementById('camera').videoWidth > 0", timeout=30000)
        page.click("#btn-snap")
        page.wait_for_selector("#predictions li", timeout=30000)
        assert page.locator("#predictions li").count() == 5
        items = master.data.info(train)["items"]
        page.locator('#predictions li[data-label="3"]').click()
        wait_for(lambda: master.data.info(train)["items"] == items + 1, 30, "the photo to be added")
        sources = httpx.get(
            f"{master.url}/data/datasets/{train}/sources", params={"ids": f"{items}:{items + 1}"}
        ).json()
        assert sources[0]["label"] == "3"


def test_a_device_project_volunteer_adds_labelled_camera_photos_that_stay_in_the_tab(master):
    """data_source=device: photos from the (fake) camera, labelled on the volunteer page, are
    this tab's training data; the master hears only their count."""
    spec = json.loads((ARTIFACTS.parent / "mlitb" / "examples" / "mnist.json").read_text())
    body = {"name": "camdev", "spec": spec, "labels": [str(d) for d in range(10)], "start": True,
            "hyper": {"data_source": "device"}}  # fmt: skip
    r = httpx.post(f"{master.url}/api/projects", json=body)
    assert r.status_code == 201, r.text
    with camera_page(master) as page:
        page.goto(f"{master.url}/join/camdev")
        page.wait_for_selector("#device-data:not([hidden])", timeout=60000)
        page.click("#data-camera")
        page.wait_for_function("document.getElementById('data-video').videoWidth > 0", timeout=30000)
        page.select_option("#data-photo-label", "3")
        page.click("#data-snap")
        page.wait_for_function("document.getElementById('data-summary').textContent.includes('1 items used')")
        page.click("#data-snap")
        page.wait_for_function(
            "document.getElementById('data-summary').textContent.includes('2 items used (3: 2)')"
        )

        def reported() -> bool:
            s = httpx.get(f"{master.url}/api/projects/camdev").json()
            rows = [c for c in s["clients"] if c["role"] == "trainer"]
            return bool(rows) and rows[0]["data_cached"] == 2

        wait_for(reported, 30, "the tab's count of its photos at the master")
