"""The owner in the browser and the dashboard on a phone (issue 13), in real Chromium
against a real master:
- an owner link (a one-time code since issue 23; the old `#/signin/PROJECT/TOKEN` is still
  accepted) signs the browser in, the page says so and enables the controls; sign-out; a
  wrong token is refused; the sign-in form does the same by hand;
- at 390 px no page scrolls sideways (tables scroll in their own box);
- the volunteer link says when it only works on this machine.
"""

from __future__ import annotations

import zipfile

import httpx
import numpy as np
import pytest
from conftest import png_bytes, wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import ThreadWorker, create_project, upload

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone(chromium):
    context = chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.console_lines = []
    page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
    yield page
    context.close()


def test_an_owner_link_signs_the_browser_in_and_out(master, mnist_zips, page):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "mine", [train], [test], spec=FC_SPEC, start=False)
    page.goto(f"{master.url}/#/p/mine")
    page.wait_for_selector("#who")
    assert "volunteer view" in page.inner_text("#who")
    assert page.is_disabled("#btn-start")

    page.goto(f"{master.url}/#/signin/mine/{token}")
    page.wait_for_selector("#who.owner")
    assert token not in page.url and page.url.endswith("#/p/mine"), page.url
    assert "signed in as the owner of mine" in page.inner_text(".banner.ok")
    assert page.is_enabled("#btn-start")
    page.click("#btn-start")
    wait_for(
        lambda: httpx.get(f"{master.url}/api/projects/mine").json()["state"] == "running", 30, "started", page
    )
    page.click("#btn-pause")  # the owner link's point: the owner drives the project from here
    wait_for(
        lambda: httpx.get(f"{master.url}/api/projects/mine").json()["state"] == "paused", 30, "paused", page
    )

    page.click("#signout")
    page.wait_for_selector("#who:not(.owner)")
    assert page.is_disabled("#btn-start")

    # a wrong token is refused and not kept
    page.goto(f"{master.url}/#/signin/mine/not-the-token")
    page.wait_for_selector(".banner.error")
    assert "refused" in page.inner_text(".banner.error")
    assert page.evaluate("JSON.parse(localStorage.getItem('mlitb.tokens') || '{}')['mine']") is None

    # the form: pick the project, paste the token
    page.goto(f"{master.url}/#/signin?project=mine")
    page.fill("#signin-token", token)
    page.click("#signin-go")
    page.wait_for_selector("#who.owner")


def test_an_owner_link_with_the_data_token_lets_the_owner_upload(master, mnist_zips, page):
    """The demo's owner link carries the data server's write token (`?data=`): the owner
    uploads from the project page without pasting anything; a wrong one is named."""
    from mlitb.local_tokens import signin_link

    train, _ = upload(master.data, mnist_zips)
    token = create_project(master.url, "up", [train], [], spec=FC_SPEC, start=False)
    page.goto(f"{master.url}/#/signin/up/{token}?data=not-the-data-token")  # an old link
    page.wait_for_selector("#who.owner")
    assert "data write token was refused" in page.inner_text(".banner.error")
    assert not page.evaluate("localStorage.getItem('mlitb.dataToken')")

    code = httpx.post(
        f"{master.url}/api/projects/up/signin-codes",
        json={"data_token": master.data_token},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["code"]
    page.goto(signin_link(master.url, code))
    page.wait_for_function("document.querySelector('.banner.ok')?.innerText.includes('uploads allowed')")
    assert master.data_token not in page.url and page.url.endswith("#/p/up"), page.url
    assert page.evaluate("localStorage.getItem('mlitb.dataToken')") == master.data_token
    page.select_option("#zip-kind", "test")
    page.set_input_files("#zip-input", str(mnist_zips["test"]))
    page.click("#btn-upload")
    wait_for(
        lambda: any(
            d["role"] == "test" for d in httpx.get(f"{master.url}/api/projects/up").json()["datasets"]
        ),
        60,
        "the test set uploaded with the link's token",
        page,
    )


def test_a_view_superseded_while_loading_leaves_nothing_running(master, mnist_zips, page):
    """Open the home page and go to a project before the home page's first list arrives
    (what a loaded machine does): the home view, once it loads, must not render or keep
    its 2 s refresh (which cleared every banner of the view after it, a CI failure)."""
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "held", [train], [test], spec=FC_SPEC, start=False)
    held, lists, ticks = [], [], []
    page.route("**/api/projects", lambda route: route.continue_() if held else held.append(route))
    page.on("request", lambda r: (lists if r.url.endswith("/api/projects") else ticks).append(r.url))
    page.goto(master.url)
    deadline = 30
    while not held and deadline > 0:  # the home view asked for its list, which waits here
        page.wait_for_timeout(100)
        deadline -= 0.1
    assert held, "the home page never asked for the project list"
    page.goto(f"{master.url}/#/p/held")
    page.wait_for_selector("#summary")
    before = len(lists)
    held[0].continue_()  # the superseded home view loads now
    start = len(ticks)  # the project view asks for its details every second
    page.wait_for_function("document.getElementById('conn').textContent === 'live'")

    def four_ticks() -> bool:
        page.evaluate("0")  # lets Playwright deliver the request events
        return len([t for t in ticks[start:] if t.endswith("/api/projects/held")]) >= 4

    wait_for(four_ticks, 60, "four 1 s ticks of the project view (> 2 s)", page)
    assert len(lists) == before, lists  # no 2 s refresh of the list left behind
    assert page.locator("#projects").count() == 0  # nor its table


