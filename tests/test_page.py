"""The service's web page in a real browser (headless Chromium through chromedriver) against the real service on
a real catalogue: upload a photo, draw a box on it, read the tiles and their exact-match badges, filter, browse
similar and cheaper products, see errors.

Needs Debian's ``chromium`` and ``chromium-driver`` (skipped without them) and the ``selenium`` package (dev extra).
Also writes the page's picture for the README: docs/images/service-page.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from imgsearch.cli import main
from tests.browser import MISSING, chromium

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PHOTO = EXAMPLES / "catalogue" / "shoes" / "24535295-abe3-4613-91f6-a7fe87954662.jpg"
PHOTO_SKU = "shoes-24535295"
# Another product, of another category, whose photo has the same size (400x533) as PHOTO: the two side by side.
OTHER = EXAMPLES / "catalogue" / "dress" / "07cddef1-1fc8-47e4-a28a-613e60912590.jpg"
OTHER_SKU = "dress-07cddef1"
SCREENSHOT = REPO / "docs" / "images" / "service-page.png"
WAIT = 30  # seconds for one search to show (a photo search is one forward pass of VGG16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post_photo(url: str, data: bytes, filename: str, fields: list[tuple[str, str]]) -> tuple[int, Any]:
    """POST a multipart form with the photo in ``image``: (status, JSON body), errors included."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- fixtures: a real catalogue, the real service, a real browser ---------------------------------------------


@pytest.fixture(scope="module")
def catalogue_url(make_database: Callable[..., str], migrated_template: str, weights_path: str) -> str:
    url = make_database(template=migrated_template)
    result = CliRunner().invoke(
        main,
        ["--database-url", url, "--weights", weights_path, "ingest", "--quiet", "--manifest", "examples/products.csv"],
    )
    assert result.exit_code == 0, result.output
    return url


@pytest.fixture(scope="module")
def base_url(catalogue_url: str, weights_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``imgsearch serve`` in a subprocess on a free port, once it says it is healthy."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "imgsearch", "--database-url", catalogue_url, "--weights", weights_path]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port), "--image-root", str(EXAMPLES)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "IMGSEARCH_PRECISION": "float32"},
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the service stopped:\n{log.read_text(errors='replace')}"
            try:
                if _get(f"{base}/healthz").get("status") == "ok":
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, f"the service was not healthy in 120 s:\n{log.read_text()}"
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


# --- helpers ---------------------------------------------------------------------------------------------------


def _request_number(driver: webdriver.Chrome) -> int:
    return int(driver.find_element(By.ID, "results").get_attribute("data-request") or 0)


def _settled(driver: webdriver.Chrome, before: int) -> str:
    """Waits until the search started after request number ``before`` has been answered; its state."""

    def done(d: webdriver.Chrome) -> str | bool:
        results = d.find_element(By.ID, "results")
        state = results.get_attribute("data-state")
        return int(results.get_attribute("data-request") or 0) > before and state != "loading" and state

    return WebDriverWait(driver, WAIT).until(done)


def _act(driver: webdriver.Chrome, action: Callable[[], object]) -> str:
    """Does something that starts a search and waits for its answer."""
    before = _request_number(driver)
    action()
    return _settled(driver, before)


def _open(driver: webdriver.Chrome, base: str) -> None:
    driver.get(base + "/")
    # The categories arrive after the page: wait for them, so that choosing one never races their arrival.
    WebDriverWait(driver, WAIT).until(lambda d: len(Select(d.find_element(By.ID, "category")).options) > 1)


def _upload(driver: webdriver.Chrome, path: Path) -> str:
    return _act(driver, lambda: driver.find_element(By.ID, "file").send_keys(str(path)))


def _tiles(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#results .result")


def _tile_data(driver: webdriver.Chrome) -> list[dict[str, str]]:
    """What every tile shows, read in one round trip."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll('#results .result')).map(t => ({
            sku: t.dataset.sku,
            name: t.querySelector('.name').textContent,
            skuText: t.querySelector('.sku').textContent,
            price: t.querySelector('.price').textContent,
            stock: t.querySelector('.stock').textContent,
            distance: (t.querySelector('.distance') || {}).textContent || '',
            alt: t.querySelector('img').alt,
            src: t.querySelector('img').getAttribute('src'),
            tag: t.tagName,
        }));"""
    )


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def _price(text: str) -> float:
    assert re.fullmatch(r"\d+\.\d\d", text), text
    return float(text)


def _expected(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the tiles should show for the API's rows."""
    return [
        {
            "sku": r["sku"],
            "name": r["name"] or r["sku"],
            "price": "no price" if r["price"] is None else f"{r['price']:.2f}",
            "stock": "in stock" if r["in_stock"] else "sold out",
            "distance": f"{abs(r['distance']):.4f}",
        }
        for r in rows
    ]


def _shown(tiles: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: t[key] for key in ("sku", "name", "price", "stock", "distance")} for t in tiles]


def _record_crops(driver: webdriver.Chrome) -> None:
    """From now on, ``window.sentCrops`` lists the ``crop`` field of every photo search the page sends (null for
    none)."""
    driver.execute_script(
        """window.sentCrops = [];
        const send = window.fetch;
        window.fetch = function (url, init) {
            if (init && init.body instanceof FormData) window.sentCrops.push(init.body.get('crop'));
            return send.apply(this, arguments);
        };"""
    )


def _sent_crops(driver: webdriver.Chrome) -> list[str | None]:
    return driver.execute_script("return window.sentCrops;")


def _preview_rect(driver: webdriver.Chrome) -> dict[str, float]:
    """The shown photo's place on the page and its own size, once it has loaded."""
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script("return document.getElementById('preview').naturalWidth > 0;")
    )
    return driver.execute_script(
        """const p = document.getElementById('preview'), r = p.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                naturalWidth: p.naturalWidth, naturalHeight: p.naturalHeight};"""
    )


