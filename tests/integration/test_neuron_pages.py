"""Neuron pages against independent references: the histogram against a per-window
run_with_cache loop and numpy, the top tokens against a sort of the AMAP row by hand, the direct
effect against numpy's W_out[n] @ W_U; and the CLI writes the pages."""

import numpy as np
import pytest

from workbench.analyses import amap as amap_analysis
from workbench.analyses.neuron_pages import BINS, unit_pages, write_pages
from workbench.cli import main
from workbench.data import load_windows

TEXT = "the cat sat on the mat and the dog sat on the log by the door. " * 3
UNITS = [(0, 5), (1, 17)]


@pytest.fixture(scope="module")
def built(random_tiny):
    w = load_windows(random_tiny, text=TEXT, window=15, stride=15, bos=False)
    r = amap_analysis.analyze(random_tiny, w, progress=False, modes=("input",), top_k=4)
    return w, r, unit_pages(random_tiny, w, r, UNITS, progress=False, k=8)


def test_histogram_equals_a_loop_over_windows(random_tiny, built):
    windows, _, pages = built
    for page, (layer, neuron) in zip(pages, UNITS, strict=True):
        values = []
        for i in range(len(windows)):
            n = int(windows.mask[i].sum())
            _, cache = random_tiny.run_with_cache(windows.tokens[i : i + 1, :n])
            values += cache[f"blocks.{layer}.mlp.hook_post"][0, :, neuron].tolist()
        values = np.array(values, dtype=np.float32)
        counts, edges = np.histogram(values, bins=BINS, range=(values.min(), values.max()))
        assert page["n_positions"] == values.size == int(windows.mask.sum())
        np.testing.assert_allclose(page["hist_edges"], edges, rtol=1e-5, atol=1e-6)
        # a value on a bin edge may fall either side under float noise: compare with slack 1
        assert np.abs(np.array(page["hist_counts"]) - counts).sum() <= 2
        assert sum(page["hist_counts"]) == values.size
        assert page["max"] == pytest.approx(float(values.max()), rel=1e-5)


@pytest.mark.parametrize("count_bos", [False, True])
def test_histogram_leaves_out_the_bos_the_amap_did_not_count(random_tiny, count_bos):
    """Windows with a BOS (as `workbench run` makes them): the page's positions are those the
    AMAP counted, by a per-window loop that drops position 0 unless the AMAP counted it."""
    w = load_windows(random_tiny, text=TEXT, window=15, stride=15, bos=True)
    assert w.bos
    r = amap_analysis.analyze(random_tiny, w, progress=False, modes=("input",), top_k=2,
                              count_bos=count_bos, context_units=0)
    page = unit_pages(random_tiny, w, r, [(1, 17)], progress=False, k=4)[0]
    values = []
    for i in range(len(w)):
        n = int(w.mask[i].sum())
        _, cache = random_tiny.run_with_cache(w.tokens[i : i + 1, :n])
        values += cache["blocks.1.mlp.hook_post"][0, 0 if count_bos else 1 :, 17].tolist()
    assert page["n_positions"] == len(values) == int(r.counts("input").sum())
    assert page["max"] == pytest.approx(max(values), rel=1e-5)
    assert page["min"] == pytest.approx(min(values), rel=1e-5)


def test_top_tokens_and_direct_effect(random_tiny, built):
    _, result, pages = built
    for page, (layer, neuron) in zip(pages, UNITS, strict=True):
        row = result.layers.index(layer)
        keys = result.amap.keys("input").tolist()  # the sparse columns, read one by one
        sums = dict(zip(keys, result.amap.sums["input"][row, :, neuron].tolist(), strict=True))
        counts = dict(zip(keys, result.amap.counts["input"].tolist(), strict=True))
        seen = [t for t in keys if t < result.amap.d_vocab]
        by_hand = sorted(seen, key=lambda t: -sums[t] / counts[t])[:8]
        assert [t["id"] for t in page["top_tokens"]] == by_hand
        assert [t["count"] for t in page["top_tokens"]] == [counts[t] for t in by_hand]
        w_out = random_tiny.blocks[layer].mlp.W_out[neuron].detach().numpy()
        effect = w_out @ random_tiny.W_U.detach().numpy()
        assert [t["id"] for t in page["direct_effect"]["top"]] == list(np.argsort(-effect)[:15])
        assert [t["id"] for t in page["direct_effect"]["bottom"]] == list(np.argsort(effect)[:15])
        assert page["contexts"] and page["contexts"][0]["max"] == pytest.approx(
            float(result.top.compute()["values"][row, neuron, 0]))


def test_pages_are_written_and_linked(built, tmp_path):
    _, _, pages = built
    paths = write_pages(pages, tmp_path, {"model": "random-tiny"})
    index = (tmp_path / "index.html").read_text()
    for layer, neuron in UNITS:
        page = (tmp_path / f"unit-{layer}_{neuron}.html").read_text()
        assert f"unit-{layer}_{neuron}.html" in index
        for title in ("Activations over the data", "Max-activating contexts",
                      "Top tokens by mean activation", "Direct effect on the output"):
            assert title in page
    assert len(paths) == len(UNITS) + 1


def test_cli_writes_pages_and_refuses_a_bad_unit_before_the_model(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT)
    assert main(["amap", "build", "--model", "random-tiny", "--file", str(tmp_path / "a.txt"),
                 "--out", str(tmp_path / "amap"), "--quiet", "--no-html", "--modes", "input"]) == 0
    assert main(["amap", "pages", str(tmp_path / "amap"), "--unit", "1_17,0_3", "--model",
                 "random-tiny", "--file", str(tmp_path / "a.txt"), "--quiet"]) == 0
    assert (tmp_path / "amap" / "pages" / "unit-1_17.html").exists()
    assert (tmp_path / "amap" / "pages" / "unit-0_3.html").exists()
    capsys.readouterr()
    assert main(["amap", "pages", str(tmp_path / "amap"), "--unit", "1_9999", "--model",
                 "random-tiny", "--file", str(tmp_path / "a.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "9999" in err and len(err.strip().splitlines()) == 1
