"""NMF factors of a real forward pass: the matrix is TransformerLens's MLP cache (clipped), the
fit is as good as scikit-learn's on that matrix, and the views show the result's numbers."""

import html
import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF as SklearnNMF

from workbench import artifacts
from workbench.analyses.factors import analyze
from workbench.cli.factors import parse_layers
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.views import factors as view

TEXT = "The cat sat on the mat because it was warm."


@pytest.fixture(scope="module")
def run(random_tiny):
    windows = load_windows(random_tiny, text=TEXT)
    result = analyze(random_tiny, windows, n_components=6)
    _, cache = random_tiny.run_with_cache(result.tokens[None])
    x = np.concatenate([cache["post", layer, "mlp"][0].numpy() for layer in range(2)], axis=1)
    return result, np.maximum(x, 0)


def test_factorizes_the_clipped_mlp_cache(run):
    result, x = run
    assert result.factors.shape == (6, x.shape[0]) and result.loadings.shape == (6, x.shape[1])
    assert (result.factors >= 0).all() and (result.loadings >= 0).all()
    resid = x.astype(np.float64) - result.factors.double().numpy().T @ result.loadings.double().numpy()
    assert result.error == pytest.approx(np.linalg.norm(resid), rel=1e-6)
    assert result.relative_error == pytest.approx(result.error / np.linalg.norm(x), rel=1e-6)


def test_as_good_as_sklearn_on_the_same_matrix(run):
    result, x = run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SklearnNMF(6, max_iter=1000, tol=1e-5).fit(x.astype(np.float64)).reconstruction_err_
    assert abs(result.error / ref - 1) < 0.05


def test_loadings_by_layer_and_top_neurons_agree(run):
    result, _ = run
    by_layer = result.loadings_by_layer()
    assert by_layer.shape == (6, 2, result.d_mlp)
    torch.testing.assert_close(by_layer[:, 1, 5], result.loadings[:, result.d_mlp + 5])
    torch.testing.assert_close(result.layer_share().sum(-1), torch.ones(6))
    layer, neuron, value = result.top_neurons(3)[2][0]
    assert value == pytest.approx(float(result.loadings[2].max()))
    assert float(by_layer[2, layer, neuron]) == pytest.approx(value)


def test_layer_subset_uses_only_those_layers(random_tiny, run):
    result, x = run
    one = analyze(random_tiny, load_windows(random_tiny, text=TEXT), n_components=4, layers=[-1])
    assert one.layers == [1] and one.loadings.shape == (4, result.d_mlp)
    assert parse_layers("0-2,4") == [0, 1, 2, 4] and parse_layers(None) is None


def test_views_show_the_result(run):
    result, _ = run
    figs = view.figures(result)
    for i, trace in enumerate(figs["sparklines"].data):
        np.testing.assert_array_equal(np.asarray(trace.y), result.factors[i].numpy())
    np.testing.assert_allclose(np.asarray(figs["layer_loadings"].data[0].z),
                               result.layer_share().numpy())
    text = view.highlighted_html(result)
    assert text.count('class="wb-factor-row"') == 1 + result.n_components
    assert html.escape(result.token_strs[3]) in text
    assert "<script" not in text  # static HTML: renders anywhere


def test_encoder_works(minilm):
    r = analyze(minilm, load_windows(minilm, text=TEXT), n_components=3, layers=[0, 5])
    assert r.factors.shape[0] == 3 and r.layers == [0, 5] and r.relative_error < 1


def test_save_round_trips(run, tmp_path):
    result, _ = run
    tensors, meta = artifacts.load(result.save(tmp_path))
    torch.testing.assert_close(tensors["factors"], result.factors)
    torch.testing.assert_close(tensors["loadings"], result.loadings)
    assert meta["settings"]["n_components"] == 6 and meta["tokens_text"] == result.token_strs


def test_more_factors_than_tokens_is_a_user_error(random_tiny):
    with pytest.raises(WorkbenchError, match="fewer --components"):
        analyze(random_tiny, load_windows(random_tiny, text="ab"), n_components=8)
