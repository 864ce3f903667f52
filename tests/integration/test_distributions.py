"""The distributions analysis on embedded models against the seed's numpy computation."""

import numpy as np
import pytest
import torch

from workbench import artifacts
from workbench.analyses.distributions import ARTIFACT, DistributionsResult, analyze
from workbench.capture import resid_hooks
from workbench.data import from_text
from workbench.errors import WorkbenchError
from workbench.views.distributions import section

SENTENCE = "The cat sat on the mat because it was warm. A dog is a mammal that barks."
DOCS = [SENTENCE, "Short one.", "Glosses define words; examples show them in use, often twice."]
DESIGN_KEYS = {"covariance": torch.float64, "r2": torch.float64, "hist_counts": torch.int64,
               "hist_edges": torch.float64, "hist_under": torch.int64, "hist_over": torch.int64,
               "n_samples": torch.int64}


def seed_flattened(model, windows, skip_first=True) -> np.ndarray:
    """Seed 000: hidden states of each window by TransformerLens's run_with_cache, then for each
    layer hidden[layer][1:, :].flatten(), concatenated over windows: [layers, tokens*dims].
    Hook names come from capture (post-LN BERT's hidden states are its normalized resid_post)."""
    names = resid_hooks(model)
    rows = [[] for _ in names]
    for tokens, mask in zip(windows.tokens, windows.mask, strict=True):
        real = tokens[mask][None]
        with torch.inference_mode():
            _, cache = model.run_with_cache(real, names_filter=lambda n: n in names)
        for v, name in enumerate(names):
            rows[v].append(cache[name][0, 1 if skip_first else 0:, :].double().numpy().reshape(-1))
    return np.stack([np.concatenate(r) for r in rows])


def rel_err(a, b) -> float:
    return float(np.nanmax(np.abs(np.asarray(a) - b)) / np.nanmax(np.abs(b)))


@pytest.fixture(scope="module")
def one_sentence(random_tiny):
    windows = from_text(SENTENCE, random_tiny.tokenizer, window=100)
    return windows, analyze(random_tiny, windows, progress=False, batch_size=1)


def check_against_seed(result, flat, exact_counts=True):
    """``exact_counts``: the same forward as the reference (one unpadded window per batch);
    batched forwards differ by float noise (~1e-6), which may move a value across an edge."""
    assert rel_err(result.covariance, np.cov(flat)) < 1e-6
    assert rel_err(result.r2, np.corrcoef(flat) ** 2) < 1e-6
    edges = result.hist_edges.numpy()
    for v in range(flat.shape[0]):
        expected = np.histogram(flat[v], bins=edges)[0]
        if not exact_counts:
            assert np.abs(result.hist_counts[v].numpy() - expected).sum() <= 4
            continue
        assert np.array_equal(result.hist_counts[v].numpy(), expected)
        assert int(result.hist_under[v]) == int((flat[v] < edges[0]).sum())
        assert int(result.hist_over[v]) == int((flat[v] > edges[-1]).sum())
    assert result.n_samples.tolist() == [flat.shape[1]] * flat.shape[0]


def test_one_sentence_matches_seed(random_tiny, one_sentence):
    windows, result = one_sentence
    flat = seed_flattened(random_tiny, windows)
    check_against_seed(result, flat)
    d = random_tiny.cfg.d_model
    per_dim = flat.reshape(flat.shape[0], -1, d)
    assert np.allclose(result.dim_maxabs.numpy(), np.abs(per_dim).max(1), rtol=1e-6)
    assert np.allclose(result.dim_mean.numpy(), per_dim.mean(1), rtol=1e-5, atol=1e-7)
    assert result.labels == ["emb", "h.0", "h.1"]
    assert result.token_labels is not None and len(result.token_labels) == windows.n_tokens


def test_dataset_with_padding_and_batches_matches_seed(random_tiny):
    windows = from_text(DOCS, random_tiny.tokenizer, window=16, stride=12)
    assert not bool(windows.mask.all())  # padding present
    flat = seed_flattened(random_tiny, windows)
    by1 = analyze(random_tiny, windows, progress=False, batch_size=1, scatter_points=500)
    check_against_seed(by1, flat)
    by3 = analyze(random_tiny, windows, progress=False, batch_size=3, scatter_points=500)
    check_against_seed(by3, flat, exact_counts=False)
    # the sample does not depend on batching, and holds real activations
    assert torch.equal(by1.sample_ids, by3.sample_ids)
    assert torch.allclose(by1.sample_values, by3.sample_values, rtol=1e-5, atol=1e-5)
    w, p, dim = by1.sample_ids[0].tolist()
    with torch.inference_mode():
        _, cache = random_tiny.run_with_cache(windows.tokens[w : w + 1])
    assert float(by1.sample_values[0, 1]) == pytest.approx(
        float(cache["blocks.0.hook_resid_post"][0, p, dim]), rel=1e-5)
    assert p >= 1 and bool(windows.mask[w, p])  # never position 0, never padding


def test_keep_first(random_tiny):
    windows = from_text(SENTENCE, random_tiny.tokenizer, window=100)
    result = analyze(random_tiny, windows, progress=False, skip_first=False, sample=10,
                     scatter_points=10)
    check_against_seed(result, seed_flattened(random_tiny, windows, skip_first=False))


def test_encoder_minilm_matches_seed(minilm):
    windows = from_text(SENTENCE, minilm.tokenizer, window=40)
    result = analyze(minilm, windows, progress=False, sample=200, scatter_points=200)
    check_against_seed(result, seed_flattened(minilm, windows))
    assert len(result.labels) == minilm.cfg.n_layers + 1


