"""The six widgets where learners look at them: JupyterLab 4 in headless Chromium.

The widget tests (tests/test_widgets.py) drive the Python side. This file drives the front
end as a learner would: start JupyterLab on a free loopback port, open
tests/browser/six_widgets.ipynb, Run > Run All Cells, then check in the page's DOM that each
widget's view rendered (its controls and its figure, at the figure's natural size), that
moving a slider / typing / choosing an option changes the view, that the TrainingMonitor
redraws while training runs, and that the widget manager logged no console error. Then the
saved-notebook story: with peftlab's "saveState" setting the saved notebook holds the widget
state, reopens (new kernel) with its widgets, and an untrusted copy with stored snapshots
(python -m peftlab.site snapshot) shows pictures, not `VBox(children=...` text.

The monitor's live redraws are checked by events, not against the clock: the notebook's
training is paced by this test (tests/browser/browser_pacing.py). After each step whose
status line or figure the monitor sent to its view, the kernel waits until this test has seen
it on the page, so every redraw is seen at any machine speed. Deadlines only guard against a
hang; they grow with the measured slowdown (tests/timing.py) and with the step and redraw
times measured here, and running out of time says the machine was slow.

The test of the test: tests/browser/broken_widget.ipynb shows a widget whose figure view
asks for a front-end version JupyterLab does not have, and tests/browser/broken_monitor.ipynb
a TrainingMonitor that stops redrawing after step 2; the same checks must fail on them.

Needs Chromium (`apt-get install -y chromium`; .ci/run installs it) and the `playwright` pip
package pointed at it (Playwright's own browser download is not used). Skips, saying so,
when Chromium is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import timing


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).resolve().parent / "browser"
pacing = _load(HERE / "browser_pacing.py")     # the kernel side of the pacing: its file format
CHROMIUM = (os.environ.get("PEFTLAB_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser")
            or next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                     if os.path.exists(p)), None))
if CHROMIUM is None:
    pytest.skip("Chromium is missing: install it with `apt-get install -y chromium` (.ci/run "
                "does this) or point PEFTLAB_CHROMIUM at a Chromium binary to run the browser "
                "tests", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is "
                               "missing: pip install -e '.[dev]'")

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# each widget: its container class (peftlab-<name>), the controls its view must show
VIEWS = {
    "modelinspector": [".widget-text input", ".widget-slider", ".widget-checkbox",
                       ".widget-dropdown select", "table"],
    "trainingmonitor": [".widget-html"],
    "loraexplorer": [".widget-slider", ".widget-select-multiple", ".widget-checkbox"],
    "selectionexplorer": [".widget-slider", ".widget-toggle-buttons", ".widget-dropdown select"],
    "rankallocationviewer": [".widget-slider", "button"],
    "prefixviewer": [".widget-text input", ".widget-dropdown select"],
}
HAS_FIGURE = set(VIEWS) - {"modelinspector"}
WIDGET_ERROR = re.compile(r"widget|model|view|comm|jupyter-widgets", re.IGNORECASE)
WAIT_MS = 60_000             # Playwright's wait for an element, idle; times the slowdown


# --- JupyterLab and the browser -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server of our own: loopback port, random token, every Jupyter folder
    (settings, workspaces, runtime, notebook signatures) in a temporary directory."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.pace = root / ".pace"            # the files that pace training (browser_pacing.py)
        self.pace.mkdir()
        settings = root / ".jupyter" / "app-settings"
        from peftlab.widgets.lab_settings import install
        install(settings)                     # the shipped setting: save widget state
        # test only: render every cell (JupyterLab 4 leaves off-screen cells out of the DOM)
        (settings / "overrides.d" / "zz-browser-test.json").write_text(json.dumps(
            {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}))
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter" / "config"),
               "JUPYTER_DATA_DIR": str(root / ".jupyter" / "data"),
               "JUPYTER_RUNTIME_DIR": str(root / ".jupyter" / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(root / ".jupyter" / "user-settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(root / ".jupyter" / "workspaces"),
               "PEFTLAB_BROWSER_PACE": str(self.pace), "OMP_NUM_THREADS": "1"}
        self.log = open(root / ".jupyter-lab.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True", f"--LabApp.app_settings_dir={settings}",
             "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        limit = timing.budget(90)
        deadline = time.monotonic() + limit
        while True:
            try:
                self.api("GET", "status")
                break
            except OSError:
                if self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("JupyterLab did not start:\n" +
                                       (root / ".jupyter-lab.log").read_text()[-3000:])
                if time.monotonic() > deadline:
                    self.close()
                    timing.slow("JupyterLab's start-up", limit, "Its log ends: " +
                                (root / ".jupyter-lab.log").read_text()[-1500:])
                time.sleep(0.5)

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timing.budget(10)) as r:
            body = r.read()
        return json.loads(body) if body else None

    def reset_pace(self) -> None:
        """Forget what an earlier notebook run sent and saw (call before Run All Cells)."""
        for f in self.pace.iterdir():
            f.unlink()

    def shutdown_kernels(self) -> None:
        for k in self.api("GET", "kernels"):
            self.api("DELETE", f"kernels/{k['id']}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for nb in [*HERE.glob("*.ipynb"), HERE / "browser_pacing.py"]:
        shutil.copy(nb, root / nb.name)
    server = Lab(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """One notebook open in a browser tab, with the console errors the tab logged."""

    def __init__(self, browser, lab: Lab, name: str):
        self.page = browser.new_page(viewport={"width": 1800, "height": 1100})
        self.errors: list[str] = []
        self.dialogs: list[str] = []     # the text of every JupyterLab dialog we closed
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.wait_ms = WAIT_MS * timing.slowdown()
        self.page.set_default_timeout(self.wait_ms)
        self.page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")   # reset: no other tabs
        self.page.wait_for_selector(".jp-Notebook .jp-CodeCell")

    def wait_kernel_idle(self) -> None:
        """Wait until the notebook's kernel is started and idle, answering a "Select Kernel"
        dialog meanwhile (on a busy machine the kernel list can arrive after the notebook
        opens, and JupyterLab then asks; answered only after Run All was queued, it replaced
        the kernel and the queued run was lost)."""
        limit = self.wait_ms / 1000
        deadline = time.monotonic() + limit
        idle = self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
        name = self.page.locator(".jp-Toolbar-kernelName")
        while True:
            self.dismiss_dialogs()
            if idle.count() and not (name.count() and "No Kernel" in name.first.inner_text()):
                return
            if time.monotonic() > deadline:
                timing.slow("starting the notebook's kernel", limit,
                            f"Dialogs closed: {self.dialogs}")
            time.sleep(0.3)

    def dismiss_dialogs(self) -> None:
        """Close any JupyterLab dialog that would intercept the next click, keeping its text
        (a kernel choice is accepted: the notebook names an installed kernel; anything else is
        closed with its reject/accept button). A dialog reporting a dead or failed kernel
        fails the test with its text, since the checks after it would be meaningless."""
        for _ in range(5):
            dialog = self.page.locator(".jp-Dialog")
            if not dialog.count() or not dialog.first.is_visible():
                return
            text = " ".join(dialog.first.inner_text().split())
            self.dialogs.append(text)
            if re.search(r"kernel (appears to have )?died|error starting kernel", text, re.IGNORECASE):
                raise AssertionError(f"JupyterLab reported a kernel failure: {text[:400]}")
            accept = dialog.first.locator(".jp-Dialog-button.jp-mod-accept")
            reject = dialog.first.locator(".jp-Dialog-button.jp-mod-reject")
            button = accept if ("kernel" in text.lower() or not reject.count()) else reject
            if button.count():
                button.first.click()
            else:
                self.page.keyboard.press("Escape")
            try:                    # gone before the next look (not answered twice)
                dialog.first.wait_for(state="hidden", timeout=self.wait_ms)
            except sync_api.TimeoutError:
                pass

    def click(self, locator) -> None:
        """Click, closing any dialog that pops up over the target meanwhile."""
        deadline = time.monotonic() + self.wait_ms / 1000
        while True:
            self.dismiss_dialogs()
            try:
                locator.click(timeout=5_000)
                return
            except sync_api.TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not click {locator} in {self.wait_ms / 1000:.0f}"
                                         f" s (dialogs closed meanwhile: {self.dialogs}; "
                                         f"{timing.machine_note()})") from None

    def menu(self, top: str, item: str) -> None:
        for _ in range(6):
            self.click(self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")))
            try:
                self.page.locator(".lm-Menu-itemLabel",
                                  has_text=re.compile(f"^{item}$")).click(timeout=10_000)
                return
            except sync_api.TimeoutError:
                self.page.keyboard.press("Escape")     # a dialog closed the menu: open it again
        raise AssertionError(f"could not choose {top} > {item} (dialogs: {self.dialogs})")

    def run_all(self) -> None:
        """Run > Run All Cells, once the kernel is idle; again if the click came too early
        (the command is disabled until the notebook panel and kernel are ready)."""
        for _ in range(5):
            self.wait_kernel_idle()
            self.menu("Run", "Run All Cells")
            deadline = time.monotonic() + timing.budget(10)
            while time.monotonic() < deadline:
                if any(p.strip() not in ("", "[ ]:") for p in self.prompts()):
                    return
                time.sleep(0.2)
            self.page.keyboard.press("Escape")
        raise AssertionError(f"Run All Cells did not start the notebook (dialogs: {self.dialogs})")

    def prompts(self) -> list[str]:
        return self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()

    def wait_all_run(self, idle_seconds: float = 150) -> None:
        """Wait until every cell has run. A cell that fails ends Run All, leaving later cells
        unnumbered, so this fails at once, not at the deadline."""
        limit = timing.budget(idle_seconds)
        deadline = time.monotonic() + limit
        while True:
            p = self.prompts()
            if all(re.fullmatch(r"\[\d+\]:", x.strip()) for x in p):
                return
            if not any("*" in x for x in p):
                raise AssertionError(f"cells did not finish: {p} (a cell failed, or the "
                                     f"kernel restarted? dialogs closed: {self.dialogs})")
            if time.monotonic() > deadline:
                timing.slow("running all cells", limit, f"Prompts: {p}")
            time.sleep(0.3)

    def box(self, name: str):
        return self.page.locator(f".peftlab-{name}")

    def img_src(self, name: str) -> str | None:
        img = self.box(name).locator("img")
        return img.first.get_attribute("src") if img.count() else None

    def text(self, name: str) -> str:
        return self.box(name).inner_text()

    def view(self, name: str) -> tuple:
        """What the learner sees of a widget: its text and its figure."""
        return self.text(name), self.img_src(name)

    def wait_changed(self, name: str, before: str, what: str, read) -> str:
        limit = timing.budget(30)
        deadline = time.monotonic() + limit
        while (now := read()) == before:
            assert time.monotonic() < deadline, (
                f"{name}: the view did not change after {what} in {limit:.0f} s (generous "
                f"for this machine now: {timing.machine_note()})")
            time.sleep(0.2)
        return now


# --- the checks (also run, and expected to fail, on the broken notebook) ---------------------

def check_view(page: Page, name: str) -> None:
    """The widget's view rendered: its container, every control, and its figure drawn at
    natural size (not stretched, not collapsed)."""
    box = page.box(name)
    assert box.count() == 1, f"{name}: {box.count()} rendered views (expected 1)"
    for sel in VIEWS[name]:
        assert box.locator(sel).count() >= 1, f"{name}: its view lacks {sel}"
    text = box.inner_text()
    assert "Error" not in text and "model not found" not in text, f"{name}: {text[:300]}"
    if name in HAS_FIGURE:
        img = box.locator("img")
        assert img.count() >= 1, f"{name}: no figure in its view"
        nw, nh, cw, ch = img.first.evaluate(
            "i => [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]")
        assert nw > 200 and nh > 100, f"{name}: figure not drawn ({nw}x{nh})"
        assert (cw, ch) == (nw, nh), f"{name}: figure shown at {cw}x{ch}, natural {nw}x{nh}"


def watch_monitor(page: Page, pace: Path) -> tuple[set, set, str]:
    """Follow the TrainingMonitor's view while fit runs, pacing the kernel: after each thing
    the monitor sent (pace/sent: the step of its status line, how many pictures it has sent),
    the kernel waits until pace/seen says the page shows it (tests/browser/browser_pacing.py).
    Returns (the steps shown with an intermediate status, the figures shown beside them,
    how the watch ended).
    Ends when the page shows the last step or no cell runs any more.

    Two waits, each guarded by a generous deadline: for the kernel to send something new
    (start-up, a training step: running out fails as a slow machine) and for the page to show
    what was sent (running out fails as a view that did not redraw). Each deadline is the
    idle time times the slowdown measured now, and at least 20 times the slowest such wait
    measured so far in this run."""
    seen_steps, seen_images, pictures = set(), set(), []
    shown, sent, caught_up = {"step": -1, "pictures": 0}, {}, True
    since, gaps, lags = time.monotonic(), [], []    # gaps: between sends; lags: send to shown
    limit = timing.budget(300)                        # the first send: kernel start-up, imports
    while True:
        box = page.box("trainingmonitor")
        if box.count():
            m = re.search(r"step (\d+)/(\d+)", page.text("trainingmonitor"))
            src = page.img_src("trainingmonitor")
            if src and src not in pictures:
                pictures.append(src)
            if m and m.group(1) != m.group(2):
                seen_steps.add(int(m.group(1)))
                seen_images.add(src)
            now_shown = {"step": int(m.group(1)) if m else 0, "pictures": len(pictures)}
            if now_shown != shown:
                shown = now_shown
                pacing.write(pace / "seen", shown)
            if m and m.group(1) == m.group(2):
                ended = f"the page showed the last step, {m.group(0)}"
                break
        now = time.monotonic()
        if (new := pacing.read(pace / "sent")) and new != sent:   # the kernel sent more
            if sent:
                gaps.append(now - since)
            sent, since, caught_up = new, now, False
            limit = max(timing.budget(60), 20 * max(lags, default=0))
        if not caught_up and shown["step"] >= sent["step"] \
                and shown["pictures"] >= sent["pictures"]:
            lags.append(now - since)
            since, caught_up = now, True
            limit = max(timing.budget(60), 20 * max(gaps, default=0))
        if not caught_up:
            assert now - since < limit, (
                f"the monitor's view did not redraw: the kernel sent step {sent['step']} "
                f"(picture {sent['pictures']}) {now - since:.0f} s ago and the page still "
                f"shows step {shown['step']} (picture {shown['pictures']}); the slowest redraw "
                f"before took {max(lags, default=0):.1f} s ({timing.machine_note()})")
        else:
            prompts = page.prompts()
            if not any("*" in x for x in prompts):
                ended = (f"no cell was running any more: prompts {prompts}, dialogs "
                         f"closed {page.dialogs}")
                break                       # the run is over (or a cell failed): check it
            if now - since > limit:
                timing.slow("the kernel's next monitor update" + (
                    f" after step {sent['step']}" if sent else " (start-up)"), limit,
                    f"Slowest step so far {max(gaps, default=0):.1f} s; steps seen "
                    f"{sorted(seen_steps)}.")
        time.sleep(0.1)
    return seen_steps, seen_images, ended


def check_monitor(page: Page, pace: Path) -> None:
    """The monitor redraws while fit runs (status line and figure), not only at the end."""
    seen_steps, seen_images, ended = watch_monitor(page, pace)
    print(f"         the page showed {len(seen_steps)} steps and {len(seen_images)} figures "
          f"during training; the watch ended when {ended}")
    assert len(seen_steps) >= 3, (f"status seen at steps {sorted(seen_steps)} during training "
                                  f"(the watch ended when {ended})")
    assert len(seen_images) >= 2, (f"the figure was not redrawn during training (the watch "
                                   f"ended when {ended})")


def check_console(errors: list[str]) -> None:
    bad = [e for e in errors if WIDGET_ERROR.search(e)]
    assert not bad, "the widget manager logged console errors:\n" + "\n".join(bad[:5])


def check_no_widget_text(page: Page) -> None:
    shown = page.page.locator(".jp-OutputArea-output").all_inner_texts()
    bad = [t for t in shown if "VBox(children=" in t or "Error displaying widget" in t]
    assert not bad, f"widgets shown as text: {bad[0][:200]}"


# --- the tests -----------------------------------------------------------------------------

def test_six_widgets_render_respond_and_survive_a_save(lab, browser):
    t0 = time.time()
    page = Page(browser, lab, "six_widgets.ipynb")
    lab.reset_pace()
    page.run_all()
    print(f"{time.time() - t0:5.1f} s  running all cells")

    # the monitor redraws while fit runs (status line and figure), not only at the end
    check_monitor(page, lab.pace)
    page.wait_all_run()
    assert "step 32/32" in page.text("trainingmonitor")
    print(f"{time.time() - t0:5.1f} s  all cells ran; the monitor redrew during training")

    for name in VIEWS:
        check_view(page, name)
    check_no_widget_text(page)

    # learner actions change what the view shows
    insp = page.box("modelinspector")
    insp.locator(".widget-text input").fill("query")
    page.wait_changed("modelinspector", "", "typing a filter", lambda: (
        "bert.encoder.layer.1.attention.self.query" in page.text("modelinspector")) or "")
    before = page.img_src("loraexplorer")
    page.box("loraexplorer").locator(".noUi-handle").first.focus()
    page.page.keyboard.press("ArrowRight")                   # rank r: 8 -> 9
    page.wait_changed("loraexplorer", before, "moving the rank slider",
                      lambda: page.img_src("loraexplorer"))
    assert "r=9" in page.text("loraexplorer")
    before = page.view("selectionexplorer")
    page.box("selectionexplorer").get_by_role("button", name="row", exact=True).click()
    page.wait_changed("selectionexplorer", before, "choosing row granularity",
                      lambda: page.view("selectionexplorer"))
    assert "row selection" in page.text("selectionexplorer")
    before = page.img_src("prefixviewer")
    page.box("prefixviewer").locator(".widget-dropdown select").nth(1).select_option(label="2")
    page.wait_changed("prefixviewer", before, "choosing head 2",
                      lambda: page.img_src("prefixviewer"))
    before = page.text("rankallocationviewer")
    page.box("rankallocationviewer").locator(".noUi-handle").first.focus()
    page.page.keyboard.press("Home")                         # step slider to the first step
    page.wait_changed("rankallocationviewer", before, "moving the step slider",
                      lambda: page.text("rankallocationviewer"))
    check_console(page.errors)
    print(f"{time.time() - t0:5.1f} s  six views checked, five respond to the controls")

    # save: peftlab's saveState setting stores the widget state in the notebook
    page.menu("File", "Save Notebook")
    path, limit = lab.root / "six_widgets.ipynb", timing.budget(30)
    deadline = time.monotonic() + limit
    while not json.loads(path.read_text()).get("metadata", {}).get("widgets"):
        assert time.monotonic() < deadline, (f"saving did not store the widget state "
                                             f"(saveState) in {limit:.0f} s "
                                             f"({timing.machine_note()})")
        time.sleep(0.3)
    saved = json.loads(path.read_text())
    state = saved["metadata"]["widgets"][WIDGET_STATE]["state"]
    views = [o["data"][WIDGET_VIEW]["model_id"] for c in saved["cells"]
             for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 6 and all(v in state for v in views)

    # reopen with a new kernel: the widgets come back from the saved state
    page.page.close()
    lab.shutdown_kernels()
    page = Page(browser, lab, "six_widgets.ipynb")
    for name in VIEWS:
        page.box(name).wait_for()
        check_view(page, name)
    check_no_widget_text(page)
    check_console(page.errors)
    page.page.close()
    print(f"{time.time() - t0:5.1f} s  saved, reopened with a new kernel: views restored")

    # an untrusted copy (not signed here) with stored snapshots shows pictures, not text
    from peftlab.site import snapshot
    shutil.copy(path, lab.root / "snapshots.ipynb")
    assert snapshot([lab.root / "snapshots.ipynb"]) == {str(lab.root / "snapshots.ipynb"): 6}
    page = Page(browser, lab, "snapshots.ipynb")
    snaps = page.page.locator(".jp-OutputArea-output .peftlab-widget-snapshot")
    snaps.nth(5).wait_for()
    assert snaps.count() == 6 and page.box("loraexplorer").count() == 0    # untrusted: no view
    for i in range(6):
        assert snaps.nth(i).locator("img").count() + snaps.nth(i).locator("table").count()
    check_no_widget_text(page)
    page.page.close()
    lab.shutdown_kernels()
    print(f"{time.time() - t0:5.1f} s  untrusted copy shows the stored snapshots")
    limit = 200 * timing.worst()           # 200 s idle, times the worst slowdown measured
    assert time.time() - t0 < limit, (f"the browser test took {time.time() - t0:.0f} s, over "
                                      f"{limit:.0f} s ({timing.machine_note()})")


def test_the_checks_catch_a_broken_widget(lab, browser):
    """The test of the test: a figure view whose front-end version JupyterLab lacks."""
    page = Page(browser, lab, "broken_widget.ipynb")
    page.run_all()
    page.wait_all_run()
    page.box("loraexplorer").wait_for()
    with pytest.raises(AssertionError, match="loraexplorer: no figure"):
        check_view(page, "loraexplorer")
    deadline = time.monotonic() + timing.budget(10)
    while not any(WIDGET_ERROR.search(e) for e in page.errors) and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(AssertionError, match="console errors"):
        check_console(page.errors)
    page.page.close()
    lab.shutdown_kernels()


def test_the_checks_catch_a_monitor_that_stops_redrawing(lab, browser):
    """The test of the monitor check: a TrainingMonitor that redraws nothing after step 2
    until training ends. The paced kernel has nothing to wait for then, so the run goes on
    at full speed and the check fails on what the page showed, not on a deadline."""
    page = Page(browser, lab, "broken_monitor.ipynb")
    lab.reset_pace()
    page.run_all()
    with pytest.raises(AssertionError,
                       match=re.escape("status seen at steps [1, 2] during training")) as e:
        check_monitor(page, lab.pace)
    print(f"         the broken monitor fails as it should: {e.value}")
    page.wait_all_run()
    assert "step 32/32" in page.text("trainingmonitor")   # it trained; only the redraws stopped
    page.page.close()
    lab.shutdown_kernels()


# --- the static course site: math drawn as MathML, diagrams shown ---------------------------

SITE_CHECK = """() => {
  const md = [...document.querySelectorAll('.jp-RenderedMarkdown')];
  const maths = md.flatMap(e => [...e.querySelectorAll('math')]);
  const fracs = maths.flatMap(m => [...m.querySelectorAll('mfrac')]).map(f => [
      f.children[0].getBoundingClientRect().bottom, f.children[1].getBoundingClientRect().top]);
  return {
    maths: maths.length,
    empty: maths.filter(m => { const r = m.getBoundingClientRect();
                               return !(r.width > 0 && r.height > 0); }).length,
    display: maths.length ? getComputedStyle(maths[0]).display : '',
    fracs: fracs.length, stacked: fracs.filter(([num, den]) => num <= den + 1).length,
    text: md.map(e => e.innerText).join('\\n'),
    images: [...document.querySelectorAll('.jp-RenderedMarkdown img')].map(
        i => [i.alt, i.naturalWidth, i.getBoundingClientRect().width]),
  };
}"""


def check_site_math(page, formulas: int) -> dict:
    """The markdown of a site page shows `formulas` MathML formulas, drawn as MathML (laid out
    by the browser's MathML engine, each with a size, fractions one part above the other), and
    no TeX source as text."""
    got = page.evaluate(SITE_CHECK)
    raw = re.findall(r"\$\$?\\[A-Za-z]+", got["text"])
    assert not raw, f"raw TeX visible on the page: {raw[:3]}"
    assert got["maths"] == formulas, f"{got['maths']} <math> elements for {formulas} formulas"
    assert got["display"].endswith("math"), f"<math> laid out as {got['display']!r}, not as MathML"
    assert got["empty"] == 0, f"{got['empty']} of {got['maths']} formulas drawn with no size"
    assert got["fracs"] and got["stacked"] == got["fracs"], \
        f"{got['fracs'] - got['stacked']} of {got['fracs']} fractions not drawn one over the other"
    return got


def test_the_course_site_draws_math_and_diagrams(browser, tmp_path):
    """A built page of the static site (02, LoRA) in Chromium: its formulas are MathML with a
    size and no `$\\` text is left; its diagram is an image that loaded. The same checks fail
    on the page with MathML layout turned off, and on the page with TeX where the math was."""
    import nbformat

    from peftlab import site
    from peftlab.site_math import formulas
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    src = tmp_path / "notebooks"
    shutil.copytree(notebooks / "workshop" / "diagrams", src / "workshop" / "diagrams")
    shutil.copy(notebooks / "02_lora.ipynb", src)
    site.build(tmp_path / "site", notebooks=src, quiet=True)
    page_path = tmp_path / "site" / "02_lora.html"
    n = sum(len(formulas(c.source)) for c in nbformat.read(src / "02_lora.ipynb", 4).cells
            if c.cell_type == "markdown")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(WAIT_MS * timing.slowdown())
    page.goto(page_path.as_uri())
    got = check_site_math(page, n)
    assert got["images"] and all(w > 0 and shown > 0 for _, w, shown in got["images"]), \
        f"an image did not load: {got['images']}"
    assert any("LoRA" in alt for alt, _, _ in got["images"])
    page.add_style_tag(content="math, math * {display: inline !important}")   # no MathML layout
    with pytest.raises(AssertionError, match="not as MathML"):
        check_site_math(page, n)
    html = page_path.read_text(encoding="utf-8")
    page.set_content(re.sub(r"<math\b.*?</math>", r"$\\alpha$", html, flags=re.DOTALL))
    with pytest.raises(AssertionError, match="raw TeX visible"):
        check_site_math(page, n)
    page.close()
    print(f"         site page 02: {n} formulas drawn as MathML, {got['fracs']} fractions, "
          f"{len(got['images'])} diagram(s) loaded")
