"""The built website, opened page by page in headless Chromium (Playwright), as a reader sees it.

Run after ``jupyter-book build .`` (``make test`` does both). Every page listed in ``_toc.yml`` is opened at two
widths, a laptop (1280 px) and a phone (390 px), once each; the checks below then read what was measured, so a
failure names the check, the page and the width (the test id is ``page@width``) and the message names the
offending element:

- ``test_no_console_errors``: no page error, no console error (none is allowed: theme noise is fixed, not
  excused), no failed request or HTTP error for a file of the site, a favicon that loads;
- ``test_no_raw_markup``: no literal ````{``, ``:::{``, ``:class:`` or ``$$`` in the rendered text outside code
  cells (a directive or math that MyST did not parse), all math rendered by MathJax served from the site itself;
- ``test_headings_in_contents``: every heading of the page's source (notebook markdown cells or MyST file) is in
  the page's contents panel, the title in the page's ``<h1>`` (headings are looked up in the page itself when it
  has no contents panel);
- ``test_no_horizontal_overflow``: the page cannot scroll sideways (wide code and tables scroll in their own box);
- ``test_sidebar_toggles``: the visible sidebar button hides and shows the chapter list at 1280 px and opens it
  at 390 px; on a phone the contents button opens the page's contents;
- ``test_images``: every image loads and has alt text that is not a file path; every figure is a link to itself
  at full size and, at 390 px, is shown at >= 60 % of its natural size (tick labels stay legible);
- ``test_visible_code_cells``: no code cell shown without a click is longer than 30 lines (cells behind a
  "show" toggle do not count);
- ``test_links``: every internal link and anchor exists; every chapter is in the navigation.

Screenshots go to ``_build/screenshots/``: ``<page>@1280.png`` and ``<page>@390.png`` (whole page),
``<page>@1280-sidebar-hidden.png``, ``<page>@390-menu.png`` and ``<page>@390-contents.png`` (the toggles at work),
``<page>@390-figure.png`` (the page's widest figure on a phone).

The browser is Debian's ``chromium`` (``apt-get install chromium``) or the one named by ``$BNBOOK_CHROMIUM``;
``playwright install`` is not needed (and fails offline).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
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

WIDTHS = (1280, 390)
PHONE = 390
HEIGHT = 900
MAX_VISIBLE_CODE_LINES = 30
# A figure on a phone is shown at no less than this fraction of its natural size (the same number as
# MIN_SCALE in _static/bnbook-site.js): matplotlib's 10 pt labels at 100 dpi stay about 8 px tall.
MIN_FIGURE_SCALE = 0.6
# Text that only shows when MyST did not parse a directive (backtick or colon fence) or math.
RAW_MARKUP = ("```{", ":::{", ":class:", "$$")

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


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
CASES = [pytest.param(page, width, id=f"{page}@{width}") for page in PAGES for width in WIDTHS]


# ---------------------------------------------------------------------------------------------------------------
# The page's source: headings of its markdown, its code cells


def source_file(page_path: str) -> Path:
    """The notebook or MyST file a page is built from."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{page_path}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no .ipynb or .md for page {page_path}")


_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})\s*(\{([\w:-]+)\})?")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
# Directives whose body is code or math, not markdown: headings-like lines inside them are not headings.
_LITERAL_DIRECTIVES = {"code", "code-block", "code-cell", "sourcecode", "literalinclude", "math", "raw", "glue:math"}


def markdown_headings(markdown: str) -> list[tuple[int, str]]:
    """(level, text) of each ATX heading of a MyST markdown text, outside code blocks and front matter.

    The text is read as its author meant it: a fence that opens a directive (```` ```{note} ````,
    ``:::{admonition}``) encloses markdown until its closing fence, so a heading there counts, even where the
    renderer failed to see the directive (a backtick fence whose title has backticks) and lost the heading.
    Plain fences and code/math directives enclose code: heading-like lines there are not headings.
    """
    lines = markdown.splitlines()
    if lines and lines[0].strip() == "---":  # YAML front matter
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), 0)
        lines = lines[end + 1:]
    headings = []
    directives: list[str] = []  # fences of the directives we are in
    literal: str | None = None  # the fence of the code block we are in
    for line in lines:
        fence = _FENCE.match(line)
        marker = fence.group(1) if fence else ""
        closes = lambda opener: bool(  # noqa: E731
            fence and marker[0] == opener[0] and len(marker) >= len(opener) and line.strip() == marker
        )
        if literal is not None:
            if closes(literal):
                literal = None
            continue
        if fence:
            directive = fence.group(3)
            if directive is not None:
                if directive in _LITERAL_DIRECTIVES:
                    literal = marker
                else:
                    directives.append(marker)
            elif directives and closes(directives[-1]):
                directives.pop()
            elif marker[0] != ":":
                literal = marker
            continue
        match = _HEADING.match(line)
        if match:
            headings.append((len(match.group(1)), match.group(2)))
    return headings


