"""Attention analysis and views against TransformerLens's own cache (random-tiny, minilm)."""

import base64
import json
import re

import numpy as np
import pytest
import torch

from workbench import artifacts
from workbench.analyses.attention import analyze
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.views import attention as view
from workbench.views.html import Page, plotly_js

TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def causal(random_tiny):
    windows = load_windows(random_tiny, text=TEXT)
    tokens = windows.tokens[0][windows.mask[0]]
    _, cache = random_tiny.run_with_cache(tokens[None])
    return analyze(random_tiny, windows), cache


@pytest.fixture(scope="module")
def pair(minilm):
    result = analyze(minilm, load_windows(minilm, text="A man is eating food."),
                     text_b="Someone is eating.", layer=2, query=3)
    _, cache = minilm.run_with_cache(result.tokens[None], token_type_ids=result.token_type_ids[None])
    return result, cache


def widget_patterns(snippet: str) -> np.ndarray:
    data = json.loads(re.search(r'type="application/json"[^>]*>(.*?)</script>', snippet, re.S)[1])
    flat = np.frombuffer(base64.b64decode(data["pattern"]), dtype="<f4")
    p = len(data["tokens"])
    return flat.reshape(data["layers"], data["heads"], p, p)


def model_view_patterns(fig, n_layers: int, n_heads: int) -> np.ndarray:
    z = [np.asarray(t.z, dtype=np.float32) for t in fig.data]
    return np.stack(z).reshape(n_layers, n_heads, *z[0].shape)


@pytest.mark.parametrize("which", ["causal", "pair"])
def test_patterns_equal_the_cache(which, request):
    result, cache = request.getfixturevalue(which)
    for layer in range(result.n_layers):
        torch.testing.assert_close(result.patterns[layer], cache["pattern", layer][0],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("which", ["causal", "pair"])
def test_views_show_exactly_the_cached_patterns(which, request):
    result, cache = request.getfixturevalue(which)
    ref = torch.stack([cache["pattern", layer][0] for layer in range(result.n_layers)]).numpy()
    np.testing.assert_array_equal(widget_patterns(view.head_view_html(result)), ref)
    grid = model_view_patterns(view.model_view(result), result.n_layers, result.n_heads)
    np.testing.assert_array_equal(grid, ref)


@pytest.mark.parametrize("which", ["causal", "pair"])
def test_neuron_view_softmax_of_qk_products_is_the_pattern(which, request):
    result, cache = request.getfixturevalue(which)
    nv = result.neuron
    q = cache["q", nv.layer][0, nv.query].double()  # [head, d_head]
    k = cache["k", nv.layer][0].double()  # [key, head, d_head]
    ref = np.einsum("hd,khd->hkd", q.numpy(), k.numpy()) / np.sqrt(q.shape[-1])
    np.testing.assert_allclose(nv.products.numpy(), ref, rtol=1e-5, atol=1e-6)
    row = cache["pattern", nv.layer][0, :, nv.query]
    torch.testing.assert_close(nv.attention, row, rtol=1e-4, atol=1e-6)
    assert nv.max_abs_diff < 1e-5
    if result.causal:  # keys after the query are masked out
        assert torch.isinf(nv.scores[:, nv.query + 1 :]).all()
    fig = view.neuron_view(result)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), nv.products[0].numpy())


def test_pair_layout_and_token_types(pair):
    result, _ = pair
    assert result.token_strs[0] == "[CLS]" and result.token_strs.count("[SEP]") == 2
    sep = result.token_strs.index("[SEP]")
    assert result.token_type_ids[: sep + 1].eq(0).all() and result.token_type_ids[sep + 1 :].eq(1).all()


def test_pair_on_a_causal_model_is_a_user_error(random_tiny):
    with pytest.raises(WorkbenchError, match="encoders"):
        analyze(random_tiny, load_windows(random_tiny, text=TEXT), text_b="B")


def test_max_positions_keeps_a_prefix_exactly(random_tiny, causal):
    full, _ = causal
    cut = analyze(random_tiny, load_windows(random_tiny, text=TEXT), max_positions=10)
    assert cut.truncated_from == full.tokens.shape[0] and cut.tokens.shape[0] == 10
    torch.testing.assert_close(cut.patterns, full.patterns[:, :, :10, :10])


def test_save_round_trips(causal, tmp_path):
    result, _ = causal
    path = result.save(tmp_path)
    tensors, meta = artifacts.load(path)
    assert path.name == "attention.safetensors"
    torch.testing.assert_close(tensors["patterns"], result.patterns)
    assert meta["tokens_text"] == result.token_strs and meta["model"] == "random-tiny"


def test_page_inlines_widget_js_once_and_needs_no_network(causal, tmp_path):
    result, _ = causal
    page = Page("t").add(view.section(result)).add(view.section(result))
    text = page.write(tmp_path / "a.html").read_text()
    assert text.count("/* workbench widgets") == 1  # the library, once, for two widgets
    assert text.count('data-wb-widget="attention-head-view"') == 2
    ours = text.replace(plotly_js(), "")  # plotly.js itself mentions CDNs it never loads offline
    assert not re.search(r"""<script[^>]+src=|https?://(?!www\.w3\.org/)|require\(\[""", ours)
