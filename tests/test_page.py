"""The drawing page at ``/``, driven in headless Chromium by Playwright.

Needs Playwright for Python (the ``dev`` extra) and Debian's ``chromium`` at
/usr/bin/chromium (``scripts/install.sh --system``); skipped where either is missing.
Playwright's own browser download is not used. The page talks to the real service
(the ``service`` fixture of conftest.py: ``python -m service`` over a model trained on real
images and a gallery index built from real photos).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # the first search loads the model; later ones take milliseconds
SCREENSHOT = Path("/tmp/page.png")
SCREENSHOT_PHONE = Path("/tmp/page-phone.png")
SCREENSHOT_ENLARGED = Path("/tmp/page-enlarged.png")

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e .[dev])"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not shutil.which("chromium"),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(scripts/install.sh --system, or apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    executable = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def base_url(service) -> str:
    """The running service's root URL, without a trailing slash."""
    return service.url.rstrip("/")


def _open(browser, base_url: str, **context_args):
    context = browser.new_context(**context_args)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(base_url + "/")
    page.wait_for_selector("#canvas")
    return context, page, errors, requested


def _ink(page) -> int:
    """How many canvas pixels are dark (drawn)."""
    return page.evaluate(
        """() => {
            const c = document.getElementById('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++;
            return n;
        }"""
    )


def _stroke_count(page) -> int:
    return int(page.get_attribute("#stroke-count", "data-count"))


def _mouse_stroke(page, points) -> None:
    box = page.locator("#canvas").bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    (fx, fy), rest = points[0], points[1:]
    page.mouse.move(x0 + fx * w, y0 + fy * h)
    page.mouse.down()
    for fx, fy in rest:
        page.mouse.move(x0 + fx * w, y0 + fy * h, steps=4)
    page.mouse.up()


def _wait_for_results(page) -> None:
    page.wait_for_selector("#results .result img")
    # every card shows an image that loaded and a numeric score
    page.wait_for_function(
        """() => [...document.querySelectorAll('#results .result img')]
                 .every((img) => img.complete && img.naturalWidth > 0)"""
    )


