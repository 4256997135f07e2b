"""The dashboard in a real browser while the real pipeline fills its store.

Debian's headless Chromium (/usr/bin/chromium, `apt-get install chromium`) driven by Playwright;
`clickstream dashboard` and `clickstream stream` (Spark Structured Streaming reading the test
session's real Kafka broker) as subprocesses, as a learner runs them, the job writing a SQLite
store while a producer thread sends simulated events. The page is opened before any data exists, then must show the
data and keep changing its headline numbers without being reloaded.

A screenshot of the whole page, taken while a second tab is paused, is always written to
test-artifacts/dashboard.png. Notebook 08 shows the same picture from
notebooks/images/dashboard.png, which only changes when asked: run the test with
CLICKSTREAM_UPDATE_NOTEBOOK_IMAGES=1 to copy the new screenshot there, then commit it. The
dashboard reads the store through a relative URL (from its own working directory), so the
picture shows no path of the machine that took it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from clickstream.dashboard import data as dd
from clickstream.local.broker import free_port
from clickstream.serve.store import open_store
from tests.browser.chromium import chromium
from tests.conftest import CLICKSTREAM
from tests.stream_process import kill_group, stream_command
from tests.stream_process import start as start_stream

pytestmark = [pytest.mark.integration, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "test-artifacts" / "dashboard.png"
NOTEBOOK_IMAGE = REPO / "notebooks" / "images" / "dashboard.png"
UPDATE_IMAGES = os.environ.get("CLICKSTREAM_UPDATE_NOTEBOOK_IMAGES") == "1"
HEADLINE = ("Page views / min", "Current window", "Active users", "Conversion", "Error rate")
PRODUCE_RATE = 200.0  # events/s; the simulator's event time runs at 50 events/s, so a
# one-minute window fills in about 15 s of wall time and the headline moves on every 15 s.
# Slow enough that the job keeps up while Chromium and the dashboard share two cores.


@pytest.fixture
def dashboard_url(tmp_path):
    """`clickstream dashboard` on a free port, over a store that does not exist yet."""
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        # the same file, relative to the dashboard's working directory: the page shows the URL
        [CLICKSTREAM, "dashboard", "--port", str(port), "--store", "sqlite:///serving.db"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            proc.kill()
            pytest.fail(f"the dashboard did not start:\n{log.read()}")
        time.sleep(0.3)
    yield url, store_url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def stream_job(tmp_path):
    """Start `clickstream stream` on demand; stopped (SIGTERM, as Ctrl-C) at the end."""
    procs = []
    log = tmp_path / "stream.log"

    def start(topic: str, bootstrap: str, store_url: str) -> subprocess.Popen:
        cmd = stream_command(topic, bootstrap, store_url, tmp_path / "checkpoint")
        procs.append(start_stream(cmd, log))
        return procs[-1]

    def output() -> str:
        return log.read_text()[-3000:] if log.exists() else ""

    start.output = output
    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def headline_values(page) -> dict[str, str]:
    """The headline metrics as shown: label -> value text."""
    values = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(m => [
               (m.querySelector('[data-testid="stMetricLabel"]') || {}).innerText || '',
               (m.querySelector('[data-testid="stMetricValue"]') || {}).innerText || ''])"""
    )
    return {label.strip(): value.strip() for label, value in values if label.strip() in HEADLINE}