def normalise(text: str) -> str:
    """Heading text reduced to lower-case letters and digits, without inline math and markup."""
    text = re.sub(r"\$[^$]+\$", " ", text)  # inline math: MathJax renders it differently in the page
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](target)
    text = re.sub(r"\{[\w:-]+\}`([^`]*)`", r"\1", text)  # {role}`text`
    return re.sub(r"[^0-9a-z]+", "", text.lower())


@functools.cache
def page_source(page_path: str) -> dict:
    """Headings (with the cell they are in) and code cells of a page's source file."""
    path = source_file(page_path)
    headings, code = [], []
    if path.suffix == ".ipynb":
        notebook = json.loads(path.read_text(encoding="utf-8"))
        for index, cell in enumerate(notebook["cells"]):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                headings += [(level, text, f"cell {index}") for level, text in markdown_headings(source)]
            elif cell["cell_type"] == "code":
                code.append({"index": index, "id": cell.get("id", "?"), "source": source.strip()})
    else:
        headings = [(level, text, path.name) for level, text in markdown_headings(path.read_text(encoding="utf-8"))]
    return {"headings": headings, "code": code}


# ---------------------------------------------------------------------------------------------------------------
# The browser, and one visit per page and width


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
def browser():
    from playwright.sync_api import Error, sync_playwright

    path = os.environ.get("BNBOOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        except Error as err:
            pytest.fail(f"cannot start Chromium ({path or 'none found'}): install Debian's `chromium` or set BNBOOK_CHROMIUM. {err}")
        yield browser
        browser.close()


# Everything the checks need, measured in the page right after it loaded (before any click).
_MEASURE = r"""(rawMarkup) => {
  const article = document.querySelector("article.bd-article") || document.body;
  const shown = (e) => {
    if (!e || e.getClientRects().length === 0) return false;
    const r = e.getBoundingClientRect(), cs = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && r.right > 0 && r.left < innerWidth && cs.visibility !== "hidden";
  };
  const describe = (e) => {
    const cls = (typeof e.className === "string" && e.className) ? "." + e.className.trim().split(/\s+/).join(".") : "";
    const text = (e.textContent || "").replace(/\s+/g, " ").trim().slice(0, 70);
    return `<${e.tagName.toLowerCase()}${cls}> "${text}"`;
  };
  const textWithoutMath = (e) => {
    const clone = e.cloneNode(true);
    clone.querySelectorAll(".math, mjx-container, .headerlink").forEach((m) => m.replaceWith(" "));
    return clone.textContent.replace(/\s+/g, " ").trim();
  };

  // Sideways scrolling of the page itself
  const doc = document.documentElement;
  const before = {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth};
  window.scrollTo(100000, 0);
  const scrollX = window.scrollX;
  window.scrollTo(0, 0);
  const offenders = [];
  if (before.scrollWidth > before.clientWidth || scrollX > 0) {
    for (const e of document.querySelectorAll("body *")) {
      if (e.closest(".bd-sidebar-primary, .bd-sidebar-secondary, dialog")) continue;
      const r = e.getBoundingClientRect();
      if (r.width === 0 || r.right <= before.clientWidth + 0.5) continue;
      let clipped = false;
      for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
        if (getComputedStyle(a).overflowX !== "visible") { clipped = true; break; }
      }
      const parent = e.parentElement.getBoundingClientRect();
      if (!clipped && parent.right <= before.clientWidth + 0.5) offenders.push(`${describe(e)} ends at ${Math.round(r.right)} px`);
    }
  }

  // Raw markup in the text outside code cells: the innermost block that shows it
  const blocks = Array.from(article.querySelectorAll("p, pre, li, dt, dd, td, th, h1, h2, h3, h4, h5, h6, figcaption, blockquote, .admonition-title"))
    .filter((e) => !e.closest(".cell"));
  const raw = [];
  for (const needle of rawMarkup) {
    const hits = blocks.filter((e) => e.textContent.includes(needle));
    for (const e of hits) {
      if (hits.some((other) => other !== e && e.contains(other))) continue;
      const text = e.textContent.replace(/\s+/g, " ");
      const at = text.indexOf(needle);
      raw.push({needle, element: `<${e.tagName.toLowerCase()}>`, context: text.slice(Math.max(0, at - 40), at + 60).trim()});
    }
  }

  const math = Array.from(document.querySelectorAll(".math"));
  const tocNav = document.querySelector(".bd-sidebar-secondary nav.page-toc, #pst-page-toc-nav");
  const tocLinks = tocNav ? Array.from(tocNav.querySelectorAll("a")) : [];

  const images = Array.from(document.images).map((img) => {
    const link = img.closest("a");
    const inArticle = article.contains(img);
    return {
      src: img.getAttribute("src"), url: img.currentSrc || img.src, alt: img.getAttribute("alt"),
      loaded: img.complete && img.naturalWidth > 0, naturalWidth: img.naturalWidth,
      width: img.getBoundingClientRect().width, displayed: img.getClientRects().length > 0,
      figure: inArticle && !!img.closest(".cell_output, figure"),
      linksToItself: !!link && (link.href === img.src || link.href === img.currentSrc),
    };
  });

  const cells = Array.from(article.querySelectorAll(".cell_input")).map((input) => {
    const pre = input.querySelector("pre");
    return {visible: input.getClientRects().length > 0 && !input.closest("details:not([open])"),
            text: pre ? pre.textContent.replace(/\n$/, "") : ""};
  });

  return {
    overflow: {...before, scrollX, offenders: offenders.slice(0, 10)},
    raw,
    unrenderedMath: math.filter((e) => !e.querySelector("mjx-container")).map((e) => e.textContent.slice(0, 60)),
    mathCount: math.length,
    mathjaxSources: Array.from(document.scripts).map((s) => s.src).filter((s) => s.includes("mathjax")),
    title: Array.from(article.querySelectorAll("h1")).map(textWithoutMath),
    pageHeadings: Array.from(article.querySelectorAll("h1, h2, h3, h4, h5, h6")).map(textWithoutMath),
    hasToc: tocLinks.length > 0,
    tocEntries: tocLinks.map(textWithoutMath),
    images,
    cells,
    links: Array.from(document.querySelectorAll("a[href]")).map((a) => a.href),
    nav: Array.from(document.querySelectorAll("nav.bd-docs-nav a, .bd-sidebar-primary a")).map((a) => a.href),
    favicons: Array.from(document.querySelectorAll("link[rel~='icon']")).map((l) => l.href),
  };
}"""

# Is any link of the chapter list (primary) or of the page contents (secondary) visible on screen now?
_SHOWN = r"""(which) => {
  const selector = which === "primary"
    ? "#pst-primary-sidebar a.reference, #pst-primary-sidebar-modal a.reference"
    : ".bd-sidebar-secondary nav.page-toc a, #pst-secondary-sidebar-modal nav.page-toc a";
  return Array.from(document.querySelectorAll(selector)).some((e) => {
    if (e.getClientRects().length === 0) return false;
    const r = e.getBoundingClientRect(), cs = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && r.right > 0 && r.left < innerWidth && r.top < innerHeight && r.bottom > 0
      && cs.visibility !== "hidden";
  });
}"""


def _shot(page, page_path: str, suffix: str, full_page: bool = False) -> str:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{page_path.replace('/', '__')}@{suffix}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return str(path.relative_to(ROOT))


def _exercise_toggles(page, page_path: str, width: int, has_toc: bool) -> list[str]:
    """Click the visible sidebar buttons as a reader would; return what did not work."""
    where = f"{page_path} @ {width}px"
    problems = []
    shown = lambda which: page.evaluate(_SHOWN, which)  # noqa: E731
    primary = page.locator(".primary-toggle:visible")
    if primary.count() == 0:
        return [f"{where}: no visible sidebar toggle button (.primary-toggle)"]
    if width >= 992:
        if not shown("primary"):
            problems.append(f"{where}: the chapter list is not shown before any click")
        primary.first.click()
        page.wait_for_timeout(400)
        if shown("primary"):
            problems.append(f"{where}: clicking the sidebar toggle did not hide the chapter list")
        _shot(page, page_path, f"{width}-sidebar-hidden")
        primary.first.click()
        page.wait_for_timeout(400)
        if not shown("primary"):
            problems.append(f"{where}: a second click on the sidebar toggle did not show the chapter list again")
        if has_toc and not shown("secondary"):
            problems.append(f"{where}: the page's contents panel is not shown")
        return problems
    if shown("primary"):
        problems.append(f"{where}: the chapter list covers the page before any click")
    primary.first.click()
    page.wait_for_timeout(400)
    if not shown("primary"):
        problems.append(f"{where}: clicking the sidebar toggle (menu button) did not open the chapter list")
    _shot(page, page_path, f"{width}-menu")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    if has_toc:
        secondary = page.locator(".secondary-toggle:visible")
        if secondary.count() == 0:
            problems.append(f"{where}: no visible contents button (.secondary-toggle)")
        else:
            secondary.first.click()
            page.wait_for_timeout(400)
            if not shown("secondary"):
                problems.append(f"{where}: clicking the contents button did not open the page's contents")
            _shot(page, page_path, f"{width}-contents")
            page.keyboard.press("Escape")
    return problems


def _visit(page_path: str, width: int, server: str, browser) -> dict:
    page = browser.new_page(viewport={"width": width, "height": HEIGHT})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
    page.on("console", lambda msg: errors.append(f"console error: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: errors.append(f"failed request: {req.url}") if req.url.startswith(server) else None)
    page.on("response", lambda res: errors.append(f"HTTP {res.status}: {res.url}") if res.url.startswith(server) and res.status >= 400 else None)
    # Nothing outside the site may be needed: block other hosts (the book must work offline).
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())

    page.goto(f"{server}/{page_path}.html", wait_until="load")
    page.evaluate("() => (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise.then(() => true) : true")
    page.wait_for_load_state("networkidle")

    data = page.evaluate(_MEASURE, list(RAW_MARKUP))
    data["favicon_status"] = {
        href: page.evaluate("(h) => fetch(h).then(r => r.status, () => 0)", href) for href in data["favicons"]
    }
    data["screenshot"] = _shot(page, page_path, str(width), full_page=True)
    if width <= PHONE and any(img["figure"] for img in data["images"]):
        # The widest figure of the page, as a phone shows it
        page.evaluate("""() => {
          const figures = Array.from(document.querySelectorAll("article.bd-article .cell_output img, article.bd-article figure img"));
          figures.sort((a, b) => b.naturalWidth - a.naturalWidth);
          figures[0].scrollIntoView({block: "center"});
        }""")
        _shot(page, page_path, f"{width}-figure")
        page.evaluate("() => window.scrollTo(0, 0)")
    data["toggle_problems"] = _exercise_toggles(page, page_path, width, data["hasToc"])
    page.close()
    data["errors"] = errors
    return data


_VISITS: dict[tuple[str, int], dict] = {}


@pytest.fixture
def rendered(page_path: str, width: int, server, browser) -> dict:
    """What one visit of the page at this width measured (one visit per page and width for all checks)."""
    key = (page_path, width)
    if key not in _VISITS:
        _VISITS[key] = _visit(page_path, width, server, browser)
    return _VISITS[key]


def _fail_if(problems: list[str], page_path: str, width: int, what: str):
    if problems:
        pytest.fail(f"{page_path} @ {width}px: {len(problems)} {what}:\n  " + "\n  ".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------------------------
# The checks


def test_every_toc_file_was_built():
    missing = [p for p in PAGES if not (SITE / f"{p}.html").is_file()]
    assert not missing, f"pages in _toc.yml with no HTML: {missing}"


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_no_console_errors(page_path, width, rendered):
    problems = list(rendered["errors"])
    if not rendered["favicons"]:
        problems.append("no <link rel=icon>: browsers ask for /favicon.ico, which does not exist (404)")
    problems += [f"favicon {href} answers HTTP {status}" for href, status in rendered["favicon_status"].items() if status != 200]
    _fail_if(problems, page_path, width, "console errors or failed requests")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_no_raw_markup(page_path, width, rendered, server):
    problems = [f"literal {hit['needle']!r} in {hit['element']}: ...{hit['context']}..." for hit in rendered["raw"]]
    problems += [f"math not rendered by MathJax: {text!r}" for text in rendered["unrenderedMath"]]
    sources = rendered["mathjaxSources"]
    if rendered["mathCount"] and (not sources or not all(s.startswith(server) for s in sources)):
        problems.append(f"MathJax not loaded from the site itself: {sources}")
    _fail_if(problems, page_path, width, "pieces of unparsed markup")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_headings_in_contents(page_path, width, rendered):
    headings = page_source(page_path)["headings"]
    title = {normalise(t) for t in rendered["title"]}
    in_page = {normalise(t) for t in rendered["pageHeadings"]}
    in_toc = {normalise(t) for t in rendered["tocEntries"]}
    problems = []
    for level, text, where in headings:
        key = normalise(text)
        if not key:
            continue
        if level == 1:
            if key not in title:
                problems.append(f"title {text!r} ({where}) is not the page's <h1> (it shows {rendered['title']})")
        elif rendered["hasToc"]:
            if key not in in_toc:
                problems.append(f"heading {'#' * level} {text!r} ({where}) is missing from the contents panel")
        elif key not in in_page:
            problems.append(f"heading {'#' * level} {text!r} ({where}) is not a heading of the page")
    _fail_if(problems, page_path, width, "headings missing")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_no_horizontal_overflow(page_path, width, rendered):
    o = rendered["overflow"]
    problems = []
    if o["scrollWidth"] > o["clientWidth"] or o["scrollX"] > 0:
        problems.append(f"the page is {o['scrollWidth']} px wide in a {o['clientWidth']} px window and scrolls sideways by {o['scrollX']} px")
        problems += [f"too wide: {e}" for e in o["offenders"]]
    _fail_if(problems, page_path, width, "overflow problems")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_sidebar_toggles(page_path, width, rendered):
    _fail_if(rendered["toggle_problems"], page_path, width, "sidebar button problems")


_PATH_LIKE = re.compile(r"(/|\\|\.(png|jpe?g|gif|svg|webp)$)", re.IGNORECASE)


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_images(page_path, width, rendered):
    problems = []
    for img in rendered["images"]:
        name = img["src"]
        alt = (img["alt"] or "").strip()
        if not img["loaded"]:
            problems.append(f"image did not load: {name}")
        if not alt:
            problems.append(f"image without alt text: {name}")
        elif _PATH_LIKE.search(alt) or alt == Path(name or "").name:
            problems.append(f"image whose alt text is its file path (give the figure a caption): {name} alt={alt!r}")
        if img["figure"] and img["loaded"]:
            if not img["linksToItself"]:
                problems.append(f"figure not linked to its full-size image: {name}")
            if width <= PHONE and img["displayed"]:
                scale = img["width"] / img["naturalWidth"]
                if scale < MIN_FIGURE_SCALE - 0.01:
                    problems.append(
                        f"figure shrunk to {scale:.0%} of its natural {img['naturalWidth']} px (< {MIN_FIGURE_SCALE:.0%}): {name}"
                    )
    _fail_if(problems, page_path, width, "image problems")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_visible_code_cells(page_path, width, rendered):
    code = page_source(page_path)["code"]
    by_source = {cell["source"]: cell for cell in code}
    problems = []
    for position, cell in enumerate(rendered["cells"], 1):
        lines = len(cell["text"].splitlines())
        if cell["visible"] and lines > MAX_VISIBLE_CODE_LINES:
            origin = by_source.get(cell["text"].strip())
            name = f"cell {origin['index']} (id {origin['id']})" if origin else f"code cell {position} of the page"
            first = cell["text"].strip().splitlines()[0][:60]
            problems.append(f"{name}: {lines} visible lines (> {MAX_VISIBLE_CODE_LINES}), starting {first!r}")
    _fail_if(problems, page_path, width, f"visible code cells over {MAX_VISIBLE_CODE_LINES} lines")


@pytest.mark.parametrize(("page_path", "width"), CASES)
def test_links(page_path, width, rendered, server):
    problems = []
    for link in rendered["links"]:
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
    nav_paths = {urllib.parse.urlsplit(h).path.lstrip("/").removesuffix(".html") for h in rendered["nav"]}
    problems += [f"chapter missing from the navigation: {p}" for p in PAGES[1:] if p not in nav_paths]
    _fail_if(sorted(set(problems)), page_path, width, "link problems")
