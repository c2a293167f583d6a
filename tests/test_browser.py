"""The explorer in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Starts JupyterLab on 127.0.0.1 (a free port, a random token, a temporary root holding a copy of
notebooks/07_explorer.ipynb, temporary settings so no user state leaks in), opens the notebook in
headless Chromium, runs all cells, moves the patch-size slider with the keyboard and checks that the
token count and the drawn picture change. A screenshot goes to test-artifacts/explorer.png.

Needs the system Chromium and Playwright's Python package; never `playwright install` (it downloads a
browser). Skipped, with the reason, when either is missing:

    apt-get install -y --no-install-recommends chromium      # Debian / Ubuntu: /usr/bin/chromium
    pip install playwright                                    # only the Python package
    pytest -m browser tests/test_browser.py

PIXELVIT_CHROMIUM=/path/to/chrome picks another Chromium-based browser.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_explorer.ipynb"
SCREENSHOT = REPO / "test-artifacts" / "explorer.png"
# committed figures that a student opens in JupyterLab: screenshots land in test-artifacts/figures/
FIGURES = {f"{path.parent.name}-sweep.png": path for path in sorted(REPO.glob("results/*/sweep.png"))}
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions",
]
SERVER_START_S = 120  # JupyterLab start on a loaded 2-core machine
RUN_ALL_S = 300  # kernel start + imports + every cell of the explorer notebook


def find_chromium() -> str | None:
    candidates = [os.environ.get("PIXELVIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for candidate in filter(None, candidates):
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server and kernels), SIGKILL what is left after 20 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_jupyter_dirs(root: Path) -> dict:
    """Temporary Jupyter config, data (a python3 kernelspec running *this* Python) and Lab settings."""
    kernel_dir = root / "data" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
    }))
    # no news / update toasts over the notebook
    notification = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (root / "config").mkdir()
    return {
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_PATH": str(root / "data"),
        "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "IPYTHONDIR": str(root / "ipython"),
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }


@pytest.fixture
def jupyterlab(tmp_path):
    """A running JupyterLab serving a copy of the explorer notebook: yields (base URL, token)."""
    pytest.importorskip("jupyterlab")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOK, notebooks / NOTEBOOK.name)
    for name, figure in FIGURES.items():
        shutil.copy(figure, notebooks / name)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, **write_jupyter_dirs(tmp_path / "jupyter")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],  # CI containers run as root
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=notebooks,
        start_new_session=True,  # its own process group: the kernels it starts are stopped with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(1)
        yield base, token
    finally:
        stop_process_group(server)
        log.close()


@pytest.fixture
def browser_page(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        reason = ("no Chromium found (install it: apt-get install -y --no-install-recommends chromium, "
                  "or set PIXELVIT_CHROMIUM)")
        if os.environ.get("PIXELVIT_REQUIRE_BROWSER"):  # .ci/run sets it: CI must not skip this test
            pytest.fail(reason)
        pytest.skip(reason)
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python "
                                         "package only; never `playwright install`)")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


KERNEL_IDLE_JS = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.sessionContext && widget.sessionContext.session
        && widget.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle' && widget.context.path.endsWith('07_explorer.ipynb');
}"""
PROMPTS_JS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim())"


