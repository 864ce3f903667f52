"""The logit lens analysis on embedded models, against TransformerLens' own cache and logits."""

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import artifacts
from workbench.analyses.lens import analyze
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.kernels.lens import Unembed, project

TEXT = "The keys to the cabinet are on the table."


def argsort_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ecco's method: full descending argsort of the vocabulary, position of the target."""
    order = torch.argsort(logits, dim=-1, descending=True, stable=True)
    return (order == targets.unsqueeze(-1)).float().argmax(-1) + 1


def tl_lens_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TL's final_ln lens logits [L+1, pos, vocab], the model's logits [pos, vocab])."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None])
        stack = cache.accumulated_resid(apply_ln=True)  # [L+1, 1, pos, d]
        return model.unembed(stack)[:, 0].float(), logits[0].float()


@pytest.fixture(scope="module")
def windows(random_tiny):
    return load_windows(random_tiny, text=TEXT)


@pytest.fixture(scope="module")
def result(random_tiny, windows):
    return analyze(random_tiny, windows, k=5, watch=["a", 101], progress=False)


@pytest.fixture(scope="module")
def tl_logits(random_tiny, result):
    return tl_lens_logits(random_tiny, result.tokens)


def test_stack_matches_transformer_lens_accumulated_resid(random_tiny, result, tl_logits):
    with torch.no_grad():
        _, cache = random_tiny.run_with_cache(result.tokens[None])
        ref_stack = cache.accumulated_resid(apply_ln=False)[:, 0]
        ref_ln = cache.accumulated_resid(apply_ln=True)[:, 0]
        u = Unembed.from_model(random_tiny)
        ours = project(result._stack, u, "final_ln")
    torch.testing.assert_close(result._stack, ref_stack)
    torch.testing.assert_close(u.ln(result._stack), ref_ln)  # LN recomputed per layer
    torch.testing.assert_close(ours, tl_logits[0], rtol=1e-5, atol=1e-5)


def test_final_lens_equals_model_logits(result, tl_logits):
    _, model_logits = tl_logits
    probs = model_logits.softmax(-1)
    top = probs.topk(result.k, dim=-1)
    assert result.topk_ids[-1].tolist() == top.indices.tolist()
    torch.testing.assert_close(result.topk_probs[-1], top.values, rtol=1e-5, atol=1e-6)
    assert result.agreement[-1].all() and (result.kl[-1] == 0).all()


def test_ranks_equal_argsort_ranks_where_no_tie(result, tl_logits):
    lens_logits, _ = tl_logits
    targets = result.tokens[1:].expand(lens_logits.shape[0], -1)
    ref = argsort_ranks(lens_logits[:, :-1], targets)
    picked = lens_logits[:, :-1].gather(-1, targets.unsqueeze(-1))
    # A tie (or a near tie our own matmul could order differently) makes ecco's rank arbitrary.
    near = ((lens_logits[:, :-1] - picked).abs() < 1e-4).sum(-1) > 1
    assert (~near).float().mean() > 0.9
    assert torch.equal(result.ranks[~near], ref[~near])
    # Watched ids at every lens and position.
    w = result.watch_ids.expand(*lens_logits.shape[:2], -1)
    assert torch.equal(result.watch_ranks, argsort_ranks(lens_logits.unsqueeze(2), w))


