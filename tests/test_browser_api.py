"""The HTTP API from a real browser (headless Chromium): the documentation pages with no internet, and a shop's
page on another origin calling the API with its key, which CORS allows for the shop's origin only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from imgsearch import Catalogue
from tests.browser import MISSING, chromium
from tests.samples import SampleCatalogue
from tests.test_service import Service

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 60

#: The shop's own page: it searches the API by a vector with the key it is given and writes down what it got.
SHOP_PAGE = """<!doctype html>
<html><body><pre id="out">waiting</pre>
<script>
async function search(api, key) {
  const headers = {"Content-Type": "application/json"};
  if (key) headers["Authorization"] = "Bearer " + key;
  try {
    const response = await fetch(api + "/v1/search", {
      method: "POST", headers, body: JSON.stringify({vector: Array(512).fill(0.1), k: 3}),
    });
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {status: 0, error: String(error)};  // what a page sees when CORS withholds the answer
  }
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def catalogue_url(make_database: Callable[..., str], sample_catalogue: SampleCatalogue) -> str:
    return make_database(template=sample_catalogue.template)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The shop's page server says nothing."""


@pytest.fixture(scope="module")
def shop_origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two web servers on loopback serving the shop's page: the shop's origin and another one (another port is
    another origin)."""
    site = tmp_path_factory.mktemp("shop-site")
    (site / "shop.html").write_text(SHOP_PAGE)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site))) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _search_from(browser: Any, origin: str, api: str, key: str | None) -> dict[str, Any]:
    browser.get(f"{origin}/shop.html")
    script = "const done = arguments[arguments.length - 1]; search(arguments[0], arguments[1]).then(done);"
    return browser.execute_async_script(script, api, key)


def test_the_shops_page_on_its_own_origin_calls_the_api_with_its_key(
    browser: Any, catalogue_url: str, fake_weights: str, shop_origins: tuple[str, str]
) -> None:
    shop, other = shop_origins
    running = Service(catalogue_url, fake_weights, "--cors-origin", shop)
    catalogue = Catalogue(catalogue_url)
    try:
        _, key = catalogue.create_key("shop-website", "search")
        browser.set_script_timeout(WAIT)
        answered = _search_from(browser, shop, running.base, key)
        assert answered["status"] == 200, answered
        assert len(answered["body"]) == 3 and {"sku", "distance"} <= set(answered["body"][0])
        # Without the key the page is told why (the refusal carries the CORS header too, so the page can read it).
        refused = _search_from(browser, shop, running.base, None)
        assert refused["status"] == 401 and "API key" in refused["body"]["error"], refused
        # Another origin, even with the key, gets nothing: the browser withholds the answer.
        withheld = _search_from(browser, other, running.base, key)
        assert withheld["status"] == 0 and "Failed to fetch" in withheld["error"], withheld
    finally:
        catalogue.close()
        log = running.close()
    # The service saw the shop's two searches and the other origin's preflight, which it refused.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    searches = [line for line in lines if line.get("path") == "/v1/search"]
    assert [line["status"] for line in searches if line.get("method") == "POST"] == [200, 401]
    assert [line["status"] for line in searches if line.get("method") == "OPTIONS"][-1] == 400


def settled(browser: Any, quiet: float = 1.0) -> None:
    """Wait until the page has loaded and then neither requested nor been refused anything for ``quiet`` seconds."""
    probe = (
        "return [document.readyState, performance.getEntriesByType('resource').length,"
        " (window.refusedByPolicy || []).length]"
    )
    deadline, last, since = time.monotonic() + WAIT, None, time.monotonic()
    while time.monotonic() < deadline:
        state = browser.execute_script(probe)
        if state != last:
            last, since = state, time.monotonic()
        elif state[0] == "complete" and time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError(f"the page did not settle in {WAIT} s: {last}")


def test_the_api_documentation_renders_without_internet(browser: Any, catalogue_url: str, fake_weights: str) -> None:
    running = Service(catalogue_url, fake_weights)
    try:
        operations = sum(len(ops) for ops in running.client.get("/openapi.json").json()["paths"].values())
        browser.get(f"{running.base}/docs")
        shown = WebDriverWait(browser, WAIT).until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations
                and len(d.find_elements(By.CSS_SELECTOR, ".opblock"))
            )
        )
        assert shown == operations
        paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/search", "/v1/products/{sku}/similar", "/readyz"} <= paths, paths
        browser.get(f"{running.base}/redoc")
        WebDriverWait(browser, WAIT).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-section-id='operation/search']")
        )
        # Nothing is loaded from anywhere but the service, even once the page has settled (ReDoc's footer logo
        # would come from its maker's site: the pages' Content-Security-Policy refuses it before any request).
        record = (
            "window.refusedByPolicy = [];"
            "document.addEventListener('securitypolicyviolation', e => window.refusedByPolicy.push(e.blockedURI));"
        )
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": record})
        for page in ("/docs", "/redoc"):
            assert "img-src 'self' data:" in running.client.get(page).headers["content-security-policy"]
            browser.get(f"{running.base}{page}")
            settled(browser)
            loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            refused = browser.execute_script("return window.refusedByPolicy")
            elsewhere = [name for name in loaded if not name.startswith(running.base)]
            assert loaded and set(elsewhere) <= set(refused), (loaded, refused)
    finally:
        running.close()


def test_the_page_searches_with_a_key_typed_in_it(
    browser: Any, catalogue_url: str, fake_weights: str, sample_catalogue: SampleCatalogue
) -> None:
    running = Service(catalogue_url, fake_weights, "--image-root", str(sample_catalogue.shop))
    catalogue = Catalogue(catalogue_url)
    try:
        _, key = catalogue.create_key("page", "search")
        browser.get(f"{running.base}/")
        # Keys are in use: the page asks for one (its categories were refused).
        panel = browser.find_element(By.ID, "key-panel")
        WebDriverWait(browser, WAIT).until(lambda _: panel.get_attribute("open") is not None)
        field = browser.find_element(By.ID, "api-key")
        field.send_keys(key)
        field.send_keys("\t")  # leaving the field applies it
        options = lambda d: len(d.find_elements(By.CSS_SELECTOR, "#category option"))  # noqa: E731
        WebDriverWait(browser, WAIT).until(lambda d: options(d) > 1)
        photo = sample_catalogue.shop / "catalogue" / "shoes" / "24535295-abe3-4613-91f6-a7fe87954662.jpg"
        browser.find_element(By.ID, "file").send_keys(str(photo))
        results = browser.find_element(By.ID, "results")
        WebDriverWait(browser, WAIT).until(lambda _: results.get_attribute("data-state") in ("done", "error"))
        assert results.get_attribute("data-state") == "done", browser.find_element(By.ID, "message").text
        # The tiles' photos came with the key too (fetched, shown from memory), and they are real pictures.
        WebDriverWait(browser, WAIT).until(
            lambda d: all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 1", img)
                for img in d.find_elements(By.CSS_SELECTOR, "#results img")
            )
        )
        sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#results img")]
        assert sources and all(src.startswith("blob:") for src in sources), sources
        # The key stays in this tab only: not in the address, not in a cookie, not in lasting storage.
        assert key not in browser.current_url and not browser.get_cookies()
        assert browser.execute_script("return window.localStorage.length") == 0
        assert browser.execute_script("return sessionStorage.getItem('imgsearch.key')") == key
    finally:
        catalogue.close()
        running.close()
