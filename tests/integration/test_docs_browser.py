"""/docs and /redoc in a real browser (Debian's chromium) that cannot reach past FileWallBall.

The page is opened as http://fwb.test:<port> (mapped to the loopback server), as a deployment
is, not as 127.0.0.1: Swagger UI treats loopback addresses apart (its online validator).
Every request to another origin is aborted and recorded; a proxy to a closed port catches any
the router would miss. The test asserts none was attempted and the policy refused nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

from tests.conftest import unavailable
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_server import Server, start_server

CHROMIUM = Path("/usr/bin/chromium")
HOST = "fwb.test"
TIMEOUT_MS = 10_000
# ReDoc's side menu always draws Redocly's logo from their CDN (hidden when it fails to load):
# the policy refuses it before any request is made. Nothing else may be refused.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
_REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`csp-violation ${e.effectiveDirective} ${e.blockedURI}`));
"""


@dataclass
class Watch:
    """What a page tried behind our back: requests to elsewhere, errors in its console."""

    origin: str
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(_REPORT_VIOLATIONS)
        page.route("**/*", self._only_ours)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror {error}"))

    def _only_ours(self, route: Route) -> None:
        if route.request.url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort("addressunreachable")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def unexpected_errors(self, *, allowed: tuple[str, ...] = ()) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    started = start_server(
        tmp_path_factory.mktemp("docs"), env={"FWB_PUBLIC_DOCS": "true"}, log_name="docs.log"
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser(docs_server: Server) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[f"--host-resolver-rules=MAP {HOST} 127.0.0.1"],
            proxy={"server": "http://127.0.0.1:9", "bypass": HOST},
        )
        yield launched
        launched.close()


def _open(browser: Browser, server: Server, path: str) -> tuple[Page, Watch]:
    page = browser.new_context().new_page()
    watch = Watch(f"http://{HOST}:{server.port}")
    watch.attach(page)
    response = page.goto(watch.origin + path)
    assert response is not None
    assert response.status == 200
    return page, watch


def test_swagger_ui_authorizes_and_runs_an_operation(browser: Browser, docs_server: Server) -> None:
    page, watch = _open(browser, docs_server, "/docs")
    page.locator(".opblock-summary-path[data-path='/upload']").first.wait_for()
    authorize = page.locator(".scheme-container button.authorize")
    authorize.click()
    page.locator(".auth-container input").fill(ADMIN_KEY)
    page.locator(".auth-btn-wrapper button.authorize").click()
    page.locator(".auth-btn-wrapper button.btn-done").click()

    listing = page.locator(".opblock-get").filter(
        has=page.locator(".opblock-summary-path[data-path='/files']")
    )
    listing.locator(".opblock-summary").click()
    listing.locator("button.try-out__btn").click()
    with page.expect_request(re.compile(r"/files(\?|$)")) as sent:
        listing.locator("button.execute").click()
    assert sent.value.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    status = listing.locator(".live-responses-table tr.response .response-col_status")
    assert status.inner_text().strip() == "200"
    # persistAuthorization: the key outlives a reload.
    assert "bearerAuth" in (page.evaluate("localStorage.getItem('authorized')") or "")

    assert watch.outside == []
    assert watch.unexpected_errors() == []


def test_redoc_renders_without_leaving_the_server(browser: Browser, docs_server: Server) -> None:
    page, watch = _open(browser, docs_server, "/redoc")
    page.locator("h1", has_text="FileWallBall").wait_for()
    page.locator("[data-section-id*='operation/']").first.wait_for()
    assert page.get_by_text("/upload", exact=True).count() > 0

    assert watch.outside == []
    assert watch.unexpected_errors(allowed=(REDOCLY_LOGO,)) == []