def test_save_load_round_trip_and_design_keys(one_sentence, tmp_path):
    _, result = one_sentence
    path = result.save(tmp_path)
    assert path == tmp_path / ARTIFACT and path.with_suffix(".json").exists()
    tensors, meta = artifacts.load(path)
    v, bins = len(result.labels), result.hist_counts.shape[1]
    shapes = {"covariance": (v, v), "r2": (v, v), "hist_counts": (v, bins),
              "hist_edges": (bins + 1,), "hist_under": (v,), "hist_over": (v,), "n_samples": (v,)}
    for key, dtype in DESIGN_KEYS.items():
        assert tensors[key].dtype == dtype and tuple(tensors[key].shape) == shapes[key], key
    assert meta["model"] == "random-tiny" and meta["settings"]["skip_first"] is True
    back = DistributionsResult.load(tmp_path)
    assert back.labels == result.labels and torch.equal(back.r2, result.r2)
    assert back.settings == result.settings


def test_figures_and_section(one_sentence):
    _, result = one_sentence
    figs = result.figures()
    assert set(figs) >= {"scatter_dimension", "scatter_token", "covariance", "r2", "pairplot",
                         "hist_linear", "hist_log"}
    assert list(figs["r2"].data[0].x) == result.labels
    assert len(figs["hist_linear"].data) == len(result.labels)
    assert figs["hist_log"].layout.yaxis.type == "log"
    assert len(figs["pairplot"].data[0].dimensions) == 3
    html = section(result).render()
    assert "Outlier dimensions" in html and "R²" in html


def test_bad_options_raise(random_tiny):
    windows = from_text(SENTENCE, random_tiny.tokenizer, window=100)
    with pytest.raises(WorkbenchError, match="unknown layer"):
        analyze(random_tiny, windows, progress=False, layer="h.9")
    with pytest.raises(WorkbenchError, match="out of range"):
        analyze(random_tiny, windows, progress=False, pair_layers=(0, 5))
    one_token = from_text("a", random_tiny.tokenizer, window=1, bos=False)
    with pytest.raises(WorkbenchError, match="no positions left"):
        analyze(random_tiny, one_token, progress=False)


@pytest.fixture(scope="module")
def tiny_gloss_lm():
    from workbench.models.gloss import MODEL_DIR

    if not MODEL_DIR.exists():
        pytest.skip(f"tiny-gloss-lm weights not built yet ({MODEL_DIR} missing)")
    from workbench import load_model

    return load_model("tiny-gloss-lm", device="cpu")


def test_tiny_gloss_lm_matches_seed(tiny_gloss_lm):
    windows = from_text(SENTENCE, tiny_gloss_lm.tokenizer, window=64)
    result = analyze(tiny_gloss_lm, windows, progress=False, sample=200, scatter_points=200)
    check_against_seed(result, seed_flattened(tiny_gloss_lm, windows))


def test_whole_builds_of_different_texts_merge_into_one_pass_over_both(random_tiny, tmp_path):
    """Two whole builds (each numbering its windows from 0) merge: counts, moments and
    histograms equal one pass over both texts; the sample keeps k distinct items of both."""
    from workbench.analyses.shards import merge_distributions
    from workbench.data import load_windows

    texts = ["the cat sat on the mat and then it slept for a long while in the sun",
             "a completely different sentence about dogs that bark at the moon each night"]
    opts = {"progress": False, "sample": 50, "scatter_points": 50}
    for i, text in enumerate(texts):
        analyze(random_tiny, load_windows(random_tiny, text=text), **opts).save(tmp_path / str(i))
    merged = merge_distributions([tmp_path / "0", tmp_path / "1"])
    both = analyze(random_tiny, load_windows(random_tiny, text=texts), **opts)
    assert torch.equal(merged.n_samples, both.n_samples)
    assert torch.equal(merged.hist_counts, both.hist_counts)
    torch.testing.assert_close(merged.covariance, both.covariance, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.r2, both.r2, rtol=1e-9, atol=1e-9)
    ids = merged.sample_ids
    assert ids.shape[0] == 50
    assert set(ids[:, 0].tolist()) == {0, 1}  # windows of both builds, told apart
    assert len({tuple(r) for r in ids.tolist()}) == 50  # no item twice


def test_symlog_edges_are_drawn_on_a_symlog_axis(random_tiny):
    """Non-uniform (symlog) edges: the histogram's x axis is sign(x) log10(1 + |x|/T) with ticks
    labelled in real values, and each point still sits at its bin centre's transform."""
    from workbench.data import load_windows
    from workbench.views.distributions import histograms

    r = analyze(random_tiny, load_windows(random_tiny, text="the cat sat on the mat, twice over"),
                progress=False, value_range=(-100.0, 100.0), symlog=1.0, sample=10,
                scatter_points=10)
    fig = histograms(r, log=True)
    ticks = dict(zip(fig.layout.xaxis.ticktext, fig.layout.xaxis.tickvals, strict=True))
    assert ticks["0"] == 0.0 and ticks["10"] == pytest.approx(np.log10(11))
    assert ticks["-100"] == pytest.approx(-np.log10(101))
    centres = ((r.hist_edges[1:] + r.hist_edges[:-1]) / 2).numpy()
    np.testing.assert_allclose(fig.data[0].x, np.sign(centres) * np.log10(1 + np.abs(centres)))