def charts_drawn(page) -> bool:
    """Every visible Plotly chart has drawn its traces (stale hidden copies are ignored)."""
    drawn = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
               .filter(c => c.getBoundingClientRect().height > 0)
               .map(c => {
                   const svg = c.querySelector('.main-svg');  // hidden while Plotly redraws
                   return !!svg && getComputedStyle(svg).visibility === 'visible'
                       && c.querySelectorAll('g.trace').length > 0;
               })"""
    )
    return bool(drawn) and all(drawn)


def store_is_quiet(store_url: str, quiet_s: float = 5.0) -> bool:
    """True once the job has read the whole topic (lag 0) and written nothing for `quiet_s`."""
    with open_store(store_url, readonly=True) as store:
        marker = dd.change_marker(store)
        last = dd.job_health(store, 1)  # the windows query's reports: the sessions' have no lag
    if not last or last[0].get("lag") != 0:
        time.sleep(1)
        return False
    time.sleep(quiet_s)
    with open_store(store_url, readonly=True) as store:
        return dd.change_marker(store) == marker


def last_health(store_url: str) -> list[dict]:
    """The job's last few batch reports, for a timeout's message."""
    with open_store(store_url, readonly=True) as store:
        return [
            {k: h.get(k) for k in ("job", "batch_id", "lag", "input_rows", "duration_ms")}
            for h in store.health(limit=3)
        ]


def settled(page) -> bool:
    """No script run in progress: nothing on the page is marked stale."""
    return not page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-stale="true"]'))
               .some(e => e.getBoundingClientRect().height > 0)"""
    )


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")


def sidebar_text(page) -> str:
    """What the sidebar shows (or that there is none), for a timeout's message."""
    return page.evaluate(
        """() => { const s = document.querySelector('[data-testid="stSidebar"]');
                   return s ? `expanded=${s.getAttribute('aria-expanded')}: ${s.innerText}`
                            : 'no sidebar'; }"""
    )


