"""The built website, opened page by page in headless Chromium (Playwright).

Run after ``jupyter-book build .`` (``make test`` does both). For every page listed in
``_toc.yml`` it fails on a page error or console error (except the named theme noise
below), an image that does not load, a request for a local file that fails, math that
MathJax did not render or that was loaded from outside the site, an internal link
whose file or anchor does not exist, or a chapter missing from the navigation. It
saves a full-page screenshot of each page under ``_build/screenshots/``.

The browser is Debian's ``chromium`` (``apt-get install chromium``) or the one named
by ``$BNBOOK_CHROMIUM``; ``playwright install`` is not needed (and fails offline).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"

# Console messages and page errors of the theme itself, not of the book. Each is explained:
ALLOWED_CONSOLE = {
    # Sphinx 7.4 + sphinx-thebe add the same inline <script> twice on every page.
    "Identifier 'THEBE_JS_URL' has already been declared": "sphinx-thebe inline script included twice",
    # pydata-sphinx-theme logs this when no theme mode is stored in localStorage yet.
    "Got invalid theme mode": "first visit, no stored light/dark preference",
}
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _allowed(message: str) -> bool:
    return any(noise in message for noise in ALLOWED_CONSOLE)


def toc_pages() -> list[str]:
    """Every file of _toc.yml, root first, as paths without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return pages


PAGES = toc_pages()


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return frozenset(parser.ids)


@pytest.fixture(scope="session")
def server():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site at {SITE}: run `jupyter-book build .` (or `make test`) first")
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    from playwright.sync_api import Error, sync_playwright

    path = os.environ.get("BNBOOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        except Error as err:
            pytest.fail(f"cannot start Chromium ({path or 'none found'}): install Debian's `chromium` or set BNBOOK_CHROMIUM. {err}")
        yield browser
        browser.close()


def test_every_toc_file_was_built():
    missing = [p for p in PAGES if not (SITE / f"{p}.html").is_file()]
    assert not missing, f"pages in _toc.yml with no HTML: {missing}"


@pytest.mark.parametrize("page_path", PAGES)
def test_page(page_path, server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda err: None if _allowed(str(err)) else problems.append(f"page error: {err}"))

    def on_console(msg):
        if msg.type == "error" and not _allowed(msg.text):
            problems.append(f"console error: {msg.text}")

    page.on("console", on_console)
    page.on("requestfailed", lambda req: problems.append(f"failed request: {req.url}") if req.url.startswith(server) else None)
    page.on("response", lambda res: problems.append(f"HTTP {res.status}: {res.url}") if res.url.startswith(server) and res.status >= 400 else None)
    # Nothing outside the site may be needed: block other hosts (the book must work offline).
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())

    page.goto(f"{server}/{page_path}.html", wait_until="load")
    page.evaluate("() => (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise.then(() => true) : true")
    page.wait_for_load_state("networkidle")

    broken_images = page.evaluate("() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    problems += [f"image did not load: {src}" for src in broken_images]

    math = page.evaluate("""() => {
        const all = Array.from(document.querySelectorAll('.math'));
        return {count: all.length, raw: all.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))};
    }""")
    problems += [f"unrendered math: {text!r}" for text in math["raw"]]
    if math["count"]:
        sources = page.evaluate("() => Array.from(document.scripts).map(s => s.src).filter(s => s.includes('mathjax'))")
        if not sources or not all(s.startswith(server) for s in sources):
            problems.append(f"MathJax not loaded from the site itself: {sources}")

    links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    for link in links:
        if not link.startswith(server):
            continue
        parsed = urllib.parse.urlsplit(link)
        target = SITE / urllib.parse.unquote(parsed.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken internal link: {link}")
        elif parsed.fragment and target.suffix == ".html" and urllib.parse.unquote(parsed.fragment) not in anchors(target):
            problems.append(f"internal link to a missing anchor: {link}")

    nav = page.evaluate("() => Array.from(document.querySelectorAll('nav.bd-docs-nav a, .bd-sidebar-primary a')).map(a => a.href)")
    nav_paths = {urllib.parse.urlsplit(h).path.lstrip("/").removesuffix(".html") for h in nav}
    missing_from_nav = [p for p in PAGES[1:] if p not in nav_paths]
    problems += [f"chapter missing from the navigation: {p}" for p in missing_from_nav]

    page.screenshot(path=str(SHOTS / f"{page_path.replace('/', '__')}.png"), full_page=True)
    page.close()
    assert not problems, "\n".join(problems)