def _drag(
    driver: webdriver.Chrome, start: tuple[float, float], end: tuple[float, float], *, touch: bool = False
) -> list[float]:
    """Drags the mouse (or a finger) across the shown photo from ``start`` to ``end`` (fractions of its shown width
    and height); the box the drag covers in the photo's own pixels (left, top, right, bottom), to within a shown
    pixel."""
    rect = _preview_rect(driver)
    preview = driver.find_element(By.ID, "preview")
    # Selenium's offsets count from the element's centre, in whole CSS pixels.
    x0, y0 = round((start[0] - 0.5) * rect["width"]), round((start[1] - 0.5) * rect["height"])
    x1, y1 = round((end[0] - 0.5) * rect["width"]), round((end[1] - 0.5) * rect["height"])
    # (One input source name per kind: the browser keeps each name's kind for the whole session.)
    pointer = PointerInput(*((interaction.POINTER_TOUCH, "finger") if touch else (interaction.POINTER_MOUSE, "mouse")))
    actions = ActionBuilder(driver, mouse=pointer)
    actions.pointer_action.move_to(preview, x0, y0).pointer_down()
    for step in (1, 2, 3):  # a drag in steps, as a hand does
        actions.pointer_action.move_to(preview, x0 + (x1 - x0) * step // 3, y0 + (y1 - y0) * step // 3)
    actions.pointer_action.pointer_up()
    actions.perform()
    sx, sy = rect["naturalWidth"] / rect["width"], rect["naturalHeight"] / rect["height"]
    return [
        (min(start[0], end[0]) * rect["width"]) * sx,
        (min(start[1], end[1]) * rect["height"]) * sy,
        (max(start[0], end[0]) * rect["width"]) * sx,
        (max(start[1], end[1]) * rect["height"]) * sy,
    ]


def _crop_numbers(crop: str | None) -> list[int]:
    assert crop is not None and re.fullmatch(r"\d+,\d+,\d+,\d+", crop), crop
    return [int(v) for v in crop.split(",")]


def _side_by_side(directory: Path) -> Path:
    """A photo of PHOTO's product (left) beside OTHER's (right), 800x533."""
    from PIL import Image

    with Image.open(PHOTO) as left, Image.open(OTHER) as right:
        assert left.size == right.size == (400, 533)
        both = Image.new("RGB", (800, 533), "white")
        both.paste(left.convert("RGB"), (0, 0))
        both.paste(right.convert("RGB"), (400, 0))
    path = directory / "two-products.jpg"
    both.save(path, quality=92)
    return path


# --- tests -----------------------------------------------------------------------------------------------------


def test_photo_search_shows_the_apis_results_as_tiles(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"
    assert _text(browser, "status").lower() == f"results for photo {PHOTO.name}"
    assert browser.find_element(By.ID, "preview").is_displayed()
    assert not browser.find_element(By.ID, "message").is_displayed()

    tiles = _tile_data(browser)
    assert len(tiles) == 8
    assert tiles[0]["sku"] == PHOTO_SKU and tiles[0]["distance"] == "0.0000"
    for tile in tiles:
        assert tile["tag"] == "BUTTON"  # keyboard usable
        assert tile["skuText"] == tile["sku"]
        _price(tile["price"])
        assert tile["stock"] in ("in stock", "sold out")
        assert re.fullmatch(r"\d\.\d{4}", tile["distance"])
        assert tile["alt"] and tile["src"].startswith("/photos?ref=")

    # Exactly what the API answers for the same request (the page's defaults: k 8, in stock only).
    status, rows = _post_photo(f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, [("k", "8")])
    assert status == 200
    assert _shown(tiles) == _expected(rows)

    # Every thumbnail is the catalogue photo, served by /photos, and loaded.
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script(
            "const imgs = Array.from(document.querySelectorAll('#results .result img'));"
            "return imgs.length === 8 && imgs.every(i => i.complete && i.naturalWidth > 0"
            " && new URL(i.src).pathname === '/photos');"
        )
    )

    # The picture for the README: the page at 1280x900 with results, reduced to a 256-colour palette.
    from PIL import Image

    browser.execute_script("document.activeElement && document.activeElement.blur()")
    shot = Path(tempfile.mkdtemp(prefix="imgsearch-shot-")) / "page.png"
    try:
        assert browser.save_screenshot(str(shot))
        with Image.open(shot) as image:
            assert image.size == (1280, 900)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(SCREENSHOT, optimize=True)
    finally:
        shutil.rmtree(shot.parent, ignore_errors=True)


def test_filters_rerun_the_search(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"

    assert _act(browser, lambda: Select(browser.find_element(By.ID, "category")).select_by_value("shoes")) == "done"
    status, shoes = _post_photo(
        f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, [("k", "8"), ("category", "shoes")]
    )
    assert status == 200 and {r["category"] for r in shoes} == {"shoes"}
    assert _shown(_tile_data(browser)) == _expected(shoes)

    # Sold-out products included and a price ceiling: again exactly the API's answer, sold-out ones marked.
    assert _act(browser, lambda: browser.find_element(By.ID, "include-sold-out").click()) == "done"
    price = browser.find_element(By.ID, "max-price")
    assert _act(browser, lambda: (price.send_keys("20"), price.send_keys("\n"))) == "done"
    fields = [("k", "8"), ("category", "shoes"), ("in_stock_only", "false"), ("max_price", "20")]
    status, cheap = _post_photo(f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, fields)
    assert status == 200 and cheap and any(not r["in_stock"] for r in cheap)
    tiles = _tile_data(browser)
    assert _shown(tiles) == _expected(cheap)
    assert all(_price(t["price"]) <= 20 for t in tiles)
    sold_out = browser.find_elements(By.CSS_SELECTOR, "#results .result.sold-out .stock")
    assert sold_out and all(s.text.lower() == "sold out" and s.is_displayed() for s in sold_out)

    # Nothing matches: a message says so, and no tiles remain.
    assert _act(browser, lambda: (price.clear(), price.send_keys("0.5\n"))) == "empty"
    assert not _tiles(browser)
    assert _text(browser, "message").lower().rstrip(".") == "no products match the filters"


def test_a_click_shows_similar_then_cheaper_products(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"
    first = _tiles(browser)[0]
    assert first.get_attribute("data-sku") == PHOTO_SKU
    clicked_price = _price(first.find_element(By.CLASS_NAME, "price").text)

    # Cheaper off: a click (here with the keyboard) shows products like it, with the page's filters.
    assert _act(browser, lambda: first.send_keys("\n")) == "done"
    assert _text(browser, "status").lower() == f"similar to {PHOTO_SKU}"
    similar = _get(f"{base_url}/products/{PHOTO_SKU}/similar?k=8&in_stock_only=true")
    assert _shown(_tile_data(browser)) == _expected(similar)
    assert browser.switch_to.active_element.get_attribute("id") == "status"  # focus follows the new results

    # Cheaper on: the current product's cheaper alternatives, all below its price.
    assert _act(browser, lambda: browser.find_element(By.ID, "cheaper").click()) == "done"
    assert _text(browser, "status").lower() == f"cheaper than {PHOTO_SKU}"
    tiles = _tile_data(browser)
    assert tiles and all(_price(t["price"]) < clicked_price for t in tiles)
    assert all(t["stock"] == "in stock" for t in tiles)
    assert _shown(tiles) == _expected(_get(f"{base_url}/products/{PHOTO_SKU}/cheaper?k=8"))

    # Clicking a result while cheaper is on: cheaper than that one.
    target = _tiles(browser)[0]
    sku = target.get_attribute("data-sku")
    target_price = _price(target.find_element(By.CLASS_NAME, "price").text)
    state = _act(browser, target.click)
    assert _text(browser, "status").lower() == f"cheaper than {sku}".lower()
    prices = [_price(t["price"]) for t in _tile_data(browser)]
    assert all(p < target_price for p in prices)
    assert state == ("done" if prices else "empty")
    cheaper = _get(f"{base_url}/products/{urllib.parse.quote(sku, safe='')}/cheaper?k=8")
    assert _shown(_tile_data(browser)) == _expected(cheaper)


def test_more_results_adds_the_next_page_of_the_same_search(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"
    more = browser.find_element(By.ID, "more")
    assert more.is_displayed() and more.text == "More results"
    first = _tile_data(browser)
    more.click()
    WebDriverWait(browser, WAIT).until(lambda d: len(_tiles(d)) == 16)
    # The next 8 of the API's own ranking for the same photo, after the first page's (nothing shown twice).
    status, rows = _post_photo(f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, [("k", "16")])
    assert status == 200
    tiles = _tile_data(browser)
    assert _shown(tiles[:8]) == _shown(first) and _shown(tiles) == _expected(rows)
    # The same for the products like one of them; a new search starts again from its first page.
    assert _act(browser, lambda: _tiles(browser)[0].click()) == "done"
    assert len(_tiles(browser)) == 8 and browser.find_element(By.ID, "more").is_displayed()
    browser.find_element(By.ID, "more").click()
    WebDriverWait(browser, WAIT).until(lambda d: len(_tiles(d)) == 16)
    similar = _get(f"{base_url}/products/{PHOTO_SKU}/similar?k=16&in_stock_only=true")
    assert _shown(_tile_data(browser)) == _expected(similar)
    # Cheaper keeps a price ceiling on the page itself: no next page to ask for there.
    assert _act(browser, lambda: browser.find_element(By.ID, "cheaper").click()) == "done"
    assert not browser.find_element(By.ID, "more").is_displayed()


def test_words_search_alone_and_rank_with_the_photo(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    browser.find_element(By.ID, "words-input").send_keys("dress")
    assert _act(browser, lambda: browser.find_element(By.ID, "words-search").click()) == "done"
    request = urllib.request.Request(
        f"{base_url}/v1/search",
        data=json.dumps({"text": "dress", "k": 8, "in_stock_only": True}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        alone = json.loads(response.read())
    tiles = _tile_data(browser)
    assert alone and {r["category"] for r in alone} == {"dress"}
    assert [t["sku"] for t in tiles] == [r["sku"] for r in alone] and all(t["distance"] == "" for t in tiles)
    assert "Results for the words dress" in _text(browser, "status")
    # A photo with the words: the API's fused ranking of the same photo and words.
    assert _upload(browser, PHOTO) == "done"
    fields = [("k", "8"), ("text", "dress")]
    status, fused = _post_photo(f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, fields)
    assert status == 200 and _shown(_tile_data(browser)) == _expected(fused)


def test_the_apis_error_line_is_shown(browser: webdriver.Chrome, base_url: str, tmp_path: Path) -> None:
    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"
    fake = tmp_path / "not-a-photo.jpg"
    fake.write_text("this is text, not a JPEG\n")
    assert _upload(browser, fake) == "error"
    status, body = _post_photo(f"{base_url}/search", fake.read_bytes(), fake.name, [("k", "8")])
    assert status == 400 and set(body) == {"error"}
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and message.text == body["error"]
    assert not _tiles(browser)  # the previous photo's results are gone: they would answer another question


def test_a_photo_dropped_on_the_drop_zone_is_searched(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    drop = """
        const [ref, name] = arguments;
        fetch('/photos?ref=' + encodeURIComponent(ref)).then(r => r.blob()).then(blob => {
            const data = new DataTransfer();
            data.items.add(new File([blob], name, {type: 'image/jpeg'}));
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        });"""
    assert _act(browser, lambda: browser.execute_script(drop, str(PHOTO), "dropped.jpg")) == "done"
    assert _text(browser, "status").lower() == "results for photo dropped.jpg"
    assert _tiles(browser)[0].get_attribute("data-sku") == PHOTO_SKU
    assert "over" not in (browser.find_element(By.ID, "drop").get_attribute("class") or "")


def test_the_page_is_labelled(browser: webdriver.Chrome, base_url: str) -> None:
    _open(browser, base_url)
    for element_id in ("file", "category", "max-price", "include-sold-out", "cheaper"):
        labels = browser.find_elements(By.CSS_SELECTOR, f"label[for='{element_id}']")
        assert labels and labels[0].text.strip(), element_id
    assert browser.find_element(By.CSS_SELECTOR, "label[for='file']").get_attribute("id") == "drop"
    assert Select(browser.find_element(By.ID, "category")).first_selected_option.text == "all categories"
    assert "shoes" in [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "category")).options]
    assert not browser.find_element(By.ID, "include-sold-out").is_selected()
    assert not browser.find_element(By.ID, "cheaper").is_selected()
    WebDriverWait(browser, WAIT).until(lambda d: _text(d, "health") == "service ok")
    # The keyboard reaches the file input first (its label, the drop zone, shows the focus).
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "file"
    # Nothing from elsewhere: every script, style sheet and image of the page comes from the service.
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').every(e => new URL(e.name).origin === location.origin);"
    )


def test_a_box_drawn_on_the_photo_searches_only_that_part(
    browser: webdriver.Chrome, base_url: str, tmp_path: Path
) -> None:
    photo = _side_by_side(tmp_path)
    _open(browser, base_url)
    assert _upload(browser, photo) == "done"
    _record_crops(browser)
    whole = browser.find_element(By.ID, "whole-photo")
    assert whole.is_displayed() and whole.get_attribute("aria-disabled") == "true"
    assert not browser.find_element(By.ID, "crop-box").is_displayed()

    # A box around the left half: the crop sent is that box in the photo's pixels, the service takes it, and the
    # left product comes first (the page shows exactly the service's answer for that crop).
    before = _request_number(browser)
    drawn = _drag(browser, (0.03, 0.04), (0.47, 0.96))
    assert _settled(browser, before) == "done"
    sent = _sent_crops(browser)
    assert len(sent) == 1
    crop = _crop_numbers(sent[0])
    rect = _preview_rect(browser)
    tolerance = 1.5 * rect["naturalWidth"] / rect["width"] + 1  # a shown pixel, in the photo's pixels
    assert all(abs(got - want) <= tolerance for got, want in zip(crop, drawn, strict=True)), (crop, drawn)
    assert crop[2] <= 400  # the left photo only
    assert _tiles(browser)[0].get_attribute("data-sku") == PHOTO_SKU
    status, rows = _post_photo(f"{base_url}/search", photo.read_bytes(), photo.name, [("k", "8"), ("crop", sent[0])])
    assert status == 200
    assert _shown(_tile_data(browser)) == _expected(rows)
    assert browser.find_element(By.ID, "crop-box").is_displayed()
    assert whole.get_attribute("aria-disabled") == "false"
    assert "box" in _text(browser, "status").lower()

    # A box around the right half, drawn with a finger from its bottom-right corner: the right product first.
    before = _request_number(browser)
    drawn = _drag(browser, (0.97, 0.95), (0.53, 0.05), touch=True)
    assert _settled(browser, before) == "done"
    crop = _crop_numbers(_sent_crops(browser)[-1])
    assert all(abs(got - want) <= tolerance for got, want in zip(crop, drawn, strict=True)), (crop, drawn)
    assert crop[0] >= 400  # the right photo only
    assert _tiles(browser)[0].get_attribute("data-sku") == OTHER_SKU

    # A click on the photo (no drag) is not a box: nothing is searched.
    before = _request_number(browser)
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "preview")).click().perform()
    assert _request_number(browser) == before and len(_sent_crops(browser)) == 2

    # "Whole photo", from the keyboard: the search again without any crop, the box gone, the focus kept.
    assert _act(browser, lambda: whole.send_keys(Keys.ENTER)) == "done"
    sent = _sent_crops(browser)
    assert len(sent) == 3 and sent[-1] is None
    assert not browser.find_element(By.ID, "crop-box").is_displayed()
    assert whole.get_attribute("aria-disabled") == "true"
    assert browser.switch_to.active_element == whole
    status, rows = _post_photo(f"{base_url}/search", photo.read_bytes(), photo.name, [("k", "8")])
    assert status == 200
    assert _shown(_tile_data(browser)) == _expected(rows)


def test_an_exact_match_is_badged_and_outlined_on_the_photo(browser: webdriver.Chrome, base_url: str) -> None:
    # A catalogue photo verifies against itself: its product is an exact match, with where it lies in the photo.
    status, rows = _post_photo(f"{base_url}/search", PHOTO.read_bytes(), PHOTO.name, [("k", "8")])
    assert status == 200
    assert rows[0]["sku"] == PHOTO_SKU and rows[0]["match"] == "exact" and rows[0]["box"] is not None
    exact = [r for r in rows if r["match"] == "exact"]

    _open(browser, base_url)
    assert _upload(browser, PHOTO) == "done"
    tiles = _tiles(browser)
    assert [t.get_attribute("data-match") for t in tiles] == [r["match"] for r in rows]
    badge = tiles[0].find_element(By.CSS_SELECTOR, ".badge.exact")
    assert badge.is_displayed() and badge.text.lower() == "exact match"
    assert str(rows[0]["inliers"]) in badge.get_attribute("title")
    assert str(rows[0]["inliers"]) in badge.get_attribute("aria-label")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .badge.exact")) == len(exact)

    # The match's box outlined on the shown photo, scaled from the photo's pixels to the shown size.
    outlines = browser.find_elements(By.CSS_SELECTOR, "#matches .match-box")
    assert len(outlines) == len([r for r in exact if r["box"]])
    assert outlines[0].get_attribute("data-sku") == PHOTO_SKU and outlines[0].is_displayed()
    assert outlines[0].text == rows[0]["name"]
    rect = _preview_rect(browser)
    shown = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON();", outlines[0])
    sx, sy = rect["width"] / rect["naturalWidth"], rect["height"] / rect["naturalHeight"]
    left, top, right, bottom = rows[0]["box"]
    want = {
        "left": rect["left"] + max(left, 0) * sx,
        "top": rect["top"] + max(top, 0) * sy,
        "right": rect["left"] + min(right, rect["naturalWidth"]) * sx,
        "bottom": rect["top"] + min(bottom, rect["naturalHeight"]) * sy,
    }
    assert all(abs(shown[side] - want[side]) <= 1.5 for side in want), (shown, want)

    # Similar products answer another question: the outlines go.
    assert _act(browser, tiles[0].click) == "done"
    assert not browser.find_elements(By.CSS_SELECTOR, "#matches .match-box")
