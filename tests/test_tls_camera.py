"""https with a self-signed certificate opens the camera path (issue 13, "How to show it").

A phone on the LAN opens the dashboard at http://192.168.x.y:8000: a non-loopback origin,
which browsers treat as a secure context only over https, and only a secure context has
`navigator.mediaDevices` (the camera). So: `mlitb serve --tls --host 0.0.0.0` prints its LAN
URL; Chromium (the fixed flags, the fake camera's two, and --ignore-certificate-errors for
the warning a phone's user accepts once) opens it, finds a secure context, starts a tracker
and the camera, classifies a frame and adds it to the project's data with a label. Then the
contrast: the same page from the same master without --tls, over http at the same LAN
address, is no secure context, and the Camera button says to use --tls.

Its own module, like test_camera.py: it launches its own Chromium with extra flags, and a
sync playwright session must not overlap another.
"""

from __future__ import annotations

import re
import ssl

import httpx
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, digit_zip, wait_for
from test_serve_cli import FC_SPEC, THREE, _env, _printed, _stop, create_project, start_serve, tail

from mlitb.data.client import DataClient
from mlitb.lan import lan_address

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Chromium's fake camera (a moving test pattern) and its permission prompt answered yes, as
# in test_camera.py; --ignore-certificate-errors stands for the person who, once per browser,
# accepts the self-signed certificate's warning (Advanced, Proceed) on the phone.
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
ACCEPTS_SELF_SIGNED = ["--ignore-certificate-errors"]
SLOW = 180  # seconds: CI is a loaded 2-core machine, and the tracker loads TF.js' wasm backend


def _browser_page(browser, origin: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(SLOW * 1000)
    if origin.startswith("https://"):  # Chromium refuses to grant the camera to an insecure origin
        context.grant_permissions(["camera"], origin=origin)
    page = context.new_page()
    page.console_lines = []  # what conftest.wait_for shows on a timeout
    page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
    return context, page


def _js(page, expression: str):
    """`expression`'s value in the page, None while it throws (an object not there yet)."""
    return page.evaluate(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()")


def test_https_with_a_self_signed_certificate_opens_the_camera_path(tmp_path):
    from playwright.sync_api import sync_playwright

    env = _env(tmp_path)
    state = tmp_path / "state"
    lan = lan_address()
    procs = []
    try:
        proc, url = start_serve(tmp_path, state, 0, env, "tls", "--tls", "--host", "0.0.0.0")
        procs.append(proc)
        printed = _printed(tmp_path, "tls", "this machine's CLI:")
        public = f"https://{lan}:{url.rsplit(':', 1)[1]}"
        assert f"dashboard:   {public}/" in printed, printed  # the LAN URL, not a loopback one
        assert "self-signed certificate" in printed and "accept it" in printed, printed
        local = re.search(r"this machine's CLI: --server (http://127\.0\.0\.1:\d+)", printed).group(1)
        data_token = re.search(r"write token: (\S+) \(", printed).group(1)
        # the generated certificate names the LAN address: once accepted, it is valid there
        trusted = ssl.create_default_context(cafile=str(state / "tls" / "cert.pem"))
        assert httpx.get(f"{public}/api", verify=trusted, timeout=30).json()["public_url"] == public

        # a small project: 9 noise images of 0, 1 and 2 on the master's data server (/data),
        # uploaded with the write token serve printed, over its plain loopback port
        data = DataClient(f"{local}/data", token=data_token)
        procs.append(data)
        train = data.upload(digit_zip(tmp_path / "digits.zip"), "28x28x1", "train")["dataset"]
        owner = create_project(local, "cam", [train], [], spec=[*FC_SPEC[:2], THREE], start=False)
        items = data.info(train)["items"]

        with sync_playwright() as p:
            args = [*CHROMIUM_ARGS, *FAKE_CAMERA, *ACCEPTS_SELF_SIGNED]
            browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
            context, page = _browser_page(browser, public)
            page.goto(f"{public}/")
            assert page.evaluate("location.origin") == public
            assert page.evaluate("window.isSecureContext") is True
            assert page.evaluate("typeof navigator.mediaDevices?.getUserMedia") == "function"
            page.evaluate(  # the owner and data tokens, as test_camera.py sets them
                "([owner, data]) => { localStorage.setItem('mlitb.tokens', JSON.stringify({cam: owner}));"
                "localStorage.setItem('mlitb.dataToken', data); }",
                [owner, data_token],
            )
            page.goto(f"{public}/#/p/cam")
            page.wait_for_selector("#summary")
            page.click("#btn-add-tracker")  # a tracker over wss://LAN:port
            wait_for(lambda: _js(page, "window.mlitbPage.handles[0].status.backend") == "wasm",
                     SLOW, "the tracker on the wasm backend", page)  # fmt: skip
            page.click("#btn-camera")
            wait_for(lambda: _js(page, "document.getElementById('camera').videoWidth"),
                     SLOW, "a frame from the camera", page)  # fmt: skip
            page.click("#btn-snap")
            wait_for(lambda: page.locator("#predictions li").count() == 3, SLOW, "3 labels ranked", page)
            page.locator('#predictions li[data-label="2"]').click()  # uploads over https
            wait_for(lambda: data.info(train)["items"] == items + 1, SLOW, "the photo added", page)
            sources = data.http.get(f"/datasets/{train}/sources", params={"ids": f"{items}:{items + 1}"})
            assert sources.json()[0]["label"] == "2", sources.text
            assert not [x for x in page.console_lines if x.startswith("pageerror")], page.console_lines
            context.close()
            _stop(proc)

            if lan == "127.0.0.1":  # no network here: http://127.0.0.1 is a secure context too
                return
            # the contrast: the same master and page without --tls, at the same LAN address
            proc, url = start_serve(tmp_path, state, 0, env, "plain", "--host", "0.0.0.0")
            procs.append(proc)
            plain = f"http://{lan}:{url.rsplit(':', 1)[1]}"
            assert f"dashboard:   {plain}/" in _printed(tmp_path, "plain", "workers:")
            context, page = _browser_page(browser, plain)
            page.goto(f"{plain}/#/p/cam")
            page.wait_for_selector("#summary")
            assert page.evaluate("window.isSecureContext") is False
            assert page.evaluate("typeof navigator.mediaDevices") == "undefined"
            page.click("#btn-camera")
            wait_for(lambda: "the camera needs https" in page.inner_text("#banner"),
                     SLOW, "the banner that says why", page)  # fmt: skip
            assert "--tls" in page.inner_text("#banner")
            browser.close()
    except BaseException:
        print(tail(tmp_path / "tls.err"), tail(tmp_path / "plain.err"), sep="\n")  # shown on a failure
        raise
    finally:
        for each in reversed(procs):
            if isinstance(each, DataClient):
                each.close()
            else:
                _stop(each)
