"""Every result in Python: a short repr (never a tensor dump), ``_repr_html_`` with a table,
``summary()`` that is JSON, ``figures()`` by name and ``to_frame()`` with the right rows, checked
against the result's own tensors."""

import json

import pandas as pd
import pytest
import torch

from workbench.data import load_windows

TEXT = "The cat sat on the mat because it was warm, and the dog slept by the door all day."


@pytest.fixture(scope="module")
def results(random_tiny):
    from workbench.analyses import amap, attention, distributions, factors, lens

    w = load_windows(random_tiny, text=TEXT)
    short = load_windows(random_tiny, text=TEXT, window=15, stride=15)
    opts = {"progress": False}
    return {
        "distributions": distributions.analyze(random_tiny, w, sample=50, scatter_points=50, **opts),
        "lens": lens.analyze(random_tiny, w, **opts),
        "attention": attention.analyze(random_tiny, w),
        "factors": factors.analyze(random_tiny, w, n_components=3),
        "amap": amap.analyze(random_tiny, short, modes=("input",), **opts),
    }


@pytest.mark.parametrize("name", ["distributions", "lens", "attention", "factors", "amap"])
def test_short_repr_html_summary_figures_frame(results, name):
    r = results[name]
    text = repr(r)
    assert text.startswith(type(r).__name__ + "(") and len(text) <= 330, text
    assert "tensor(" not in text
    json.dumps(r.summary())
    page = r._repr_html_()
    assert "<table" in page and "no table" not in page
    assert r.figures() and all(hasattr(f, "to_html") for f in r.figures().values())
    assert isinstance(r.to_frame(), pd.DataFrame)


def test_frames_hold_the_results_numbers(results, random_tiny):
    d = results["distributions"].to_frame()
    assert list(d.index) == results["distributions"].labels
    assert torch.equal(torch.tensor(d["n"].tolist()), results["distributions"].n_samples)
    lens = results["lens"].to_frame()
    assert list(lens.index) == results["lens"].layer_labels
    assert lens["top-1 agreement"].iloc[-1] == 1.0  # the final lens agrees with itself
    att = results["attention"].to_frame()
    cfg = random_tiny.cfg
    assert len(att) == cfg.n_layers * cfg.n_heads
    import math

    rows = results["attention"].patterns[0, 0].tolist()  # a naive loop over the query rows
    naive = sum(-sum(x * math.log(x) for x in row if x > 0) for row in rows) / len(rows)
    assert att.loc[(0, 0), "entropy"] == pytest.approx(naive, rel=1e-5)
    f = results["factors"]
    frame = f.to_frame()
    assert len(frame) == f.n_components
    assert frame["peak_position"].tolist() == f.factors.argmax(-1).tolist()
    a = results["amap"].to_frame(layers=[0], tokens=["t"])  # byte tokens
    assert a.shape[0] == random_tiny.cfg.d_mlp and "t" in a.columns
