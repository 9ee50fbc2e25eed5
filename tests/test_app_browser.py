"""The web app in a real browser: `mmsearch-r1 app` started as a subprocess on 127.0.0.1 (its defaults: the
demo's output in `runs/demo`, made here by `mmsearch-r1 demo --quick`), driven by the OS's headless Chromium
through Playwright (no browser download).

Ask: a demo-world tail question with its image streams a trajectory with thumbnails and a final answer; a file
that is not an image and an empty question get messages. Runs: the curves are drawn, filtering to searched and
correct trajectories gives the count the evaluation file holds, a directory without metrics and a trajectory
file with a corrupt line get messages. The app still serves after every bad input. A screenshot of each tab is
saved under the test's temp dir and checked to be non-blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mmsearch_r1.eval.records import read_records

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"app exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"app did not answer on {url} within {timeout} s")


def _non_blank(png: Path) -> None:
    from PIL import Image

    img = Image.open(png).convert("L")
    lo, hi = img.getextrema()
    colours = len(img.getcolors(maxcolors=1 << 16) or [])
    assert img.size[0] > 500 and img.size[1] > 500 and hi - lo > 100 and colours > 20, (
        png,
        img.size,
        colours,
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium from the OS packages (apt-get install chromium); .ci/run installs it")
    work = tmp_path_factory.mktemp("app")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRADIO_ANALYTICS_ENABLED": "False"}
    demo = subprocess.run(
        [sys.executable, "-m", "mmsearch_r1.cli", "demo", "--quick", "--out", "runs/demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    # a run directory without metrics, and an evaluation file with a corrupt line
    (work / "empty_run").mkdir()
    bad = work / "bad_run"
    bad.mkdir()
    good = (work / "runs/demo/eval/grpo/samples.jsonl").read_text().splitlines()
    (bad / "samples.jsonl").write_text("\n".join([good[0], '{"id": "cut', *good[1:]]) + "\n")

    port = _free_port()
    # the app's temporary files (examples, uploads) go here and must be gone after it stops
    tmp = work / "tmp"
    tmp.mkdir()
    env.update(TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "gradio"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch_r1.cli", "app", "--port", str(port)],  # defaults: runs/demo
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc)
        yield work, url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0 and not list(tmp.glob("mmsearch_r1_app_*")), proc.stdout.read()[-2000:]


@pytest.fixture(scope="module")
def page(app, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(app[1])
        pg.wait_for_selector("#ask-button")
        yield pg
        ctx.close()


def test_ask_streams_thumbnails_and_answer(app, page, tmp_path) -> None:
    from playwright.sync_api import expect

    work = app[0]
    # a tail (search-required) example: the examples table lists the world's test questions
    examples = page.locator("table tbody tr")
    assert examples.count() >= 2
    tail_row = page.locator("table tbody tr", has_text="What is the name of this").first
    tail_row.click()
    q = page.locator("#ask-question textarea")
    expect(q).to_have_value(re.compile("^What is the name of this"))
    question = q.input_value()
    out = page.locator("#ask-output")
    # bad input first: an empty question (the example's image is set)
    page.fill("#ask-question textarea", "")
    page.click("#ask-button")
    page.wait_for_selector("#ask-output .mm-msg-error:has-text('question is empty')")
    page.fill("#ask-question textarea", question)
    page.click("#ask-button")
    page.wait_for_selector("#ask-output .mm-final", timeout=120_000)
    assert out.locator(".mm-question img.mm-qimg").count() == 1
    assert out.locator("img.mm-thumb").count() >= 1  # the image search's thumbnails, with titles
    titles = out.locator(".mm-result figcaption").all_inner_texts()
    assert titles and all(" - " in t for t in titles)
    assert "Final answer:" in out.inner_text() and out.locator(".mm-reward").count() == 1
    shot = tmp_path / "ask.png"
    page.screenshot(path=str(shot), full_page=True)
    _non_blank(shot)
    shutil.copy(shot, work / "ask.png")

    # bad input: a file that is not an image
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image")
    page.locator("#ask-upload input[type=file]").set_input_files(str(txt))
    page.wait_for_selector("#ask-output .mm-msg-error")
    assert "not an image" in out.inner_text() and "notes.png" in out.inner_text()
    assert app[2].poll() is None  # still serving


def test_runs_tab_curves_filters_and_bad_dirs(app, page, tmp_path) -> None:
    work = app[0]
    page.click("button[role=tab]:has-text('Runs')")
    page.wait_for_selector("#runs-traj .mm-traj")
    assert "Opened runs/demo" in page.inner_text("#runs-status")
    page.wait_for_selector("canvas, svg.marks, .vega-embed")  # the curves are drawn

    samples = [json.loads(x) for x in (work / "runs/demo/eval/grpo/samples.jsonl").read_text().splitlines()]
    # the training traces name their data source (the source filter works on them too)
    traces = [
        r
        for p in sorted((work / "runs/demo/grpo/traces").glob("step_*.jsonl"))
        for r in read_records(p).records
    ]
    assert traces and {r.data_source for r in traces} <= {"world_head", "world_tail"}
    want = sum(1 for r in samples if r["em"] and (r["n_image_searches"] + r["n_text_searches"]) > 0)
    page.locator("#runs-searched label", has_text="yes").click()
    page.locator("#runs-correct label", has_text="yes").click()
    page.wait_for_selector(f"#runs-count:has-text('{want} of {len(samples)} trajectories match')")
    if want:
        traj = page.locator("#runs-traj")
        page.wait_for_selector("#runs-traj .mm-final:has-text('(correct)')")
        assert traj.locator(".mm-tool").count() >= 1
    time.sleep(1)  # let the trajectory picker settle before the picture
    shot = tmp_path / "runs.png"
    page.screenshot(path=str(shot), full_page=True)
    _non_blank(shot)
    shutil.copy(shot, work / "runs.png")
    page.locator("#runs-searched label", has_text="any").click()
    page.locator("#runs-correct label", has_text="any").click()
    page.wait_for_selector(f"#runs-count:has-text('{len(samples)} of {len(samples)} trajectories match')")

    # the SFT and GRPO evaluations of the same question side by side
    assert page.locator("#runs-left-traj .mm-traj").count() == 1
    assert page.locator("#runs-right-traj .mm-traj").count() == 1

    # bad input: a directory without metrics, a trajectory file with a corrupt line
    page.fill("#runs-dir textarea, #runs-dir input", str(work / "empty_run"))
    page.click("#runs-open")
    page.wait_for_selector("#runs-status:has-text('No metrics.jsonl')")
    page.fill("#runs-dir textarea, #runs-dir input", str(work / "bad_run"))
    page.click("#runs-open")
    page.wait_for_selector("#runs-problems:has-text('line 2: not valid JSON')")
    page.wait_for_selector(f"#runs-count:has-text('{len(samples)} of {len(samples)} trajectories match')")
    assert app[2].poll() is None  # still serving