def _ecco_raw_ranks(model, tokens: torch.Tensor) -> torch.Tensor:
    """ecco's raw lens from TL's cache: every hidden state @ the model's own W_U + b_U, argsort."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None])
        stack = cache.accumulated_resid(apply_ln=False)[:, 0]  # [L+1, pos, d], no final LN
        logits = stack @ model.W_U + model.b_U
    return argsort_ranks(logits[:, :-1], tokens[1:].expand(logits.shape[0], -1))


def test_raw_mode_is_eccos_raw_and_processing_is_visible(random_tiny, windows, result):
    import copy

    raw = analyze(random_tiny, windows, k=5, mode="raw", progress=False)
    # ranks of ecco's raw projection of HF-style (unprocessed) hidden states, exactly
    want = _ecco_raw_ranks(random_tiny, raw.tokens)
    assert torch.equal(raw.ranks, want)
    assert raw.meta["weight_processing"] == "none"
    # TL's weight processing keeps the model's function (final_ln lens unchanged) but moves the
    # final LayerNorm's gain into W_U and centres the residual: its raw lens is not ecco's
    processed = copy.deepcopy(random_tiny)
    processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    p_final = analyze(processed, windows, k=5, progress=False)
    p_raw = analyze(processed, windows, k=5, mode="raw", progress=False)
    assert torch.equal(p_final.topk_ids[-1], result.topk_ids[-1])
    assert not torch.equal(p_raw.ranks, want)
    assert p_raw.meta["weight_processing"].startswith("folded")  # recorded, not silent


def test_first_and_last_positions(result, tl_logits):
    lens_logits, _ = tl_logits
    P = result.n_positions
    assert result.ranks.shape == (len(result.layer_labels), P - 1)
    first, last = result.predictions(0), result.predictions(-1)
    for rows, p in ((first, 0), (last, P - 1)):
        got = [[r["id"] for r in rows if r["layer"] == lab] for lab in result.layer_labels]
        assert got == lens_logits[:, p].topk(5, dim=-1).indices.tolist()
    # ranks[:, 0] targets tokens[1]; the last column targets the last token.
    assert torch.equal(result.ranks[:, 0], argsort_ranks(lens_logits[:, 0], result.tokens[1]))
    assert torch.equal(result.ranks[:, -1],
                       argsort_ranks(lens_logits[:, P - 2], result.tokens[P - 1]))
    with pytest.raises(WorkbenchError, match="outside"):
        result.predictions(P)


def test_predictions_beyond_stored_k_and_new_watch_recompute(result, tl_logits):
    lens_logits, _ = tl_logits
    rows = result.predictions(3, k=12, layer="h.0")
    assert [r["id"] for r in rows] == lens_logits[1, 3].topk(12).indices.tolist()
    rk = result.rankings_watch(["a", 101], position=2)
    assert torch.equal(rk.ranks, result.watch_ranks[:, 2])
    assert rk.columns[0] == "a"


def test_watch_strings_of_several_pieces_name_the_pieces(random_tiny, windows):
    with pytest.raises(WorkbenchError, match=r"3 tokens.*\[' ', 'i', 's'\]"):
        analyze(random_tiny, windows, watch=[" is"], progress=False)
    with pytest.raises(WorkbenchError, match="outside the vocabulary"):
        analyze(random_tiny, windows, watch=[10**6], progress=False)


def test_twelve_layers_are_ordered_numerically():
    from workbench.models.random_tiny import random_tiny

    model = random_tiny(n_layers=12, d_model=32, n_heads=2, d_mlp=64, seed=3)
    res = analyze(model, load_windows(model, text="layer order"), k=3, progress=False)
    labels = ["emb"] + [f"h.{i}" for i in range(12)]
    assert res.layer_labels == labels
    lens_logits, _ = tl_lens_logits(model, res.tokens)  # rows in TL's depth order
    assert res.topk_ids[:, 0].tolist() == lens_logits[:, 0].topk(3).indices.tolist()
    for fig in res.figures().values():
        axis = fig.layout.yaxis
        if axis.categoryarray is not None:  # the top-1 grid adds its input row below emb
            rows = list(axis.categoryarray)
            assert rows == labels or rows == ["input", *labels]
    assert [r["layer"] for r in res.predictions(0, k=1)] == labels


def test_generated_mode_ranks_greedy_tokens(random_tiny):
    w = load_windows(random_tiny, text="Heathrow airport is in")
    res = analyze(random_tiny, w, k=3, generate=4, progress=False)
    prompt = w.tokens[0][w.mask[0]]
    with torch.no_grad():
        ref = random_tiny.generate(prompt[None], max_new_tokens=4, do_sample=False,
                                   stop_at_eos=False, verbose=False, use_past_kv_cache=False)
    assert res.tokens.tolist() == ref[0].tolist()
    rk = res.rankings()
    assert rk.ranks.shape == (3, 4) and rk.positions == list(range(len(prompt) - 1, len(prompt) + 3))
    assert (rk.ranks[-1] == 1).all()  # greedy = the final lens' argmax in final_ln mode
    assert res.rankings(generated_only=False).ranks.shape == (3, len(prompt) + 3)


def test_dataset_aggregates_over_padded_windows(random_tiny):
    docs = ["a short one", "and a much longer document that spans more than one window here"]
    w = load_windows(random_tiny, text=docs, window=16, stride=16)
    assert not w.mask.all()  # some padding to mask
    res = analyze(random_tiny, w, k=2, batch_size=2, progress=False)
    log_ranks, agree, n_pos = [], [], 0
    for i in range(len(w)):
        toks = w.tokens[i][w.mask[i]]
        lens_logits, _ = tl_lens_logits(random_tiny, toks)
        log_ranks.append(argsort_ranks(lens_logits[:, :-1], toks[1:]).double().log())
        top = lens_logits.argmax(-1)
        agree.append((top == top[-1]).double())
        n_pos += len(toks)
    d = res.dataset
    assert int(d["n_positions"]) == n_pos and int(d["n_targets"]) == n_pos - len(w)
    torch.testing.assert_close(d["mean_log_rank"], torch.cat(log_ranks, 1).mean(1), atol=1e-3,
                               rtol=1e-3)
    torch.testing.assert_close(d["top1_agreement"], torch.cat(agree, 1).mean(1))
    assert torch.equal(res.tokens, w.tokens[0][w.mask[0]])  # the per-text view: first window


def test_save_writes_the_design_keys(result, tmp_path):
    path = result.save(tmp_path)
    assert path == tmp_path / "lens.safetensors" and (tmp_path / "lens.json").exists()
    t, meta = artifacts.load(path)
    L1, P, k, W = len(result.layer_labels), result.n_positions, result.k, 2
    expect = {"tokens": ((P,), torch.int64), "topk_ids": ((L1, P, k), torch.int64),
              "topk_probs": ((L1, P, k), torch.float32), "ranks": ((L1, P - 1), torch.int64),
              "watch_ids": ((W,), torch.int64), "watch_ranks": ((L1, P, W), torch.int64),
              "dataset.mean_log_rank": ((L1,), torch.float64)}
    for key, (shape, dtype) in expect.items():
        assert tuple(t[key].shape) == shape and t[key].dtype == dtype, key
    assert meta["settings"]["lens_mode"] == "final_ln" and meta["layer_labels"][0] == "emb"


def test_small_budget_gives_the_same_result(random_tiny, windows, result):
    small = analyze(random_tiny, windows, k=5, watch=["a", 101], budget_bytes=1, progress=False)
    assert torch.equal(small.topk_ids, result.topk_ids) and torch.equal(small.ranks, result.ranks)
    torch.testing.assert_close(small.kl, result.kl, atol=1e-5, rtol=1e-4)


def test_encoder_is_refused(minilm):
    w = load_windows(minilm, text="the keys")
    with pytest.raises(WorkbenchError, match="encoder"):
        analyze(minilm, w, progress=False)


@pytest.fixture(scope="module")
def tiny_gloss_lm():
    import workbench.models

    folder = Path(workbench.models.__file__).parent / "tiny_gloss_lm"
    if not folder.is_dir():
        pytest.skip("tiny-gloss-lm weights not trained yet (workbench/models/tiny_gloss_lm/)")
    from workbench import load_model

    return load_model("tiny-gloss-lm", device="cpu")


def test_tiny_gloss_lm_lens(tiny_gloss_lm):
    w = load_windows(tiny_gloss_lm, text="a domesticated carnivorous mammal that barks", window=32)
    res = analyze(tiny_gloss_lm, w, k=5, progress=False)
    lens_logits, model_logits = tl_lens_logits(tiny_gloss_lm, res.tokens)
    assert res.topk_ids[-1].tolist() == model_logits.topk(5, dim=-1).indices.tolist()
    agreement = res.dataset["top1_agreement"]
    assert agreement[-1] == 1 and agreement[-1] > agreement[0]
    assert np.isfinite(res.dataset["mean_kl"].numpy()).all()


def test_figures_keep_one_column_per_position(result):
    figs = result.figures()
    assert set(figs) == {"grid", "topk", "rankings", "watch", "agreement", "rank_hist"}
    grid = figs["grid"].data[0]
    # the grid: an input row, then per lens its top-1 token (text) and that token's probability
    assert list(grid.x) == list(range(result.n_positions))
    assert grid.z[0] == tuple([None] * result.n_positions) or list(grid.z[0]) == [None] * result.n_positions
    probs = result.topk_probs[:, :, 0].float()
    assert torch.allclose(torch.tensor([list(r) for r in grid.z[1:]]), probs, atol=1e-4)
    from workbench.views.tokens import html_label_short

    for li in range(len(result.layer_labels)):
        assert list(grid.text[li + 1]) == [html_label_short(result.label(t))
                                           for t in result.topk_ids[li, :, 0].tolist()]
    heat = figs["rankings"].data[0]
    P = result.n_positions
    # Numeric x: repeated tokens (TEXT has several "e", " ", "t") keep their own columns.
    assert list(heat.x) == list(range(P - 1))
    assert [list(row) for row in heat.text] == result.ranks.tolist()
    assert len(figs["watch"].data[0].x) == 2


# --- Every window: text longer than the context keeps its ranks at every position. ---

LONG = " ".join(f"word{i} sits in the cabinet" for i in range(12))  # 3 windows of random-tiny's 128


@pytest.fixture(scope="module")
def long_windows(random_tiny):
    w = load_windows(random_tiny, text=LONG)  # default window: the model's context
    assert len(w) >= 3 and w.mask[:-1].all() and not w.mask[-1].all()  # padding in the last
    return w


@pytest.fixture(scope="module")
def long_result(random_tiny, long_windows):
    # batch_size 2: a full batch, then a batch trimmed to the shorter last window.
    return analyze(random_tiny, long_windows, k=3, watch=["a", 101], batch_size=2, progress=False)


def assert_ranks_match(ours: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """``ours[..., t]`` equals the full-vocabulary argsort rank of ``targets[..., t]`` in
    ``logits[..., :]``, except where another logit is within 1e-4 of the target's: there only the
    tie band is checked (our batched, padded forward may order near-equal logits differently)."""
    order = torch.argsort(logits, dim=-1, descending=True, stable=True).unsqueeze(-2)
    ref = (order == targets.unsqueeze(-1)).float().argmax(-1) + 1  # [..., t]
    diff = logits.unsqueeze(-2) - logits.gather(-1, targets).unsqueeze(-1)  # [..., t, vocab]
    near = (diff.abs() < 1e-4).sum(-1) > 1
    assert (~near).float().mean() > 0.9
    assert torch.equal(ours[~near], ref[~near])
    low, high = 1 + (diff > 1e-4).sum(-1), (diff >= -1e-4).sum(-1)
    assert ((ours >= low) & (ours <= high))[near].all()


def test_window_ranks_equal_naive_ranks_of_every_window(random_tiny, long_windows, long_result):
    w, r = long_windows, long_result
    n, width = w.tokens.shape
    L1 = len(r.layer_labels)
    assert r.window_ranks.shape == (L1, n, width - 1) and r.window_ranks.dtype == torch.int32
    assert r.window_watch_ranks.shape == (L1, n, width, 2)
    assert torch.equal(r.window_doc_ids, w.doc_ids) and torch.equal(r.window_starts, w.starts)
    for i in range(n):
        toks = w.tokens[i][w.mask[i]]
        m = len(toks)
        assert torch.equal(r.window_tokens[i, :m], toks) and (r.window_tokens[i, m:] == -1).all()
        lens_logits, _ = tl_lens_logits(random_tiny, toks)  # run_with_cache, accumulated_resid
        got = r.window_ranks[:, i, : m - 1].long()
        assert_ranks_match(got[..., None], lens_logits[:, :-1], toks[1:, None].expand(L1, -1, 1))
        # The last real position has no next token; padding has no rank.
        assert (r.window_ranks[:, i, m - 1 :] == -1).all()
        assert torch.equal(r.ranks_of_window(i).ranks, got)
        wid = r.watch_ids.expand(L1, m, -1)
        assert_ranks_match(r.window_watch_ranks[:, i, :m].long(), lens_logits, wid)
        assert (r.window_watch_ranks[:, i, m:] == -1).all()
    assert (r.window_ranks[:, -1] == -1).any()  # the last window is padded
    assert int((r.window_ranks[0] > 0).sum()) == int(r.dataset["n_targets"])


def test_window_zero_is_the_per_text_view(long_result):
    r = long_result
    P = r.n_positions
    assert torch.equal(r.window_tokens[0, :P], r.tokens)
    assert torch.equal(r.window_ranks[:, 0, : P - 1].long(), r.ranks)
    assert torch.equal(r.window_watch_ranks[:, 0, :P].long(), r.watch_ranks)
    rk = r.ranks_of_window(-1)
    assert rk.positions == list(range(rk.ranks.shape[1])) and " → " in rk.columns[0]
    with pytest.raises(WorkbenchError, match="outside the input's 3 windows"):
        r.ranks_of_window(3)


def test_window_ranks_in_generated_mode_are_the_input_windows(random_tiny):
    short = load_windows(random_tiny, text="Heathrow airport is in")
    g = analyze(random_tiny, short, k=3, generate=4, progress=False)
    n = int(short.mask[0].sum())
    assert g.window_ranks.shape[1] == 1 and g.n_positions == n + 4
    # Teacher-forced ranks of the prompt window: ranks' first n-1 columns, not the generation.
    assert torch.equal(g.window_ranks[:, 0, : n - 1].long(), g.ranks[:, : n - 1])
    assert (g.window_ranks[:, 0, n - 1 :] == -1).all()


def test_saved_window_keys_and_dtypes(long_result, tmp_path):
    r = long_result
    t, _ = artifacts.load(r.save(tmp_path))
    L1, n, width = len(r.layer_labels), r.n_windows, r.window_tokens.shape[1]
    expect = {"window_tokens": ((n, width), torch.int64),
              "window_ranks": ((L1, n, width - 1), torch.int32),
              "window_watch_ranks": ((L1, n, width, 2), torch.int32),
              "window_doc_ids": ((n,), torch.int64), "window_starts": ((n,), torch.int64),
              "tokens": ((r.n_positions,), torch.int64),
              "ranks": ((L1, r.n_positions - 1), torch.int64)}
    for key, (shape, dtype) in expect.items():
        assert tuple(t[key].shape) == shape and t[key].dtype == dtype, key
    assert torch.equal(t["window_ranks"], r.window_ranks)


def test_report_section_names_the_per_window_key(long_result, result):
    from workbench.views.lens import section

    note = section(long_result).note
    assert "window 0 of 3" in note and "window_ranks" in note and "ranks_of_window" in note
    assert "window_ranks" not in section(result).note  # one window: nothing to point at