def wait_all_cells_ran(page, timeout_s: float):
    """Until every code cell shows an execution count ([1]: ...), none queued ([*]:) or unrun ([ ]:)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = page.evaluate(PROMPTS_JS)
        if prompts and all(p[1:-2].strip().isdigit() for p in prompts):
            return prompts
        stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        for index in range(stderr.count()):
            text = stderr.nth(index).inner_text()
            if "Traceback" in text or "Error" in text:
                pytest.fail(f"a cell raised an error:\n{text[:3000]}")
        time.sleep(1)
    pytest.fail(f"cells did not finish within {timeout_s} s; prompts: {page.evaluate(PROMPTS_JS)}")


def test_explorer_slider_redraws(browser_page, jupyterlab):  # browser first: a missing Chromium skips at once
    base, token = jupyterlab
    page = browser_page
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=SERVER_START_S * 1000)
    # the notebook panel is current and its kernel is idle: only then does run-all reach the kernel
    page.wait_for_function(KERNEL_IDLE_JS, timeout=SERVER_START_S * 1000)
    # fire and forget: execute() returns a promise that evaluate() would otherwise wait on, without a timeout
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    wait_all_cells_ran(page, RUN_ALL_S)

    app = page.locator(".pixelvit-explorer").first
    app.wait_for(state="visible", timeout=60_000)
    tokens = app.locator(".pixelvit-tokens")
    picture = app.locator("img").first
    # ipywidgets.Image shows its PNG through a blob: URL; a new picture gets a new URL
    page.wait_for_function("() => (document.querySelector('.pixelvit-explorer img')?.src || '').length > 0")
    before_text, before_src = tokens.inner_text(), picture.get_attribute("src")
    assert before_text == "197 tokens", before_text  # the notebook's default: patch 16 on 224 x 224

    handle = app.locator(".widget-slider .noUi-handle, .widget-hslider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")  # 16 -> 8
    handle.press("ArrowRight")  # 8 -> 4
    # each key press redraws once; wait for the second redraw (patch 4), not just the first change
    page.wait_for_function(
        "want => document.querySelector('.pixelvit-explorer .pixelvit-tokens')?.textContent === want",
        arg="3,137 tokens", timeout=120_000,
    )
    page.wait_for_function(
        "before => document.querySelector('.pixelvit-explorer img')?.src !== before", arg=before_src, timeout=120_000,
    )
    after_text = tokens.inner_text()
    assert after_text == "3,137 tokens", after_text  # patch 4: (224 / 4)^2 + 1
    assert app.locator(".widget-readout").first.inner_text().strip() == "4"

    app.scroll_into_view_if_needed()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000


def test_committed_figures_show_whole_in_jupyterlab(browser_page, jupyterlab):
    """Each results/*/sweep.png opens in JupyterLab's image viewer whole (natural size, inside the panel);
    a screenshot of the viewer goes to test-artifacts/figures/ to look at as a student sees it."""
    from PIL import Image

    assert FIGURES, "no committed sweep figures found under results/"
    base, token = jupyterlab
    page = browser_page
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1700, "height": 1200})  # a large laptop screen: room for the figure
    folder = REPO / "test-artifacts" / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    visible_img = "[...document.querySelectorAll('.jp-ImageViewer img')].filter(i => i.offsetParent !== null).pop()"
    for index, (name, path) in enumerate(FIGURES.items()):
        page.goto(f"{base}/lab/tree/{name}?token={token}" + ("&reset" if index == 0 else ""))
        page.wait_for_function(f"() => {{ const i = {visible_img}; return !!i && i.complete && i.naturalWidth > 0; }}",
                               timeout=SERVER_START_S * 1000)
        if index == 0:  # the file browser off: the figure gets the width of the window
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            page.wait_for_timeout(500)
        natural, inside = page.evaluate(f"""() => {{
            const i = {visible_img}, box = i.getBoundingClientRect();
            const panel = i.closest('.jp-ImageViewer').getBoundingClientRect();
            return [[i.naturalWidth, i.naturalHeight], box.left >= panel.left - 1 && box.right <= panel.right + 1
                    && box.top >= panel.top - 1 && box.bottom <= panel.bottom + 1];
        }}""")
        assert tuple(natural) == Image.open(path).size  # the committed figure itself
        assert inside, f"{name} does not fit JupyterLab's panel at 1700 x 1200"
        page.locator(".jp-ImageViewer").filter(has=page.locator("img:visible")).last.screenshot(path=str(folder / name))
        assert (folder / name).stat().st_size > 10_000
