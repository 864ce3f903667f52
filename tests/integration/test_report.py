"""The main job's composition (workbench.report) in-process on random-tiny: what it writes, how
it treats analyses that are not built, and that an analysis's error is never hidden."""

import json
from types import SimpleNamespace

import pytest
import torch

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


def test_one_fused_pass_gives_the_separate_passes_artifacts(random_tiny, tmp_path, monkeypatch):
    """distributions + lens + AMAP in ONE corpus pass: the same artifacts as each analysis run on
    its own, and the model forwarded once per batch for all three."""
    from safetensors.torch import load_file

    from workbench import capture
    from workbench.analyses import amap, distributions, lens

    docs = [TEXT * 3, "A dog barks.", TEXT + " And then it slept."]
    windows = load_windows(random_tiny, text=docs, window=24, stride=24)
    names = ["distributions", "lens", "amap"]
    calls = []
    real = capture.forward
    monkeypatch.setattr(capture, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = report.run_all(random_tiny, windows, tmp_path / "fused", progress=False,
                             only=names, batch_size=3)
    monkeypatch.setattr(capture, "forward", real)
    n_batches = -(-len(windows) // 3)
    # + the calibration of the histogram edges, + the neuron pages' histogram pass (16 windows
    # a batch); the AMAP contexts need none: they come from the corpus pass
    pages = -(-len(windows) // 16)
    assert summary["corpus_pass"]["batches"] == n_batches
    assert len(calls) == n_batches + 1 + pages
    assert summary["corpus_pass"]["reducers"] == names
    alone = tmp_path / "alone"
    distributions.analyze(random_tiny, windows, batch_size=3, progress=False).save(alone)
    lens.analyze(random_tiny, windows, batch_size=3, progress=False).save(alone)
    amap.analyze(random_tiny, windows, batch_size=3, progress=False, modes=("input",),
                 require_full_window=False).save(alone)
    for name in names:
        fused = load_file(tmp_path / "fused" / f"{name}.safetensors")
        own = load_file(alone / f"{name}.safetensors")
        assert set(fused) == set(own), name
        for key, t in own.items():
            assert torch.equal(fused[key], t), f"{name}: {key}"


def test_run_amap_leaves_bos_out(random_tiny, tmp_path):
    windows = load_windows(random_tiny, text=[TEXT, "A dog barks."])
    assert windows.bos
    report.run_all(random_tiny, windows, tmp_path, progress=False, only=["amap"])
    from workbench.analyses.amap import load

    _, counts = load(tmp_path).at("input")  # every key id
    real = windows.tokens[:, 1:][windows.mask[:, 1:]]  # every position but the BOS
    assert counts.tolist() == torch.bincount(real, minlength=len(counts)).tolist()


def test_attention_cap_keeps_big_models_small(random_tiny):
    def cfg(layers, heads):
        return SimpleNamespace(cfg=SimpleNamespace(n_layers=layers, n_heads=heads))

    windows = load_windows(random_tiny, text=TEXT)
    assert report._attention_options(cfg(4, 4), windows)["max_positions"] == 128
    assert report._attention_options(cfg(6, 12), windows)["max_positions"] == 64
