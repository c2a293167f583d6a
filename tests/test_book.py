"""The course website (`make book`): built offline, cached, and checked in a real browser.

The site is built once per test session into _build/html/, with the command `make book` runs (the first test
checks they are the same), inside a network namespace with loopback only (`unshare -rn`, where the system
allows it), so a theme or extension that downloads anything at build time fails here. On a clean clone (CI) that
build executes all nine notebooks at their default settings (13.6 minutes on 2 shared CPU cores, see README;
the browser checks add about a minute); after that the notebooks come from the execution cache and a build
takes seconds.

Then, without a browser: every page exists, the front page has the README's story and the three ways in,
every notebook page has every figure its notebook made and no error output, the student notebooks are
shown unexecuted, the results page has its figures, and a second build executes nothing.

With a browser (the system Chromium through Playwright, as tests/test_browser.py; never `playwright install`;
skipped with the reason when Chromium is missing, failed instead when PIXELVIT_REQUIRE_BROWSER=1): the site is
served from 127.0.0.1 and every notebook, student and results page is opened: each <img> is loaded (naturalWidth
> 0) and fits the page, no error output shows, every link to another page of the site answers 200, and no page
asks anything of another host (the only exception: the README's Binder badge on the front page). A full-page
screenshot of each goes to test-artifacts/book/.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from pixelvit import paper

pytest.importorskip("myst_nb", reason="the website's packages are in the `book` extra (pip install -e '.[book]')")

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "_build" / "html"
ARTIFACTS = REPO / "test-artifacts" / "book"
BUILD = [sys.executable, "-m", "sphinx", "-b", "html", "-c", "book", ".", "_build/html"]  # `make book`, without -q
BUILD_TIMEOUT_S = 3600  # a cold build on a busy 2-core machine
NOTEBOOKS = sorted(p.stem for p in REPO.glob("notebooks/[0-9]*.ipynb"))
STUDENT = sorted(p.relative_to(REPO).with_suffix("").as_posix() for p in REPO.glob("assignments/*/student/*.ipynb"))
EXECUTED = "Executing notebook"  # what myst-nb logs for every notebook it runs (cache misses only)
ALLOWED_HOSTS = {"mybinder.org"}  # the README's Binder badge image, on the front page


def network_namespace_prefix() -> list[str]:
    """`unshare -rn` with loopback up (kernels talk to Sphinx over 127.0.0.1), or [] where not allowed."""
    if shutil.which("unshare") is None:
        return []
    prefix = ["unshare", "-rn", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"]
    probe = [sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()"]
    try:
        ok = subprocess.run(prefix + probe, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else []


def build(log_name: str) -> tuple[str, float, bool]:
    """Build the site offline; (the build's log, seconds, whether the network was really cut off)."""
    prefix = network_namespace_prefix()
    started = time.perf_counter()
    result = subprocess.run(prefix + BUILD, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = result.stdout + result.stderr
    (ARTIFACTS / log_name).write_text(log)
    assert result.returncode == 0, f"the book build failed (log: {ARTIFACTS / log_name}):\n{log[-4000:]}"
    return log, seconds, bool(prefix)


@pytest.fixture(scope="session")
def site():
    """The site, built (or brought up to date) once per session."""
    log, seconds, offline = build("build.log")
    return {"log": log, "seconds": seconds, "offline": offline}


class Page(HTMLParser):
    """The parts of a page the tests look at: images, links, and the classes of output blocks."""

    def __init__(self, path: Path):
        super().__init__()
        self.images, self.links, self.classes = [], [], []
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.classes += (attrs.get("class") or "").split()
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def image_outputs(notebook: Path) -> int:
    """How many figures (image/png outputs) the executed copy of `notebook` in the execution cache holds."""
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(REPO / "_build" / ".jupyter_cache")
    record = cache.match_cache_notebook(nbformat.read(notebook, as_version=4))  # by its code cells' hash
    executed = cache.get_cache_bundle(record.pk).nb
    return sum("image/png" in output.get("data", {}) for cell in executed.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


# ---------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------
def test_make_book_runs_the_command_these_tests_run():
    recipe = re.search(r"^book:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1]
    assert recipe.split() == ["$(PY)", *BUILD[1:5], "-q", *BUILD[5:]], recipe


def test_the_site_builds_offline_with_every_page(site):
    assert site["offline"] or not network_namespace_prefix(), "the build ran with the network"
    assert (SITE / "index.html").is_file()
    for name in NOTEBOOKS:
        assert (SITE / "notebooks" / f"{name}.html").is_file(), name
    for name in STUDENT:
        assert (SITE / f"{name}.html").is_file(), name
    assert (SITE / "results" / "README.html").is_file() and (SITE / "book" / "paper.html").is_file()
    assert not list(SITE.glob("assignments/*/master/*")) and not list(SITE.glob("assignments/*/dist/*"))


def test_the_front_page_has_the_readme_story_and_the_three_ways_in(site):
    text = (SITE / "index.html").read_text()
    for words in ("Scaling Laws in Patchification", "Student", "Instructor", "Researcher", "Two commands"):
        assert words in text, words
    links = {urlparse(href).path for href in Page(SITE / "index.html").links}
    for name in NOTEBOOKS:
        assert f"notebooks/{name}.html" in links, name
    assert "results/README.html" in links and "book/paper.html" in links


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_of_a_notebook_is_on_its_page_and_no_error(site, name):
    page = Page(SITE / "notebooks" / f"{name}.html")
    figures = image_outputs(REPO / "notebooks" / f"{name}.ipynb")
    local = [src for src in page.images if not urlparse(src).netloc]
    assert len(local) >= figures, f"{name}: {figures} figures in the executed notebook, {len(local)} on the page"
    for src in local:
        assert (SITE / "notebooks" / src).resolve().is_file(), src
    assert "traceback" not in page.classes and "error" not in page.classes and "stderr" not in page.classes


def test_notebooks_that_draw_have_their_figures(site):
    """The figure counts above are only as good as the execution: every notebook but 00 (text only) and 06 (it
    draws only with a downloaded checkpoint, and the site is built offline) draws, so > 0."""
    drawn = {name: image_outputs(REPO / "notebooks" / f"{name}.ipynb") for name in NOTEBOOKS}
    assert all(drawn[name] > 0 for name in NOTEBOOKS if not name.startswith(("00", "06"))), drawn


@pytest.mark.parametrize("name", STUDENT)
def test_student_notebooks_are_shown_with_their_blanks_and_no_outputs(site, name):
    page = Page(SITE / f"{name}.html")
    assert "cell_output" not in page.classes, f"{name} was executed"
    assert "Open in Colab" in (SITE / f"{name}.html").read_text()


def test_the_results_page_has_its_figures(site):
    page = Page(SITE / "results" / "README.html")
    local = [src for src in page.images if not urlparse(src).netloc]
    assert len(local) >= 2, page.images
    for src in local:
        assert (SITE / "results" / src).resolve().is_file(), src
    pages = [href for href in page.links if not urlparse(href).netloc and href.split("#")[0].endswith(".html")]
    assert "cifar10_patch1_pilot/README.html" in pages  # the pilot's generated page is on the site, not a dead link
    for href in pages:
        assert (SITE / "results" / href.split("#")[0]).resolve().is_file(), href


def test_the_paper_page_quotes_the_tables(site):
    text = " ".join((SITE / "book" / "paper.html").read_text().split())
    assert "as reported in Wang et al. 2025" in text
    for table in paper.TABLES.values():  # every number as the paper prints it (0.36, not 0.4)
        for value in (v for row in table.rows for v in row if isinstance(v, float)):
            assert f"<td><p>{value}</p></td>" in text, (table.number, value)
    if (REPO.parent / "shared" / "paper" / "tables.md").is_file():
        assert "Table 3: COCO detection" in text


def test_the_paper_page_without_the_course_copy_says_so(tmp_path):
    sys.path.insert(0, str(REPO / "book"))
    import paper_page

    assert paper_page.write(tmp_path / "paper.md", shared_path=tmp_path / "absent.md")
    text = (tmp_path / "paper.md").read_text()
    assert "not present when this site was built" in text and "Table 6: training cost" in text
    assert not paper_page.write(tmp_path / "paper.md", shared_path=tmp_path / "absent.md")  # unchanged: not rewritten


def test_a_second_build_executes_nothing(site):
    log, seconds, _ = build("warm-build.log")
    assert EXECUTED not in log, f"a build with nothing changed executed notebooks:\n{log[-2000:]}"
    assert seconds < 300, f"the warm build took {seconds:.0f} s"


# ---------------------------------------------------------------------------------------------
# in a browser
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    sys.path.insert(0, str(REPO / "tests"))
    from test_browser import CHROMIUM_FLAGS, find_chromium

    chromium = find_chromium()
    if chromium is None:
        reason = "no Chromium found (apt-get install -y --no-install-recommends chromium, or set PIXELVIT_CHROMIUM)"
        if os.environ.get("PIXELVIT_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the package only)")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


IMAGES_JS = """() => [...document.querySelectorAll('article img, main img')].map(img => {
    const box = img.getBoundingClientRect();
    return {src: img.currentSrc || img.src, complete: img.complete, natural: img.naturalWidth,
            left: box.left, right: box.right, width: box.width, visible: box.width > 0 && box.height > 0};
})"""
ERRORS_JS = "() => document.querySelectorAll('.output.traceback, .output.error, .output.stderr').length"
LINKS_JS = "() => [...document.querySelectorAll('a[href]')].map(a => a.href)"
PAGES = ["index", *(f"notebooks/{name}" for name in NOTEBOOKS), *STUDENT, "results/README", "book/paper"]


@pytest.mark.browser
@pytest.mark.parametrize("path", PAGES)
def test_page_in_a_browser(browser, server, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    foreign = []

    def route(request_route):
        host = urlparse(request_route.request.url).hostname
        if host in ("127.0.0.1", None):
            return request_route.continue_()
        foreign.append(request_route.request.url)
        return request_route.abort()

    page.route("**/*", route)
    try:
        page.goto(urljoin(server, f"{path}.html"), wait_until="load", timeout=60_000)
        page.wait_for_function("() => [...document.images].every(img => img.complete)", timeout=30_000)
        images = page.evaluate(IMAGES_JS)
        width = page.evaluate("() => document.documentElement.clientWidth")
        local = [img for img in images if urlparse(img["src"]).hostname == "127.0.0.1"]
        for img in local:
            assert img["natural"] > 0, f"{path}: {img['src']} did not load"
            assert img["visible"] and img["left"] >= 0 and img["right"] <= width + 1, f"{path}: {img} clipped"
        if path.startswith("notebooks/"):
            name = path.split("/")[1]
            assert len(local) >= image_outputs(REPO / "notebooks" / f"{name}.ipynb")
        if path == "results/README":
            assert len(local) >= 2
        assert page.evaluate(ERRORS_JS) == 0, f"{path} shows error output"
        hosts = {urlparse(url).hostname for url in foreign}
        assert hosts <= (ALLOWED_HOSTS if path == "index" else set()), f"{path} asked other hosts: {foreign}"
        internal = {href.split("#")[0] for href in page.evaluate(LINKS_JS) if href.startswith(server)}
        assert len(internal) > len(PAGES) // 2, f"{path}: {len(internal)} links to the site (no navigation?)"
        for href in sorted(internal):
            response = page.request.get(href)
            assert response.status == 200, f"{path}: the link {href} answers {response.status}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{path.replace('/', '--')}.png"), full_page=True)
    finally:
        page.close()