PAGES = [
    ("/#/", "[data-project]"),
    ("/#/p/a-project-with-a-rather-long-name", "#summary"),
    ("/#/new", "#create"),
    ("/#/zoo", "main h1"),
    ("/#/signin", "#signin-go"),
    ("/join/a-project-with-a-rather-long-name", "body"),
    ("/status", "body"),
    ("/docs", ".swagger-ui"),
]


def test_no_page_scrolls_sideways_on_a_phone(master, mnist_zips, phone):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "a-project-with-a-rather-long-name", [train], [test], spec=FC_SPEC)
    for path, ready in PAGES:
        phone.goto(master.url + path)
        phone.wait_for_selector(ready)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path}: the page is {width} px wide on a {PHONE['width']} px phone"
    assert not [line for line in phone.console_lines if line.startswith("pageerror")], phone.console_lines


def test_no_page_scrolls_sideways_on_a_laptop(master, mnist_zips, chromium):
    """1366 px, the laptop width where the zoo table was clipped."""
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "a-project-with-a-rather-long-name", [train], [test], spec=FC_SPEC)
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        for path, ready in PAGES:
            page.goto(master.url + path)
            page.wait_for_selector(ready)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 1366, f"{path}: the page is {width} px wide on a 1366 px screen"
    finally:
        context.close()


def test_the_volunteer_link_says_when_it_only_works_here(master, mnist_zips, page):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "lan", [train], [test], spec=FC_SPEC, start=False)
    page.goto(f"{master.url}/#/p/lan")
    page.wait_for_selector("#join-link")
    assert "HOST=0.0.0.0" in page.inner_text("#lan-hint")


