"""The course in JupyterLab, as a learner meets it, in a real browser.

`jupyter lab` (from this environment, on `notebooks/`, with the test session's private state
directory and broker port, so its kernels never touch a learner's broker) driven by Playwright
in Debian's headless Chromium, with a fresh JupyterLab configuration (no saved workspace, no
autosave, no news or update checks). Two depths:

- render (always): every notebook is opened from the file browser in course order; its first
  heading must be the `# ...` line of its first cell, each of its mermaid diagrams must be drawn
  (JupyterLab 4.1 and later draw them), no dialog may appear and nothing may be saved. One
  screenshot each in test-artifacts/lab/NN_name.png.
- run (opt-in: CLICKSTREAM_LAB_RUN=1 runs every notebook, CLICKSTREAM_LAB_RUN=00,02 those with
  these prefixes): each notebook is opened, its outputs cleared and Run > Run All Cells chosen
  from the menu; every code cell must then have run once, in order, without an error, within
  15 minutes. Its end is saved to test-artifacts/lab/NN_name-run.png, then File > Close and
  Shut Down Notebook, discarding the changes: the file on disk must be unchanged.

Each depth prints a table (notebook, seconds, screenshot) and writes it to
test-artifacts/lab/render.md or walkthrough.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from clickstream.course.runner import NOTEBOOKS_DIR, course_notebooks
from clickstream.local.broker import free_port
from tests.browser.chromium import chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "lab"
JUPYTER = str(Path(sys.executable).with_name("jupyter"))
VIEWPORT = {"width": 1440, "height": 900}
RUN_TIMEOUT_S = 15 * 60  # one notebook, Run All Cells to the last cell
STUCK_S = 120  # kernel idle, cells queued and nothing moving: their requests were lost
RENDER_TIMEOUT_S = 60  # one notebook, double-click to drawn (usually 1 to 2 s)

# A fresh JupyterLab's settings but three: it would save the notebook being run every two
# minutes (it must stay as it is on disk), keep a closed notebook's kernel running, and ask
# for and fetch news from the internet.
USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"kernelShutdown": True},
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def notebooks_to_run() -> list[Path] | None:
    """The notebooks CLICKSTREAM_LAB_RUN asks for (1 or all: every one), or None if unset."""
    chosen = os.environ.get("CLICKSTREAM_LAB_RUN", "").strip()
    if not chosen or chosen == "0":
        return None
    prefixes = [p.strip() for p in chosen.split(",") if p.strip()]
    only = None if prefixes in (["1"], ["all"]) else prefixes
    return course_notebooks(only, include_solutions=False)


TO_RUN = notebooks_to_run()


# --- the JupyterLab server and the browser ------------------------------------------------


@dataclass
class LabServer:
    url: str
    token: str
    log: Path
    runtime_dir: Path

    def api(self, path: str, method: str = "GET"):
        url = f"{self.url}/api/{path}?token={self.token}"
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return json.load(r) if r.status == 200 else None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """`jupyter lab` on notebooks/, on a free port of 127.0.0.1, with a token and a fresh
    configuration; stopped at the end with its kernels."""
    home = tmp_path_factory.mktemp("jupyterlab")
    for name, values in USER_SETTINGS.items():
        path = home / "config" / "lab" / "user-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        **os.environ,  # CLICKSTREAM_STATE_DIR and CLICKSTREAM_KAFKA_PORT of the test session
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        JUPYTER,
        "lab",
        str(NOTEBOOKS_DIR),
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        # window.jupyterapp: the notebook's model, to read its error outputs (below)
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # checkpoints would otherwise go to notebooks/.ipynb_checkpoints
        f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = home / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
    )
    server = LabServer(f"http://127.0.0.1:{port}", token, log_path, home / "runtime")
    deadline = time.monotonic() + 120
    while True:
        try:
            server.api("status")
            break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc, server)
            log.close()
            pytest.fail(f"jupyter lab did not start:\n{server.log_tail()}")
        time.sleep(0.3)
    yield server
    stop_server(proc, server)
    log.close()


def stop_server(proc: subprocess.Popen, server: LabServer) -> None:
    """Shut its kernels down, then SIGTERM the server; then anything left, by pid."""
    if proc.poll() is None:
        # One the server is still starting can hold its own shutdown up for a minute.
        with contextlib.suppress(OSError):
            for kernel in server.api("kernels"):
                server.api(f"kernels/{kernel['id']}", method="DELETE")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Kernels run in sessions of their own; theirs are the connection files in our runtime dir.
    for kernel in psutil.process_iter(["cmdline"]):
        if any(str(server.runtime_dir) in part for part in kernel.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                kernel.kill()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def lab(browser, lab_server):
    """A tab with JupyterLab loaded and its file browser showing notebooks/."""
    page = browser.new_page(viewport=VIEWPORT)
    lab = Lab(page, lab_server)
    page.on("request", lab.note_write)
    # reset: start from an empty workspace, not the tabs an earlier test left open
    page.goto(f"{lab_server.url}/lab?reset&token={lab_server.token}")
    try:
        lab.listing_item("00_").first.wait_for(timeout=120_000)
    except Exception:
        page.screenshot(path=str(artifact("lab-failure.png")))
        pytest.fail(f"JupyterLab did not show its file browser:\n{lab_server.log_tail()}")
    yield lab
    page.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


# --- what a learner does in JupyterLab, and what the page shows ------------------------------

# The first heading, as shown (without its "¶" anchor), and the mermaid diagrams of the open
# notebook. A diagram that fails to parse is drawn as a warning holding the parser's error.
RENDERED = """() => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel) return null;
  const h1 = panel.querySelector('.jp-MarkdownCell .jp-RenderedMarkdown h1');
  let title = null;
  if (h1 && h1.getBoundingClientRect().height > 0) {
    const copy = h1.cloneNode(true);
    copy.querySelectorAll('.jp-InternalAnchorLink').forEach(a => a.remove());
    title = copy.textContent.trim();
  }
  const mermaid = Array.from(panel.querySelectorAll('.jp-RenderedMermaid'));
  return {
    title,
    mermaid_drawn: mermaid.filter(m => {
      const img = m.querySelector('img, svg');
      return img && (img.tagName.toLowerCase() === 'svg' || (img.complete && img.naturalWidth > 0));
    }).length,
    mermaid_errors: mermaid.filter(m => m.classList.contains('jp-mod-warning'))
                           .map(m => m.textContent.slice(0, 300)),
  };
}"""

# The input prompts of the open notebook ("[3]:" ran, "[*]:" running or queued, "[ ]:" not
# run), the toolbar's indicator (busy while any of its cells is pending) and the status its
# kernel last reported.
PROMPTS = """(path) => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel) return null;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  let kernel = null;
  for (const widget of (window.jupyterapp ? window.jupyterapp.shell.widgets('main') : [])) {
    if (widget.context && widget.context.path === path && widget.sessionContext) {
      const session = widget.sessionContext.session;
      kernel = session && session.kernel ? session.kernel.status : null;
    }
  }
  return {
    prompts: Array.from(panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
                  .map(p => p.textContent.trim()),
    indicator: indicator ? indicator.getAttribute('data-status') : null,
    kernel,
  };
}"""

# JupyterLab 4.6 draws an exception like any stderr text (data-mime-type
# "application/vnd.jupyter.stderr", the same as a warning), so errors are read from the
# notebook's model instead: the outputs of type "error".
ERRORS = """(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const widget of app.shell.widgets('main')) {
    if (!widget.context || widget.context.path !== path || !widget.content.model) continue;
    const errors = [];
    for (const cell of widget.content.model.cells) {
      const json = cell.toJSON();
      for (const out of json.outputs || []) {
        if (out.output_type === 'error') {
          const first = String(out.evalue || '').split('\\n')[0].slice(0, 300);
          errors.push(`In [${json.execution_count}]: ${out.ename}: ${first}`);
        }
      }
    }
    return errors;
  }
  return null;
}"""


@dataclass
class Expected:
    """What the notebook file says JupyterLab must show."""

    title: str
    mermaid: int

    @classmethod
    def of(cls, path: Path) -> Expected:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        first = "".join(cells[0]["source"]).splitlines()[0] if cells else ""
        markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
        return cls(
            title=re.sub(r"[`*]", "", first.removeprefix("# ")).strip(),
            mermaid=sum(src.count("```mermaid") for src in markdown),
        )


class Lab:
    def __init__(self, page, server: LabServer):
        self.page = page
        self.server = server
        self.writes: list[str] = []  # what the page asked the server to save, rename or delete

    def note_write(self, request) -> None:
        if "/api/contents/" in request.url and request.method in ("PUT", "PATCH", "DELETE"):
            self.writes.append(f"{request.method} {request.url.split('?')[0]}")

    def listing_item(self, name: str):
        return self.page.locator(".jp-DirListing-item", has_text=name)

    def menu(self, top: str, command: str) -> None:
        """Open a menu of the menu bar and choose the item that runs `command`."""
        self.page.get_by_role("menuitem", name=top, exact=True).click()
        self.page.locator(f'.lm-Menu-item[data-command="{command}"]').click()

    def dialogs(self) -> list[str]:
        return self.page.evaluate(
            "() => Array.from(document.querySelectorAll('.jp-Dialog'))"
            ".map(d => d.innerText.replace(/\\s+/g, ' ').trim())"
        )

    def open(self, path: Path) -> None:
        """Double-click the notebook in the file browser."""
        assert not self.page.locator(".jp-NotebookPanel").count(), "a notebook is still open"
        self.listing_item(path.name).dblclick()
        self.page.locator(".jp-NotebookPanel").wait_for(timeout=RENDER_TIMEOUT_S * 1000)

    def wait_rendered(self, expected: Expected) -> dict:
        """Wait until the title and every mermaid diagram are drawn; return what is shown."""
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while True:
            shown = self.page.evaluate(RENDERED) or {}
            done = (
                shown.get("title") is not None
                and shown["mermaid_drawn"] + len(shown["mermaid_errors"]) >= expected.mermaid
            )
            if done or self.dialogs() or time.monotonic() > deadline:
                return shown
            time.sleep(0.1)

    def close_tab(self) -> None:
        """Click the x of the notebook's tab (kernelShutdown, above, stops its kernel)."""
        self.page.locator(".lm-TabBar-tab.lm-mod-current .lm-TabBar-tabCloseIcon").click()
        self.page.locator(".jp-NotebookPanel").wait_for(state="detached")

    def close_without_saving(self, path: Path) -> None:
        """File > Close and Shut Down Notebook; confirm, and discard any changes."""
        self.menu("File", "filemenu:close-and-cleanup")
        deadline = time.monotonic() + 60
        while self.page.locator(".jp-NotebookPanel").count():
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count():
                text = " ".join(self.dialogs())
                if "Save" in text and "Discard" in text:
                    dialog.get_by_role("button", name="Discard").click()
                elif "Shut down the notebook?" in text:
                    dialog.locator(".jp-mod-accept").click()
                else:
                    pytest.fail(f"unexpected dialog while closing {path.name}: {text}")
            if time.monotonic() > deadline:
                pytest.fail(f"{path.name} did not close (dialogs: {self.dialogs()})")
            time.sleep(0.05)
        self.wait_no_kernel(path)

    def kernel_paths(self) -> list[str]:
        return [s.get("path") for s in self.server.api("sessions")]

    def wait_no_kernel(self, path: Path, timeout: float = 60) -> None:
        """Until the server has no session (so no kernel) for this notebook."""
        deadline = time.monotonic() + timeout
        while path.name in self.kernel_paths():
            if time.monotonic() > deadline:
                pytest.fail(f"the kernel of {path.name} is still running")
            time.sleep(0.2)

    def shut_down_kernels_left(self, grace: float = 30) -> None:
        """Kernels still running after `grace` seconds are shut down through the server's API."""
        deadline = time.monotonic() + grace
        while self.kernel_paths() and time.monotonic() < deadline:
            time.sleep(0.2)
        for session in self.server.api("sessions"):
            print(f"shutting down the kernel left running for {session.get('path')}")
            self.server.api(f"sessions/{session['id']}", method="DELETE")

    def wait_kernel(self, path: Path, status: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while (state := self.page.evaluate(PROMPTS, path.name))["kernel"] != status:
            if time.monotonic() > deadline:
                pytest.fail(f"the kernel of {path.name} is {state['kernel']}, not {status}")
            time.sleep(0.2)
        return state

    def scroll_to_end(self) -> None:
        self.page.locator(".jp-NotebookPanel .jp-Cell").last.scroll_into_view_if_needed()
        time.sleep(1)  # let the cells that came into view be painted


def write_table(name: str, title: str, rows: list[tuple[str, float, Path]]) -> str:
    """A Markdown table of (notebook, seconds, screenshot), printed and written to `name`."""
    lines = [f"# {title}", "", "| notebook | seconds | screenshot |", "|---|---:|---|"]
    for notebook, seconds, shot in rows:
        lines.append(f"| {notebook} | {seconds:.1f} | {shot.relative_to(REPO)} |")
    lines.append(f"| total | {sum(r[1] for r in rows):.1f} | |")
    text = "\n".join(lines) + "\n"
    artifact(name).write_text(text)
    print(f"\n{text}")
    return text


# --- the tests -----------------------------------------------------------------------------


def test_every_notebook_renders_in_jupyterlab(lab):
    notebooks = course_notebooks(include_solutions=False)
    assert notebooks, f"no NN_*.ipynb in {NOTEBOOKS_DIR}"
    rows, problems = [], []
    for path in notebooks:
        expected = Expected.of(path)
        shot = artifact(f"{path.stem}.png")
        started = time.monotonic()
        lab.open(path)
        shown = lab.wait_rendered(expected)
        lab.page.screenshot(path=str(shot))
        rows.append((path.stem, time.monotonic() - started, shot))
        found = []
        if dialogs := lab.dialogs():
            found.append(f"a dialog: {dialogs}")
            for button in lab.page.locator(".jp-Dialog .jp-mod-reject").all():
                button.click()
        if shown.get("title") != expected.title:
            found.append(f"title {shown.get('title')!r}, expected {expected.title!r}")
        if shown.get("mermaid_errors"):
            found.append(f"mermaid errors: {shown['mermaid_errors']}")
        elif shown.get("mermaid_drawn", 0) != expected.mermaid:
            found.append(f"{shown.get('mermaid_drawn')} of {expected.mermaid} diagrams drawn")
        if found:
            problems.append(f"{path.name}: " + "; ".join(found) + f" (see {shot})")
        # A tab closed while its kernel is still starting would leave that kernel running.
        lab.wait_kernel(path, "idle")
        lab.close_tab()  # unchanged, so no question; its kernel stops meanwhile
    write_table("render.md", "The notebooks rendered in JupyterLab", rows)
    lab.shut_down_kernels_left()
    assert not lab.writes, f"JupyterLab wrote to the notebooks: {lab.writes}"
    assert not problems, "\n".join(problems)


@pytest.mark.integration
@pytest.mark.spark
@pytest.mark.timeout(len(TO_RUN or ()) * RUN_TIMEOUT_S + 600)
@pytest.mark.skipif(
    TO_RUN is None,
    reason="runs the whole course again in JupyterLab: set CLICKSTREAM_LAB_RUN=1 "
    "(or CLICKSTREAM_LAB_RUN=00,02 for some notebooks)",
)
def test_the_course_runs_in_jupyterlab(lab):
    assert TO_RUN, f"no notebook matches CLICKSTREAM_LAB_RUN={os.environ['CLICKSTREAM_LAB_RUN']}"
    rows = []
    try:
        for path in TO_RUN:
            rows.append(run_in_lab(lab, path))
    finally:
        if rows:
            write_table("walkthrough.md", "The course run in JupyterLab", rows)


def run_in_lab(lab: Lab, path: Path) -> tuple[str, float, Path]:
    """Open, clear, Run All Cells, check, screenshot the end, close unsaved; (name, s, png)."""
    original = path.read_bytes()
    shot = artifact(f"{path.stem}-run.png")
    started = time.monotonic()
    lab.open(path)
    shown = lab.wait_rendered(Expected.of(path))
    assert shown.get("title"), f"{path.name} was not rendered"
    lab.wait_kernel(path, "idle")  # the one JupyterLab starts on opening it
    # The stored outputs carry execution counts already: clear them, so that every count seen
    # afterwards comes from this run.
    lab.menu("Edit", "editmenu:clear-all")
    lab.menu("Run", "runmenu:run-all")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    started_running, finished_since, last, changed = False, None, None, time.monotonic()
    while True:
        state = lab.page.evaluate(PROMPTS, path.name)
        prompts, now = state["prompts"], time.monotonic()
        if prompts != last:
            last, changed = prompts, now
        started_running = started_running or any(p != "[ ]:" for p in prompts)
        queued = prompts.count("[*]:")
        finished = started_running and not queued and state["indicator"] == "idle"
        finished_since = (finished_since or now) if finished else None
        # Idle for 2 s with nothing queued: done, or stopped at a cell that raised.
        if finished_since and now - finished_since > 2:
            break
        problem = None
        if dialogs := lab.dialogs():
            problem = f"a dialog appeared while it ran: {dialogs}"
        elif queued and state["kernel"] == "idle" and now - changed > STUCK_S:
            problem = (
                f"its kernel has been idle for {STUCK_S} s with {queued} cells still queued: "
                "it never answered their execute requests"
            )
        elif now > deadline:
            problem = f"it did not finish within {RUN_TIMEOUT_S} s (kernel {state['kernel']})"
        if problem:
            lab.page.screenshot(path=str(shot))
            pytest.fail(f"{path.name}: {problem}; prompts {prompts} (see {shot})")
        time.sleep(1)
    seconds = time.monotonic() - started
    errors = lab.page.evaluate(ERRORS, path.name)
    lab.scroll_to_end()
    lab.page.screenshot(path=str(shot))
    lab.close_without_saving(path)
    assert not lab.writes, f"JupyterLab wrote to the notebooks: {lab.writes}"
    assert path.read_bytes() == original, f"{path.name} changed on disk"
    assert errors is not None, "JupyterLab did not expose its application (window.jupyterapp)"
    assert not errors, f"{path.name} raised: {errors} (see {shot})"
    counts = [p.removeprefix("[").removesuffix("]:") for p in state["prompts"]]
    assert counts == [str(n) for n in range(1, len(counts) + 1)], (
        f"{path.name}: not every code cell ran once, in order: {state['prompts']}"
    )
    return path.stem, seconds, shot
