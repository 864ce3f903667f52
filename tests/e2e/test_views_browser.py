"""The report's views at real lengths (~130 and ~1,000 tokens) in headless Chromium (issue 16):
the page never scrolls sideways at 1,400 px, the lens grid writes token text in its cells, no
figure carries a share / cloud control, nothing is fetched while loading, hovering or clicking
the controls, and a token that decodes to markup (``<b>bold</b>``) is shown as text.

The model is random-tiny with a 1,024-token context and one extra token, ``<b>bold</b>``, added to
its byte tokenizer, so one window holds the whole text at both lengths and the markup token is a
single token of the input. Screenshots go to out/test-artifacts/views-{n}.png.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.browser import Chromium
from tests.e2e.test_run_report_browser import ROOT, chromium_path  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

MARKUP = "<b>bold</b>"
WORDS = ("the river runs to the sea and the sea is salt " + MARKUP + " water; ").split(" ")


def _text(n_tokens: int, tokenizer) -> str:
    words, text = [], ""
    i = 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        words.append(WORDS[i % len(WORDS)])
        text = " ".join(words)
        i += 1
    return text


@pytest.fixture(scope="module", params=[130, 1000], ids=["130-tokens", "1000-tokens"])
def report(request, tmp_path_factory):
    from workbench.data import load_windows
    from workbench.models.random_tiny import random_tiny
    from workbench.report import run_all

    model = random_tiny(n_ctx=1024, d_vocab=300)
    model.tokenizer.add_tokens([MARKUP])
    text = _text(request.param, model.tokenizer)
    windows = load_windows(model, text=text)
    assert len(windows) == 1 and windows.n_tokens >= request.param
    out = tmp_path_factory.mktemp(f"views{request.param}")
    summary = run_all(model, windows, out, progress=False)
    assert all(a["status"] == "ok" for a in summary["analyses"].values()), summary["analyses"]
    return request.param, out / "report.html", windows.n_tokens


STATE = r"""(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const buttons = plots.flatMap(gd => [...gd.querySelectorAll('.modebar-btn')]
      .map(b => (b.getAttribute('data-title') || '') + ' ' + (b.getAttribute('href') || '')));
  const grid = document.querySelector('[id^="wb-lens-grid-"]');
  const cells = grid ? [...grid.querySelectorAll('g.heatmap-label text')]
      .map(t => t.textContent).filter(t => t.length) : [];
  const ticks = [...document.querySelectorAll('.xtick text, .ytick text')].map(t => t.textContent);
  const boldMarkup = [...document.querySelectorAll('main b, svg tspan')]
      .filter(e => e.textContent === 'bold' && (e.tagName === 'B' ||
               /bold/.test(e.getAttribute('style') || ''))).length;
  return {scrollWidth: document.documentElement.scrollWidth, plots: plots.length,
          buttons, cells: cells.length, cellSample: cells.slice(0, 5), ticks,
          boldMarkup, logoLinks: document.querySelectorAll('a[href*="plotly.com"]').length};
})()"""

# Hover a grid cell at the markup token's column, press every updatemenu button (the grid's
# colour choices), then choose a position in the picker: the top-k figure must follow.
INTERACT = r"""(async () => {
  const grid = document.querySelector('[id^="wb-lens-grid-"]');
  const col = grid.data[0].x.length;
  const inputs = grid.data[0].text[0];  // the grid's bottom row: the input tokens
  const at = inputs.findIndex(t => t.includes('&lt;b&gt;'));
  Plotly.Fx.hover(grid, {xval: at, yval: 1});
  await new Promise(r => setTimeout(r, 300));
  const hover = [...grid.querySelectorAll('.hoverlayer text')].map(t => t.textContent).join(' ');
  Plotly.Fx.unhover(grid);
  const colours = [];
  for (const b of [...grid.querySelectorAll('.updatemenu-button')]) {
    b.dispatchEvent(new MouseEvent('click', {bubbles: true}));
    await new Promise(r => setTimeout(r, 150));
    colours.push(grid._fullData[0].colorbar.title.text);
  }
  const picker = document.querySelector('.wb-lens-picker');
  const input = picker.querySelector('input');
  input.value = String(at); input.dispatchEvent(new Event('change'));
  await new Promise(r => setTimeout(r, 300));
  const topk = document.querySelector('[id^="wb-lens-topk-"]');
  return {columns: col, at, hover, colours, picked: picker.getAttribute('data-wb-position'),
          topkTitle: topk.layout.title.text,
          topkTicks: [...topk.querySelectorAll('.ytick text')].length};
})()"""


@pytest.fixture(scope="module")
def page(report, chromium_path):  # noqa: F811
    n, html, _ = report
    with Chromium(chromium_path) as browser:
        t0 = time.perf_counter()
        tab = browser.open(html.resolve().as_uri(), timeout=120)
        load_seconds = time.perf_counter() - t0
        tab.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                 deviceScaleFactor=1, mobile=False)
        browser.pump(1.0)
        state = tab.evaluate(STATE)
        loaded_requests = list(tab.requests)
        interact = tab.evaluate(INTERACT)
        browser.pump(0.5)
        shot = tab.screenshot(ROOT / "out" / "test-artifacts" / f"views-{n}.png")
        size = html.stat().st_size
        print(f"\n{n}-token report: {size / 2**20:.2f} MiB, loaded in {load_seconds:.1f} s; "
              f"screenshot {shot}")
        yield {"state": state, "interact": interact, "loaded": loaded_requests,
               "requests": list(tab.requests), "errors": list(tab.errors)}


def _offline(urls):
    return [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]


def test_page_never_scrolls_sideways(page):
    assert page["state"]["scrollWidth"] <= 1400


def test_lens_grid_writes_token_text(page, report):
    n, _, n_tokens = report
    state = page["state"]
    assert page["interact"]["columns"] == n_tokens
    rows = 4  # the input row, then random-tiny's emb, h.0, h.1
    assert state["cells"] >= rows * n_tokens, state["cellSample"]


def test_no_share_or_cloud_control(page):
    state = page["state"]
    assert state["buttons"], "no modebar found: the check would prove nothing"
    bad = [b for b in state["buttons"] if any(w in b.lower() for w in
                                               ("share", "cloud", "chart studio", "plotly.com"))]
    assert bad == [] and state["logoLinks"] == 0


def test_no_network_while_loading_hovering_and_clicking(page):
    assert _offline(page["loaded"]) == []
    assert _offline(page["requests"]) == []
    assert page["errors"] == []


def test_controls_work(page):
    it = page["interact"]
    assert it["colours"] == ["p(top-1)", "rank of the next token", "entropy (nats)",
                             "KL(final ‖ lens), nats"]
    assert it["picked"] == str(it["at"])
    assert f"after position {it['at']} " in it["topkTitle"]


def test_markup_token_shows_as_text(page):
    state, it = page["state"], page["interact"]
    assert any(MARKUP in t for t in state["ticks"]), "markup token missing from the ticks"
    assert MARKUP in it["hover"], it["hover"]
    assert MARKUP in it["topkTitle"].replace("&lt;", "<").replace("&gt;", ">")
    assert state["boldMarkup"] == 0, "a token was rendered as HTML"