def test_new_project_in_one_page_with_its_data_uploaded_there(master, mnist_zips, page):
    page.goto(f"{master.url}/#/new")
    page.wait_for_selector("#create[data-defaults=loaded]")  # the master's defaults are in the fields
    api = httpx.get(f"{master.url}/api").json()
    defaults = api["hyper_defaults"]  # what the CLI gets too
    fields = {"#l2-decay": "l2_decay", "#inner-learning-rate": "inner_learning_rate",
              "#algorithm": "algorithm"}  # fmt: skip
    for field, key in fields.items():
        shown = page.input_value(field)
        assert shown == defaults[key] or float(shown) == defaults[key], (field, shown, defaults[key])
    # the round length is left to the master, which picks it from the model's size: the
    # placeholder shows this model's for each algorithm (the paper's loop: 4 s; local_sgd:
    # 4 s for the paper's 6k-parameter net)
    assert page.input_value("#iteration-time") == ""
    page.wait_for_function("document.querySelector('#iteration-time').placeholder.startsWith('auto: 4 s')")
    page.select_option("#algorithm", "sync_sgd")
    sync_t = api["hyper_by_algorithm"]["sync_sgd"]["iteration_time"]
    assert page.get_attribute("#iteration-time", "placeholder") == f"auto: {sync_t:g} s for this model"
    page.select_option("#algorithm", defaults["algorithm"])
    assert page.input_value("#iteration-time") == ""
    # a language model's own inner lr (config.SEQUENCE_DEFAULTS) replaces the field's default,
    # and switching algorithm keeps it; back to the MNIST net, the image default returns
    page.select_option("#example", "charlm")
    page.wait_for_function("document.querySelector('#inner-learning-rate').value === '0.001'")
    page.select_option("#algorithm", "sync_sgd")
    page.select_option("#algorithm", defaults["algorithm"])
    assert page.input_value("#inner-learning-rate") == "0.001"
    page.select_option("#example", "")
    page.wait_for_function(
        f"Number(document.querySelector('#inner-learning-rate').value) === {defaults['inner_learning_rate']}"
    )
    page.wait_for_function("document.querySelector('#iteration-time').placeholder.startsWith('auto: 4 s')")
    # no data and no labels: the reason shows next to the button
    page.fill("#name", "onepage")
    page.click("#create")
    page.wait_for_function("document.querySelector('#create-message').innerText.includes('labels')")
    # quick edits: the preview ends on the last one (answers may arrive out of order)
    for filters in (3, 4, 5, 6):
        page.fill('.layer[data-index="1"] input[data-field="filters"]', str(filters))
        page.dispatch_event('.layer[data-index="1"] input[data-field="filters"]', "change")
    page.wait_for_function("document.querySelector('#spec-status').innerText.includes('parameters')")
    spec = page.evaluate("""() => Array.from(document.querySelectorAll('.layer')).length""")
    assert spec == 6
    # upload the training and test zips here, with the data write token
    page.fill("#new-data-token", master.data_token)
    page.set_input_files("#train-zip", str(mnist_zips["train"]))
    page.wait_for_function("document.querySelector('#train-upload-message').innerText.includes('items')")
    assert page.eval_on_selector("#train-dataset", "s => s.value") != ""
    assert "labels from dataset" in page.inner_text("#data-message")
    page.set_input_files("#test-zip", str(mnist_zips["test"]))
    page.wait_for_function("document.querySelector('#test-upload-message').innerText.includes('items')")
    page.click("#create")
    page.wait_for_url("**/#/p/onepage")
    s = httpx.get(f"{master.url}/api/projects/onepage").json()
    assert s["data_size"] == 300 and any(d["role"] == "test" for d in s["datasets"]), s
    assert s["labels"] == [str(i) for i in range(10)]
    conv = next(layer for layer in s["spec"] if layer["layer_type"] == "conv")
    assert conv["out_depth"] == 6, conv  # the last edit: 6 filters
    assert s["hyper"]["iteration_time"] == 4.0  # left empty: the master's, for this model's size


def test_an_imagefolder_zip_fills_both_sets_on_the_new_project_page(master, page, tmp_path, rng):
    """One zip with train/ and test/ folders (torchvision's ImageFolder layout), chosen as
    the training zip: both sets are made and picked, the project has both."""
    path = tmp_path / "pets.zip"
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", 6), ("test", 2)):
            for label in ("cat", "dog"):
                for i in range(n):
                    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                    z.writestr(f"pets/{split}/{label}/{i}.png", png_bytes(pixels))
    page.goto(f"{master.url}/#/new")
    page.wait_for_selector("#create")
    page.fill("#name", "pets")
    page.fill("#new-data-token", master.data_token)
    page.set_input_files("#train-zip", str(path))
    page.wait_for_function("document.querySelector('#train-upload-message').innerText.includes('test set')")
    assert page.eval_on_selector("#train-dataset", "s => s.value") != ""
    assert page.eval_on_selector("#test-dataset", "s => s.value") != ""
    assert "cat, dog" in page.inner_text("#data-message")
    assert "now has 2 outputs" in page.inner_text("#data-message")  # the classifier follows the labels
    page.wait_for_function("document.querySelector('#spec-status').innerText.includes('parameters')")
    page.click("#create")
    problem = "document.querySelector('#create-message')?.innerText || ''"
    wait_for(lambda: page.url.endswith("#/p/pets") or page.evaluate(problem), 60, "the project", page)
    assert page.url.endswith("#/p/pets"), page.evaluate(problem)
    s = httpx.get(f"{master.url}/api/projects/pets").json()
    assert sorted(d["role"] for d in s["datasets"]) == ["test", "train"] and s["data_size"] == 12, s
    assert s["labels"] == ["cat", "dog"]


