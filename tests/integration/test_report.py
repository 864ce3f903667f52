"""The main job's composition (workbench.report) in-process on random-tiny: what it writes, how
it treats analyses that are not built, and that an analysis's error is never hidden."""

import json
from types import SimpleNamespace

import pytest

from workbench import report
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.views.html import plotly_js

TEXT = "The cat sat on the mat because it was warm."


@pytest.fixture(scope="module")
def done(random_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    windows = load_windows(random_tiny, text=TEXT)
    summary = report.run_all(random_tiny, windows, out, progress=False,
                             only=["attention", "factors"])
    return out, summary


def test_writes_report_summary_and_artifacts(done):
    out, summary = done
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary["analyses"]) == {"attention", "factors"}
    for entry in summary["analyses"].values():
        assert entry["status"] == "ok" and (out / entry["artifact"]).exists()
        assert entry["seconds"]["total"] >= entry["seconds"]["analyze"] > 0
    assert summary["analyses"]["factors"]["key_numbers"]["n_components"] == 8
    text = (out / "report.html").read_text()
    assert summary["report"]["bytes"] == (out / "report.html").stat().st_size
    assert text.count(plotly_js()[:200]) == 1
    assert text.count("<section") == 2
    for needle in ("random-tiny", "weights sha256", "tokens in 1 window", "timings", "attention"):
        assert needle in text


def test_missing_module_is_noted_not_faked(random_tiny, tmp_path, monkeypatch):
    ghost = report.Entry("ghost", lambda m, w: {}, lambda r: {})
    monkeypatch.setattr(report, "REGISTRY", [ghost, *report.REGISTRY])
    windows = load_windows(random_tiny, text=TEXT)
    summary = report.run_all(random_tiny, windows, tmp_path, progress=False,
                             only=["ghost", "attention"])
    assert summary["analyses"]["ghost"] == {
        "status": "not built",
        "missing_modules": ["workbench.analyses.ghost", "workbench.views.ghost"]}
    text = (tmp_path / "report.html").read_text()
    assert text.count("<section") == 1 and "not built" in text and "ghost" in text
    assert not (tmp_path / "ghost.safetensors").exists()


def test_an_analysis_error_propagates(random_tiny, tmp_path, monkeypatch):
    broken = report.Entry("factors", lambda m, w: {"n_components": 10_000}, lambda r: {})
    monkeypatch.setattr(report, "REGISTRY", [broken])
    with pytest.raises(WorkbenchError, match="components"):
        report.run_all(random_tiny, load_windows(random_tiny, text=TEXT), tmp_path,
                       progress=False)


def test_amap_gets_sysif_windows(random_tiny):
    long = load_windows(random_tiny, text=TEXT)  # 44 byte tokens in one window
    w = report._amap_windows(random_tiny, long)
    assert (w.window, w.stride) == (15, 15) and len(w) == 3
    short = load_windows(random_tiny, text="a cat")
    w = report._amap_windows(random_tiny, short)
    assert w.window == 5 and len(w) == 1  # the whole text is one full window


def test_attention_cap_keeps_big_models_small(random_tiny):
    def cfg(layers, heads):
        return SimpleNamespace(cfg=SimpleNamespace(n_layers=layers, n_heads=heads))

    windows = load_windows(random_tiny, text=TEXT)
    assert report._attention_options(cfg(4, 4), windows)["max_positions"] == 128
    assert report._attention_options(cfg(6, 12), windows)["max_positions"] == 64
