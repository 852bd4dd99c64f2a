"""Fixtures for the console's browser tests: one real gateway and one headless Chromium per module.

The browser is Debian's Chromium (``/usr/bin/chromium``, installed by ``make
test`` when missing), driven by Playwright for Python; Playwright never
downloads a browser of its own here. Screenshots of every page, at 1280 px
and at a 390 px phone width, go to ``test-artifacts/ui/`` (not committed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.live_gateway import Server, start_server

CHROMIUM = os.environ.get("MODELYARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
WIDE = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Server:
    """`modelyard up` with the default endpoints; Hub downloads fail at once (offline), as they must here."""
    srv = start_server(tmp_path_factory.mktemp("console") / "home",
                       extra_env={"HF_HUB_OFFLINE": "1", "MODELYARD_USAGE_FLUSH_S": "0.2"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Console:
    """A signed-in browser session on the gateway, with the console's problems collected.

    ``page`` is 1280 px wide; `shoot()` saves a screenshot of the current page
    and of the same URL on a 390 px phone (a second context sharing the cookie).
    """

    def __init__(self, browser, gateway: Server) -> None:
        self.browser = browser
        self.gateway = gateway
        self.problems: list[str] = []
        self.context = browser.new_context(viewport=WIDE, permissions=["clipboard-read", "clipboard-write"])
        self.context.set_default_timeout(30_000)
        self.page = self.watch(self.context.new_page())
        self._phone = None

    def watch(self, page):
        """Collect script errors and Content-Security-Policy violations (HTTP 4xx answers are expected)."""
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: self.problems.append(f"console: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text else None)
        return page

    def url(self, path: str) -> str:
        return self.gateway.url + path

    def sign_in(self, key: str | None = None) -> None:
        self.page.goto(self.url("/ui/login"))
        self.page.fill("#key", key or self.gateway.admin_key)
        self.page.click("#login-form button[type=submit]")

    def shoot(self, name: str, *, phone_setup=None) -> None:
        """Screenshots of this page at 1280 px (full page) and at 390 px (the same URL, after ``phone_setup``)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-1280.png"), full_page=True)
        if self._phone is None:
            phone = self.browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True,
                                             storage_state=self.context.storage_state())
            phone.set_default_timeout(30_000)
            self._phone = self.watch(phone.new_page())
        self._phone.goto(self.page.url)
        self._phone.wait_for_load_state("networkidle")
        if phone_setup is not None:
            phone_setup(self._phone)
        self._phone.screenshot(path=str(ARTIFACTS / f"{name}-390.png"), full_page=True)
        width = self._phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{name}: the page is {width}px wide on a {PHONE['width']}px phone"

    @property
    def phone(self):
        """The 390 px page `shoot()` uses (None before the first screenshot)."""
        return self._phone

    def close(self) -> None:
        if self._phone is not None:
            self._phone.context.close()
        self.context.close()


@pytest.fixture(scope="module")
def console(browser, gateway):
    """A signed-in console session for the whole module."""
    session = Console(browser, gateway)
    session.sign_in()
    session.page.wait_for_url("**/ui/catalog")
    yield session
    session.close()


@pytest.fixture
def new_console(browser, gateway):
    """Make more browser sessions for one test (not signed in); they are closed after it."""
    made: list[Console] = []

    def make() -> Console:
        made.append(Console(browser, gateway))
        return made[-1]

    yield make
    for session in made:
        session.close()


@pytest.fixture
def artifacts() -> Path:
    """The folder for screenshots (``test-artifacts/ui``, not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(autouse=True)
def no_script_errors(request):
    """Every test that used the console ends without script errors or CSP violations in the browser."""
    yield
    if "console" in request.fixturenames:
        session = request.getfixturevalue("console")
        problems, session.problems[:] = list(session.problems), []
        assert not problems, problems