def _circle(cx, cy, r, n=24):
    import math

    return [
        (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
        for i in range(n + 1)
    ]


def test_draw_search_undo_enlarge_clear(browser, base_url):
    context, page, errors, requested = _open(
        browser, base_url, viewport={"width": 1280, "height": 800}
    )
    try:
        assert page.locator("#undo").is_disabled()
        assert _ink(page) == 0

        # three strokes: a sun (circle) and two rays
        searches: list[dict] = []

        def record(req):
            if req.url.endswith("/v1/search"):
                searches.append(json.loads(req.post_data))

        page.on("request", record)
        _mouse_stroke(page, _circle(0.5, 0.5, 0.22))
        _mouse_stroke(page, [(0.5, 0.05), (0.5, 0.2)])
        _mouse_stroke(page, [(0.8, 0.8), (0.92, 0.92)])
        assert _stroke_count(page) == 3
        # debounced after the last stroke: a search with all three strokes goes out
        page.wait_for_function("() => document.querySelectorAll('#results .result').length > 0")
        page.wait_for_timeout(500)
        assert searches and len(searches[-1]["strokes"]) == 3, searches
        body = searches[-1]
        assert body["k"] > 0
        for xs, ys in body["strokes"]:
            assert len(xs) == len(ys) >= 2

        _wait_for_results(page)
        cards = page.locator("#results .result")
        assert cards.count() >= 1
        for i in range(cards.count()):
            score = cards.nth(i).locator(".score").inner_text()
            assert re.fullmatch(r"-?\d+\.\d+", score), score
        assert "ms" in page.inner_text("#search-meta")
        assert page.locator("#message").is_hidden()
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # undo: one stroke fewer, less ink, and a new search with two strokes
        ink3 = _ink(page)
        with page.expect_request("**/v1/search") as after_undo:
            page.click("#undo")
        assert _stroke_count(page) == 2
        assert 0 < _ink(page) < ink3
        assert len(json.loads(after_undo.value.post_data)["strokes"]) == 2
        # Ctrl+Z undoes too
        page.keyboard.press("Control+z")
        assert _stroke_count(page) == 1
        _wait_for_results(page)

        # click a result: the enlarged view opens with the full image; Escape closes it
        first = page.locator("#results .result button").first
        first.click()
        lightbox = page.locator("#lightbox")
        page.wait_for_function("() => document.getElementById('lightbox').open")
        page.wait_for_function(
            """() => { const i = document.getElementById('lightbox-img');
                       return i.complete && i.naturalWidth > 0; }"""
        )
        assert lightbox.is_visible()
        assert "score" in page.inner_text("#lightbox-caption")
        page.keyboard.press("Escape")
        page.wait_for_function("() => !document.getElementById('lightbox').open")
        assert lightbox.is_hidden()
        # a click anywhere in the enlarged view closes it too
        first.click()
        page.wait_for_function("() => document.getElementById('lightbox').open")
        page.click("#lightbox-img")
        page.wait_for_function("() => !document.getElementById('lightbox').open")

        # "more like this" on the enlarged result: the grid shows the photos nearest to it
        # (by its stored vector), itself left out
        enlarged_src = first.locator("img").get_attribute("src")
        first.click()
        page.wait_for_function("() => document.getElementById('lightbox').open")
        assert page.locator("#more-like-this").is_visible()
        page.screenshot(path=str(SCREENSHOT_ENLARGED))
        with page.expect_response(re.compile(r".*/v1/photos/\d+/similar\?.*")) as similar:
            page.click("#more-like-this")
        assert similar.value.status == 200
        page.wait_for_function("() => !document.getElementById('lightbox').open")
        page.wait_for_function(
            "() => document.getElementById('search-meta').textContent.startsWith('More like')"
        )
        _wait_for_results(page)
        srcs = page.locator("#results .result img").evaluate_all("els => els.map(e => e.src)")
        assert srcs and base_url + enlarged_src not in srcs

        # the class filter: its choices come from /v1/index; choosing one searches again
        # with it, and every result is of that class
        page.wait_for_function("() => document.getElementById('class-filter').options.length > 1")
        choice = page.locator("#class-filter option").nth(1).get_attribute("value")
        with page.expect_request("**/v1/search") as filtered:
            page.select_option("#class-filter", choice)
        assert json.loads(filtered.value.post_data)["classes"] == [choice]
        page.wait_for_function(
            """(c) => { const r = document.querySelectorAll('#results .result .class');
                        return r.length > 0 && [...r].every((e) => e.textContent === c); }""",
            arg=choice,
        )
        page.select_option("#class-filter", "")

        # clear: no strokes, no ink, no results
        page.click("#clear")
        assert _stroke_count(page) == 0
        assert _ink(page) == 0
        assert page.locator("#results .result").count() == 0
        assert page.locator("#empty").is_visible()

        # self-contained: every request stayed on the service's origin
        assert requested and all(url.startswith(base_url + "/") for url in requested), requested
        assert not errors, errors
    finally:
        context.close()


def test_touch_and_pen_draw_on_a_phone(browser, base_url):
    context, page, errors, _ = _open(
        browser,
        base_url,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        page.evaluate(
            """() => { window.__pointerTypes = [];
                       document.getElementById('canvas').addEventListener('pointerdown',
                         (e) => window.__pointerTypes.push(e.pointerType)); }"""
        )
        box = page.locator("#canvas").bounding_box()
        assert box["width"] <= 390
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        cdp = context.new_cdp_session(page)

        # a finger drags a zig-zag: real touch input, which the page sees as pointerType 'touch'
        pts = [(0.2 + 0.6 * i / 12, 0.3 + 0.3 * (i % 2)) for i in range(13)]

        def touch(kind, fx=None, fy=None):
            tp = [] if fx is None else [{"x": x0 + fx * w, "y": y0 + fy * h, "id": 1}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": tp})

        touch("touchStart", *pts[0])
        for fx, fy in pts[1:]:
            touch("touchMove", fx, fy)
        touch("touchEnd")
        page.wait_for_function("() => +document.getElementById('stroke-count').dataset.count === 1")
        assert _ink(page) > 0

        # a pen draws a second stroke
        def pen(kind, fx, fy, buttons):
            cdp.send(
                "Input.dispatchMouseEvent",
                {
                    "type": kind,
                    "x": x0 + fx * w,
                    "y": y0 + fy * h,
                    "button": "left",
                    "buttons": buttons,
                    "clickCount": 1,
                    "pointerType": "pen",
                },
            )

        pen("mousePressed", 0.3, 0.8, 1)
        for i in range(1, 11):
            pen("mouseMoved", 0.3 + 0.04 * i, 0.8, 1)
        pen("mouseReleased", 0.7, 0.8, 0)
        page.wait_for_function("() => +document.getElementById('stroke-count').dataset.count === 2")
        assert page.evaluate("window.__pointerTypes") == ["touch", "pen"]

        _wait_for_results(page)
        # the page does not scroll sideways on a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(SCREENSHOT_PHONE), full_page=True)
        assert not errors, errors
    finally:
        context.close()


def test_api_errors_are_shown_politely(browser, base_url):
    context, page, errors, _ = _open(browser, base_url, viewport={"width": 1024, "height": 700})
    try:
        page.route(
            "**/v1/search",
            lambda route: route.fulfill(
                status=422,
                content_type="application/json",
                body=json.dumps({"detail": "a drawing needs at least one stroke with a point"}),
            ),
        )
        _mouse_stroke(page, [(0.2, 0.2), (0.8, 0.8)])
        message = page.locator("#message")
        message.wait_for(state="visible")
        assert "needs at least one stroke" in message.inner_text()
        assert page.locator("#results .result").count() == 0

        # the server comes back: the message goes away with the next search
        page.unroute("**/v1/search")
        _mouse_stroke(page, [(0.2, 0.8), (0.8, 0.2)])
        _wait_for_results(page)
        assert message.is_hidden()
        assert not errors, errors
    finally:
        context.close()
