"""`workbench run` as a user runs it, and its report.html opened from a file:// URL in headless
Chromium over the DevTools Protocol: no console errors, no network, every figure drawn.

Chromium comes from Debian's `chromium` (`make test` installs it via scripts/system_deps.sh).
Without it this test fails and says so; `WORKBENCH_SKIP_BROWSER=1` skips it on purpose.
The screenshot is saved to out/test-artifacts/report.png (out/ is git-ignored).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.browser import Chromium, find_chromium
from workbench import artifacts
from workbench.report import REGISTRY, missing_modules
from workbench.views.html import plotly_js

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "out" / "test-artifacts" / "report.png"
PARAGRAPH = ("The cat sat on the mat because it was warm. A dog is a domesticated carnivorous "
             "mammal that barks. The river flows to the sea, and the sea is salt water.")
MAX_REPORT_BYTES = 10 * 2**20
# DESIGN.md's artifact contract: file → keys that must be there.
CONTRACT = {
    "distributions": ("distributions.safetensors", ["covariance", "r2", "hist_counts", "hist_edges",
                                                    "hist_under", "hist_over", "n_samples"]),
    "lens": ("lens.safetensors", ["tokens", "topk_ids", "topk_probs", "ranks"]),
    "amap": ("amap.safetensors", ["sum.input", "count.input"]),
    "attention": ("attention.safetensors", ["tokens", "patterns", "neuron.products"]),
    "factors": ("factors.safetensors", ["tokens", "factors", "loadings"]),
}

CHECK = r"""(() => {
  const painted = (c) => {  // plotly's WebGL canvases keep their drawing buffer
    const o = document.createElement('canvas'); o.width = c.width; o.height = c.height;
    const ctx = o.getContext('2d'); ctx.drawImage(c, 0, 0);
    const d = ctx.getImageData(0, 0, o.width, o.height).data; let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  };
  const figures = [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const r = gd.getBoundingClientRect();
    const svg = gd.querySelectorAll('.cartesianlayer .trace, .hm image, .heatmaplayer image').length;
    const gl = [...gd.querySelectorAll('canvas.gl-canvas-context')].map(painted)
      .reduce((a, b) => a + b, 0);
    return {section: gd.closest('section') ? gd.closest('section').id : null,
            width: r.width, height: r.height, traces: (gd._fullData || []).length,
            svg_marks: svg, gl_pixels: gl};
  });
  const widgets = [...document.querySelectorAll('[data-wb-widget]')].map(e => ({
    rendered: e.getAttribute('data-wb-rendered') === '1',
    lines: +(e.getAttribute('data-wb-lines') || 0)}));
  const sections = [...document.querySelectorAll('main > section')].map(s => s.id);
  return {figures, widgets, sections};
})()"""

HOVER = r"""(() => {
  const root = document.querySelector('[data-wb-widget="attention-head-view"]');
  const before = root.querySelector('.wb-controls span').textContent;
  const left = root.querySelectorAll('svg text')[0];  // query 0 attends only to itself (causal)
  left.dispatchEvent(new MouseEvent('mouseenter'));
  const after = root.querySelector('.wb-controls span').textContent;
  const lines = +root.getAttribute('data-wb-lines');
  left.dispatchEvent(new MouseEvent('mouseleave'));
  return {before, after, lines};
})()"""


def model_name() -> str:
    weights = ROOT / "workbench" / "models" / "tiny_gloss_lm" / "config.json"
    return "tiny-gloss-lm" if weights.exists() else "random-tiny"


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if os.environ.get("WORKBENCH_SKIP_BROWSER") == "1":
        pytest.skip("WORKBENCH_SKIP_BROWSER=1: browser checks of report.html skipped on request")
    path = find_chromium()
    if path is None:
        pytest.fail("chromium is not installed: run `make test` (it installs Debian's chromium "
                    "via scripts/system_deps.sh), or `sudo apt-get install -y chromium`; "
                    "set WORKBENCH_SKIP_BROWSER=1 to skip this test on purpose", pytrace=False)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", "--model", model_name(), "--text", PARAGRAPH,
         "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def page(run, chromium_path):
    out, _ = run
    with Chromium(chromium_path) as browser:
        tab = browser.open((out / "report.html").resolve().as_uri())
        tab.wait_for("document.readyState === 'complete' && [...document.querySelectorAll("
                     "'[data-wb-widget]')].every(e => e.getAttribute('data-wb-rendered') === '1')")
        browser.pump(1.0)  # let late requests or errors surface
        state = tab.evaluate(CHECK)
        hover = tab.evaluate(HOVER)
        shot = tab.screenshot(SCREENSHOT)
        print(f"\nreport screenshot: {shot}")
        yield {"requests": list(tab.requests), "errors": list(tab.errors), "state": state,
               "hover": hover, "screenshot": shot}


def built() -> list[str]:
    return [e.name for e in REGISTRY if not missing_modules(e.name)]


def test_run_writes_artifacts_summary_and_report(run):
    out, proc = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["model"] == model_name()
    assert summary["data"]["source"] == "text" and summary["data"]["n_tokens"] > 0
    for name in (e.name for e in REGISTRY):
        entry = summary["analyses"][name]
        if name in built():
            assert entry["status"] == "ok", entry
            assert entry["seconds"]["total"] > 0
            file, keys = CONTRACT[name]
            assert entry["artifact"] == file
            tensors, meta = artifacts.load(out / file)
            assert set(keys) <= set(tensors), (name, sorted(tensors))
            assert meta["model"] == model_name()
        else:
            assert entry["status"] == "not built"
    assert "report.html" in proc.stdout


def test_report_is_one_reasonable_file(run):
    out, _ = run
    text = (out / "report.html").read_text(encoding="utf-8")
    size = (out / "report.html").stat().st_size
    print(f"\nreport.html: {size / 2**20:.2f} MiB")
    assert size < MAX_REPORT_BYTES
    assert text.count(plotly_js()[:200]) == 1  # plotly.js inlined exactly once
    ours = text.replace(plotly_js(), "")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|require\(\[", ours)


def test_no_console_errors(page):
    assert page["errors"] == []


def test_no_network_requests(page):
    offline = [u for u in page["requests"] if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert offline == [], offline
    assert any(u.startswith("file:") for u in page["requests"])  # the recorder did see requests


def test_every_figure_rendered(page):
    state = page["state"]
    sections = {e.name: e for e in REGISTRY}
    titles = {"attention": "attention", "factors": "nmf-factors"}
    for name in ("attention", "factors"):
        if name in built():
            assert titles[name] in state["sections"]
    assert len(state["sections"]) == len([n for n in built() if n in sections])
    assert state["figures"], "no plotly figure on the page"
    for fig in state["figures"]:
        assert fig["width"] > 0 and fig["height"] > 0, fig
        assert fig["traces"] > 0, fig
        assert fig["svg_marks"] > 0 or fig["gl_pixels"] > 0, f"empty plot area: {fig}"
    assert state["widgets"] and all(w["rendered"] and w["lines"] > 0 for w in state["widgets"])


def test_head_view_reacts_to_hover(page):
    hover = page["hover"]
    assert "position 0" in hover["after"] and hover["after"] != hover["before"]
    assert hover["lines"] >= 1  # position 0 attends to itself in every selected head


def test_screenshot_saved(page):
    shot = page["screenshot"]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