def test_the_volunteer_page_shows_the_project_and_pauses_when_hidden(master, mnist_zips, phone):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "vol", [train], [test], spec=FC_SPEC, description="digits for a class room")
    phone.goto(f"{master.url}/join/vol")
    phone.wait_for_function("document.querySelector('#description').innerText.includes('class room')",
                            timeout=120_000)  # fmt: skip
    wait_for(lambda: "%" in phone.inner_text("#project-error") and "%" in phone.inner_text("#share"),
             90, "the project's test error and this device's share", phone)  # fmt: skip
    assert phone.get_attribute("#dashboard-link", "href").endswith("#/p/vol")
    hide = (
        "v => { Object.defineProperty(document, 'hidden', {value: v, configurable: true}); "
        "document.dispatchEvent(new Event('visibilitychange')); }"
    )
    phone.evaluate(hide, True)
    # generous deadlines: the CI machine may be loaded (the tab's worker answers a message only
    # between batches)
    phone.wait_for_function("document.querySelector('#state').innerText.includes('hidden')", timeout=120_000)
    wait_for(lambda: not [c for c in httpx.get(f"{master.url}/api/projects/vol").json()["clients"]
                          if c["kind"] == "browser"], 120, "the hidden tab to leave", phone)  # fmt: skip
    phone.evaluate(hide, False)
    wait_for(lambda: [c for c in httpx.get(f"{master.url}/api/projects/vol").json()["clients"]
                      if c["kind"] == "browser"], 120, "the tab to join again", phone)  # fmt: skip


def test_the_volunteer_page_computes_only_while_charging_when_asked(master, mnist_zips, phone):
    """The paper's courtesy to phones: with "only while charging" on, a tab on battery
    leaves the project and joins again when the charger is plugged in (a stubbed Battery
    Status API: Chromium has one, headless reports no battery)."""
    phone.add_init_script("""
        window.fakeBattery = Object.assign(new EventTarget(), { charging: false, level: 0.5 });
        navigator.getBattery = () => Promise.resolve(window.fakeBattery);
    """)
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "battery", [train], [test], spec=FC_SPEC)

    def tabs() -> list:
        return [
            c
            for c in httpx.get(f"{master.url}/api/projects/battery").json()["clients"]
            if c["kind"] == "browser"
        ]

    phone.goto(f"{master.url}/join/battery")
    phone.wait_for_selector("#charging-option:not([hidden])")
    wait_for(tabs, 60, "the tab to join", phone)
    phone.check("#only-charging")
    phone.wait_for_function("document.querySelector('#state').innerText.includes('charger')")
    wait_for(lambda: not tabs(), 30, "the tab on battery to leave", phone)
    phone.evaluate(
        "() => { fakeBattery.charging = true; fakeBattery.dispatchEvent(new Event('chargingchange')); }"
    )
    wait_for(tabs, 60, "the tab to join again once charging", phone)


def test_error_and_loss_charts_switch_to_a_log_scale(master, mnist_zips, page):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "logs", [train], [test], spec=FC_SPEC)
    with ThreadWorker(master.url, "logs", "trainer"):
        wait_for(
            lambda: httpx.get(f"{master.url}/api/projects/logs").json()["iteration"] >= 3, 60, "3 iterations"
        )
        page.goto(f"{master.url}/#/p/logs")
        loss = '.chart[data-title="train loss"]'
        page.wait_for_function(f"document.querySelector('{loss}')?.uplot !== undefined")
        assert page.evaluate(f"document.querySelector('{loss}').uplot.scales.y.distr") == 1
        page.locator(".chart-wrap", has=page.locator(loss)).locator("input.log-scale").check()
        page.wait_for_function(f"document.querySelector('{loss}')?.uplot?.scales.y.distr === 3")
        assert (
            page.locator('.chart[data-title="power"] ~ label input.log-scale').count() == 0
        )  # power: linear only


def test_api_docs_and_favicon_work_offline(master, page):
    """/docs is Swagger UI from the vendored package: no request leaves the master."""
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(master.url) else None)
    page.goto(f"{master.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30000)
    assert not [u for u in outside if not u.startswith("data:")], outside
    assert httpx.get(f"{master.url}/favicon.ico").headers["content-type"].startswith("image/svg")