def pause(page) -> None:
    """Switch on Pause in the sidebar and wait until the page says it is paused.

    The switch is found by CSS inside the sidebar, and the tab is reloaded once if it has not
    appeared within 45 s (in one CI run it did not appear in 30 s; the cause is not known, so a
    second failure says what the sidebar held). A synthetic click: a real mouse click can stall
    in headless Chromium on a busy machine.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    switch = page.locator('[data-testid="stSidebar"] input[role="switch"]').first
    try:
        switch.wait_for(state="attached", timeout=45_000)
    except PlaywrightTimeout:
        page.reload()
        wait_for(lambda: len(headline_values(page)) == len(HEADLINE), 60, "the reloaded tab")
        try:
            switch.wait_for(state="attached", timeout=45_000)
        except PlaywrightTimeout:
            pytest.fail(
                f"no Pause switch in the sidebar after a reload ({sidebar_text(page)[:500]})"
            )
    switch.dispatch_event("click")
    page.get_by_text("paused", exact=False).first.wait_for(timeout=30_000)


@pytest.mark.timeout(1800)
def test_dashboard_follows_the_live_pipeline(browser, dashboard_url, stream_job, bootstrap, topic):
    from clickstream.ingest.kafka_io import ensure_topic
    from clickstream.source.producer import produce, simulated_records
    from clickstream.source.simulator import SimConfig

    url, store_url = dashboard_url
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(url)

    # 1. Before the job has written anything: the empty state, not a traceback.
    page.get_by_text("No data yet: is the streaming job running?").wait_for(timeout=60_000)
    page.evaluate("window.__sameDocument = 'yes'")  # gone if the page were ever reloaded

    # 2. The real pipeline: producer -> Kafka -> Spark streaming job -> store.
    ensure_topic(topic, partitions=2, bootstrap=bootstrap)
    stop = threading.Event()
    producer = threading.Thread(
        target=produce,
        kwargs={
            "items": simulated_records(SimConfig(seed=11, count=10**7)),
            "topic": topic,
            "bootstrap": bootstrap,
            "rate": PRODUCE_RATE,
            "progress": False,
            "stop": stop,
        },
        daemon=True,
    )
    producer.start()
    job = stream_job(topic, bootstrap, store_url)
    tall = None  # the second tab, once open
    try:
        # 3. The data appears in the open page, then its headline keeps changing.
        wait_for(
            lambda: len(headline_values(page)) == len(HEADLINE) or job.poll() is not None,
            300,  # Spark's start and first batch: slow on a busy 2-core machine
            "the headline",
        )
        assert job.poll() is None, f"clickstream stream exited:\n{stream_job.output()}"
        first = headline_values(page)
        seen = {name: {value} for name, value in first.items()}

        def moved_on() -> bool:
            for name, value in headline_values(page).items():
                seen[name].add(value)
            numbers = {k: {v for v in values if v[:1].isdigit()} for k, values in seen.items()}
            # the window filling now changes with every batch; the last complete one moves on
            # every minute of event time
            return len(numbers["Current window"]) >= 3 and len(numbers["Page views / min"]) >= 2

        wait_for(moved_on, 240, f"the headline to change (seen so far: {seen})")
        assert page.evaluate("window.__sameDocument") == "yes", "the page was reloaded"
        assert navigations == [page.url] or len(set(navigations)) == 1, navigations
        page.get_by_text("old", exact=False).first.wait_for(timeout=10_000)  # "data is 1 s old"

        # 4. Pause, in a second tab as tall as the page (Streamlit scrolls inside its main
        # block, and resizing a tab makes every chart redraw): it stops refreshing while the
        # first tab goes on. Then the screenshot of the whole page, taken while paused so that
        # no refresh is half-way through.
        height = page.evaluate(
            "() => (document.querySelector('[data-testid=\"stMain\"]') || document.body)"
            ".scrollHeight"
        )
        tall = browser.new_page(viewport={"width": 1440, "height": max(900, min(height, 6000))})
        tall.goto(url)
        wait_for(lambda: len(headline_values(tall)) == len(HEADLINE), 60, "the second tab")
        pause(tall)
        wait_for(lambda: settled(tall), 60, "the paused tab to finish its last run")
        held = headline_values(tall)
        live_before = headline_values(page)["Current window"]
        wait_for(
            lambda: headline_values(page)["Current window"] != live_before, 120, "the live tab"
        )
        assert headline_values(tall) == held, "the paused tab kept refreshing"
        for _ in range(2):  # drawn, and still drawn a moment later
            wait_for(lambda: charts_drawn(tall), 60, "every chart to be drawn")
            time.sleep(1.5)
        ARTIFACT.parent.mkdir(exist_ok=True)
        tall.screenshot(path=str(ARTIFACT), full_page=True)
        tall.close()
        print(f"\nscreenshot: {ARTIFACT}")
        if UPDATE_IMAGES:
            NOTEBOOK_IMAGE.parent.mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACT, NOTEBOOK_IMAGE)
            print(f"copied to {NOTEBOOK_IMAGE.relative_to(REPO)}")
        print(f"headline values seen: {seen}")

        # 5. Once the job has caught up, the page shows what the store holds.
        stop.set()
        producer.join(timeout=30)
        wait_for(
            lambda: store_is_quiet(store_url),
            300,
            lambda: f"the job to catch up (its last reports: {last_health(store_url)})",
            poll=0,
        )
        with open_store(store_url, readonly=True) as store:
            snap = dd.load_snapshot(store)
        expected = {
            "Page views / min": f"{snap.headline.page_views_per_min or 0:,.0f}",
            "Current window": f"{snap.headline.current_events:,}",
        }
        wait_for(
            lambda: all(headline_values(page).get(k) == v for k, v in expected.items()),
            60,
            f"the page to show the store's numbers {expected} (shows {headline_values(page)})",
        )
        assert page.evaluate("window.__sameDocument") == "yes"
        assert not page.locator('[data-testid="stException"]').count()
    except BaseException:
        # What the page showed and what the job said, for whoever reads the CI log.
        ARTIFACT.parent.mkdir(exist_ok=True)
        failure = ARTIFACT.with_name("dashboard-failure.png")
        page.screenshot(path=str(failure), full_page=True)
        if tall is not None and not tall.is_closed():
            tall.screenshot(path=str(failure.with_name("dashboard-failure-tab2.png")))
            print(f"second tab's sidebar: {sidebar_text(tall)[:500]}")
        print(f"\nfailure screenshot: {failure}\nclickstream stream said:\n{stream_job.output()}")
        raise
    finally:
        stop.set()
        producer.join(timeout=30)
