"""AMAP builds on embedded models: references from TransformerLens' own cache and plain counting."""

import json
import warnings

import pandas as pd
import pytest
import torch

from workbench.analyses import amap_export
from workbench.analyses.amap import BuildInterrupted, analyze, build, load
from workbench.data import load_windows
from workbench.errors import WorkbenchError

DOCS = [
    "the cat sat on the mat and the dog sat on the log by the door",
    "a small example: amaps count every token the model reads, window by window.",
    "short",
    "neurons fire on some tokens more than on others; which ones is the question",
]


@pytest.fixture(scope="module")
def windows(random_tiny):
    return load_windows(random_tiny, text=DOCS, window=15, stride=15, bos=False)


@pytest.fixture(scope="module")
def result(random_tiny, windows):
    return analyze(random_tiny, windows, batch_size=3, progress=False, positions=True, top_k=3)


def reference(model, windows):
    """Per-position MLP activations, input tokens and argmax predictions from run_with_cache."""
    acts, inputs, outputs, pos = [], [], [], []
    with torch.inference_mode():
        for i in range(len(windows)):
            n = int(windows.mask[i].sum())
            tok = windows.tokens[i : i + 1, :n]
            logits, cache = model.run_with_cache(tok)
            acts.append(torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0]
                                     for layer in range(model.cfg.n_layers)], 1))  # [n, L, d]
            inputs.append(tok[0])
            outputs.append(logits[0].argmax(-1))
            pos.append(torch.arange(n))
    return torch.cat(acts), torch.cat(inputs), torch.cat(outputs), torch.cat(pos)


def test_build_matches_transformerlens_cache(random_tiny, windows, result):
    acts, inputs, outputs, pos = reference(random_tiny, windows)
    V = random_tiny.cfg.d_vocab
    for mode, keys in (("input", inputs), ("output", outputs)):
        mean, count = result.at(mode)  # every key id, unseen ones NaN / 0
        assert count[:V].tolist() == torch.bincount(keys, minlength=V).tolist()
        assert count[V:].tolist() == torch.bincount(pos, minlength=15).tolist()
        # the artifact holds only the keys seen, in id order, every count > 0
        assert result.keys(mode).tolist() == torch.nonzero(count).reshape(-1).tolist()
        assert bool((result.counts(mode) > 0).all())
        for t in keys.unique()[:6].tolist():
            ref = acts[keys == t].mean(0)  # [L, d]
            torch.testing.assert_close(mean[:, t], ref.double(), atol=1e-5, rtol=1e-5)
        ref = acts[pos == 0].mean(0)
        torch.testing.assert_close(mean[:, V], ref.double(), atol=1e-5, rtol=1e-5)
    assert result.invariants and all(result.invariants.values())
    mean, count = result.at("input")
    assert int(count[V]) == len(windows)  # [POS_0] once per window
    unseen = count == 0
    assert unseen.any() and mean[:, unseen].isnan().all()


def test_top_tokens_dead_units_and_contexts(random_tiny, windows, result):
    """Each read-out against TransformerLens' cache, never against another output of the pass."""
    acts, inputs, _, _ = reference(random_tiny, windows)  # acts [n, L, d]
    V = random_tiny.cfg.d_vocab
    # top tokens of unit 1_0: the per-token means of the cache, sorted
    unit = acts[:, 1, 0].double()
    means = {t: float(unit[inputs == t].mean()) for t in inputs.unique().tolist()}
    want = sorted(means, key=means.get, reverse=True)[:3]
    top = result.top_tokens(layer=1, neuron=0, k=3)
    assert [t["id"] for t in top] == want
    for t in top:
        assert t["mean"] == pytest.approx(means[t["id"]], abs=1e-5)
        assert t["count"] == int((inputs == t["id"]).sum()) and t["id"] < V
    # dead units: never above 0 anywhere in the data
    assert torch.equal(result.dead_units(), acts.amax(0) <= 0)
    # contexts: the windows with the unit's largest activations, in order, from the cache
    ctx = result.contexts[0]
    layer, neuron = ctx["layer"], ctx["neuron"]
    per_window = []
    with torch.inference_mode():
        for i in range(len(windows)):
            n = int(windows.mask[i].sum())
            _, cache = random_tiny.run_with_cache(windows.tokens[i : i + 1, :n])
            per_window.append(cache[f"blocks.{layer}.mlp.hook_post"][0, :, neuron])
    peaks = torch.stack([a.max() for a in per_window])
    order = peaks.argsort(descending=True)[: len(ctx["windows"])].tolist()
    assert [w["window"] for w in ctx["windows"]] == order
    for w in ctx["windows"]:
        a = per_window[w["window"]]
        assert w["max"] == pytest.approx(float(a.max()), abs=1e-5)
        assert w["peak"] == int(a.argmax())
        torch.testing.assert_close(torch.tensor(w["acts"]), a.float(), atol=1e-5, rtol=1e-5)


def test_resume_after_interruption_is_byte_identical(random_tiny, windows, tmp_path):
    windows = windows.select(slice(0, 7))
    opts = {"batch_size": 1, "progress": False, "positions": True, "top_k": 2,
            "checkpoint_every": 2}
    build(random_tiny, windows, tmp_path / "whole", **opts)
    with pytest.raises(BuildInterrupted):
        build(random_tiny, windows, tmp_path / "killed", max_batches=3, **opts)
    assert not (tmp_path / "killed" / "amap.safetensors").exists()
    with pytest.raises(WorkbenchError, match="--resume"):
        build(random_tiny, windows, tmp_path / "killed", **opts)
    with pytest.raises(WorkbenchError, match="--batch-size 1"):
        build(random_tiny, windows, tmp_path / "killed", resume=True, **{**opts, "batch_size": 2})
    build(random_tiny, windows, tmp_path / "killed", resume=True, **opts)
    a = (tmp_path / "whole" / "amap.safetensors").read_bytes()
    b = (tmp_path / "killed" / "amap.safetensors").read_bytes()
    assert a == b
    assert not (tmp_path / "killed" / "amap.ckpt.safetensors").exists()


def test_merge_of_two_halves_equals_one_pass(random_tiny, windows, result, tmp_path):
    opts = {"batch_size": 3, "progress": False, "positions": True, "top_k": 3}
    first = analyze(random_tiny, windows, shard=(0, 2), **opts)
    second = analyze(random_tiny, windows, shard=(1, 2), **opts)
    merged = amap_export.merge(first, second)
    for name, t in result.amap.state_dict().items():
        if t.dtype == torch.int64:
            assert torch.equal(merged.amap.state_dict()[name], t), name
        else:
            torch.testing.assert_close(merged.amap.state_dict()[name], t, atol=1e-5, rtol=1e-5)
    assert_same_top(merged.top.compute(), result.top.compute(), window_maxima(random_tiny, windows))
    assert all(merged.invariants.values()) and merged.n_windows == len(windows)


def window_maxima(model, windows) -> torch.Tensor:
    """[window, layer, mlp] each unit's largest activation over a window, one window at a time."""
    acts, *_ = reference(model, windows)
    lengths = windows.mask.sum(1).tolist()
    return torch.stack([a.amax(0) for a in acts.split(lengths)])


def assert_same_top(got: dict, want: dict, maxima: torch.Tensor, tol: float = 1e-5) -> None:
    """The same best values per unit, and every window ``got`` keeps truly reaches its value (by
    a one-window-at-a-time reference). Windows themselves may differ only among near-ties: a
    window's activation can differ by an fp32 rounding between batches of different widths (the
    engine batches by length), which may swap windows whose maxima tie."""
    torch.testing.assert_close(got["values"], want["values"], atol=tol, rtol=tol)
    w = got["windows"]  # [layer, mlp, k]
    layer = torch.arange(w.shape[0])[:, None, None].expand_as(w)
    unit = torch.arange(w.shape[1])[None, :, None].expand_as(w)
    torch.testing.assert_close(maxima[w, layer, unit], got["values"], atol=tol, rtol=tol)
    assert bool((w >= 0).all()) and all(len(set(row)) == len(row) for row in w.flatten(0, 1).tolist())


def test_merge_refuses_another_model(random_tiny, windows, result):
    from workbench.models.random_tiny import random_tiny as make

    other = analyze(make(seed=1), windows, batch_size=4, progress=False, positions=True,
                    top_k=3, context_units=0)
    with pytest.raises(WorkbenchError, match="weights_sha256_16"):
        amap_export.merge(result, other)
    no_pos = analyze(random_tiny, windows, batch_size=4, progress=False, top_k=3, context_units=0)
    with pytest.raises(WorkbenchError, match="positions"):
        amap_export.merge(result, no_pos)


def test_parquet_export_round_trips(result, tmp_path):
    result.save(tmp_path)
    loaded = load(tmp_path)
    df = amap_export.to_dataframe(loaded, layers=[1], top=20)
    assert list(df.columns[-4:]) == ["#unit", "#mode", "#layer", "#mean"]
    assert df.shape == (2 * 256, 24) and df.index[0] == "1_0"
    assert df.columns.is_unique
    path = amap_export.write_parquet(loaded, tmp_path / "amap.parquet", layers=[1], top=20)
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    # a cell is the unit's mean for that token, read straight from the artifact
    tok = df.columns[0]
    tid = amap_export.select_keys(loaded, top=20)[0]
    row = df[df["#mode"] == "output"].loc["1_5"]
    assert row[tok] == pytest.approx(float(loaded.at("output", [tid])[0][1, 0, 5]), nan_ok=True)
    by_text = amap_export.to_dataframe(loaded, modes=["input"], layers=[0], tokens=["t", 101])
    assert by_text.shape == (256, 6)
    with pytest.raises(WorkbenchError, match="not a key this AMAP saw"):
        amap_export.to_dataframe(loaded, tokens=["the cat"])


def test_dataset_shorter_than_one_window_is_refused(random_tiny):
    w = load_windows(random_tiny, text="hello", window=15, stride=15, bos=False)
    with pytest.raises(WorkbenchError, match=r"5 tokens.*window of 15"):
        analyze(random_tiny, w, progress=False)


def test_model_without_mlp_is_refused(windows):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=32,
                                  d_vocab=257, attn_only=True, act_fn="gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    with pytest.raises(WorkbenchError, match="no MLP"):
        analyze(model, windows, progress=False)


def test_encoder_input_mode_works_output_mode_refused(minilm):
    w = load_windows(minilm, text=DOCS, window=15, stride=15, bos=False)
    r = analyze(minilm, w, modes=["input"], layers=[0], batch_size=4, progress=False,
                context_units=1)
    assert all(r.invariants.values()) and r.means().shape[0] == 1
    with pytest.raises(WorkbenchError, match="encoder"):
        analyze(minilm, w, modes=["output"], progress=False)


def test_short_text_is_allowed_when_asked(random_tiny):
    w = load_windows(random_tiny, text="hello", window=15, stride=15, bos=False)
    r = analyze(random_tiny, w, progress=False, require_full_window=False, context_units=0)
    assert int(r.counts("input").sum()) == 5 and all(r.invariants.values())


@pytest.fixture(scope="module")
def naive_mlp(random_tiny, windows):
    """``hook_post`` of every layer for each window's real tokens: run_with_cache, one at a time."""
    out = []
    with torch.inference_mode():
        for i in range(len(windows)):
            n = int(windows.mask[i].sum())
            _, cache = model_cache(random_tiny, windows.tokens[i : i + 1, :n])
            out.append({layer: cache[f"blocks.{layer}.mlp.hook_post"][0]
                        for layer in range(random_tiny.cfg.n_layers)})  # [n, d_mlp]
    return out


def model_cache(model, tokens):
    return model.run_with_cache(tokens, names_filter=lambda name: name.endswith("mlp.hook_post"))


def test_contexts_of_any_unit_match_a_naive_top_k(random_tiny, windows, result, naive_mlp):
    default = {(c["layer"], c["neuron"]) for c in result.contexts}
    units = []
    for row, layer in enumerate(result.layers):
        order = result.amap.act_max[row].argsort().tolist()  # smallest maxima: not the defaults
        units += [(layer, order[0]), (layer, order[len(order) // 2])]
    assert not set(units) & default and len(default) == 4
    contexts = result.contexts_for(random_tiny, windows, units)
    assert [(c["layer"], c["neuron"]) for c in contexts] == units
    for c in contexts:
        per_window = [acts[c["layer"]][:, c["neuron"]] for acts in naive_mlp]
        maxima = [float(a.max()) for a in per_window]
        # the top-k windows by the unit's max over the window; equal maxima: lower window id
        naive_top = sorted(range(len(windows)), key=lambda w: (-maxima[w], w))[:3]
        assert [w["window"] for w in c["windows"]] == naive_top
        for w in c["windows"]:
            ref = per_window[w["window"]]
            torch.testing.assert_close(torch.tensor(w["acts"]), ref, atol=1e-5, rtol=1e-5)
            assert w["max"] == pytest.approx(float(ref.max()), abs=1e-5)
            assert w["peak"] == int(ref.argmax())
            ids = windows.tokens[w["window"], : len(ref)].tolist()
            assert w["tokens"] == [random_tiny.tokenizer.decode([t]) for t in ids]
    # the build's own contexts are the same read-out for its default units
    again = result.contexts_for(random_tiny, windows, [(c["layer"], c["neuron"])
                                                       for c in result.contexts])
    for a, b in zip(again, result.contexts, strict=True):
        assert [w["window"] for w in a["windows"]] == [w["window"] for w in b["windows"]]
        torch.testing.assert_close(torch.tensor([w["acts"] for w in a["windows"]]),
                                   torch.tensor([w["acts"] for w in b["windows"]]))


def test_contexts_refuse_unknown_units_and_other_data(random_tiny, windows, result):
    with pytest.raises(WorkbenchError, match="layer 7 is not in this AMAP"):
        result.contexts_for(random_tiny, windows, [(7, 0)])
    with pytest.raises(WorkbenchError, match="neuron 256 out of range"):
        result.contexts_for(random_tiny, windows, [(0, 256)])
    with pytest.raises(WorkbenchError, match="the data the AMAP was built on"):
        result.contexts_for(random_tiny, windows.select(slice(0, 1)), [(0, 0)])


def test_memory_limit_refuses_before_writing_anything(random_tiny, windows, result, tmp_path):
    # the plan covers what the states really hold (the input keys are known before the pass)
    from workbench.analyses.amap_reducer import expected_keys
    from workbench.kernels.amap import estimate_bytes
    from workbench.memory import human_bytes

    held = sum(t.nbytes for t in result.amap.state_dict().values())
    n_keys = len(torch.unique(windows.tokens[windows.mask])) + 15
    need = estimate_bytes(2, n_keys, 256, 2)
    assert expected_keys(windows, 15) == n_keys and held <= need
    opts = {"batch_size": 3, "progress": False, "positions": True, "top_k": 3,
            "context_units": 0}
    out = tmp_path / "amap"
    with pytest.raises(WorkbenchError) as refused:
        build(random_tiny, windows, out, memory_limit=need - 1, **opts)
    msg = str(refused.value)
    assert f"needs about {human_bytes(need)}" in msg and f"only {human_bytes(need - 1)}" in msg
    for way in ("fewer layers (--layers", "one mode (--modes input)", "--shard",
                "while the model runs on the GPU", "--sum-device cpu"):
        assert way in msg
    assert not out.exists()
    assert all(analyze(random_tiny, windows, memory_limit=need, **opts).invariants.values())
    one_layer = analyze(random_tiny, windows, memory_limit=need - 1, layers=[1], **opts)
    assert one_layer.means().shape[0] == 1
    # under torchrun the plan covers the reduce too: own states + the union + one rank's part
    from workbench.analyses.amap_reducer import AmapReducer

    with pytest.raises(WorkbenchError, match="x3 for the reduce of 2 processes"):
        AmapReducer(random_tiny, windows, positions=True, memory_limit=3 * need - 1, processes=2)
    AmapReducer(random_tiny, windows, positions=True, memory_limit=3 * need, processes=2)


def _write_v1(result, folder):
    """The artifact the dense (v1) AMAP wrote for the same build: fp32 sums and counts over
    every key id, one label per id, no build id (spread out by hand from the v2 states)."""
    from workbench import artifacts

    amap = result.amap
    n_keys = amap.n_keys
    tensors = {"layers": torch.tensor(result.layers), "act_max": amap.act_max.clone()}
    for m in result.modes:
        keys = amap.keys(m)
        total = torch.zeros(amap.n_layers, n_keys, amap.d_mlp)
        count = torch.zeros(n_keys, dtype=torch.long)
        total[:, keys] = amap.sums[m].float()
        count[keys] = amap.counts[m]
        tensors |= {f"sum.{m}": total, f"count.{m}": count}
    meta = json.loads(json.dumps(result.meta))
    for k in ("key_ids", "build_id", "format"):
        meta["amap"].pop(k, None)
    meta["amap"]["key_strs"] = [result.label(i) for i in range(n_keys)]
    artifacts.save(folder / "amap.safetensors", tensors, meta)


def test_a_v1_artifact_is_read_and_merged(random_tiny, windows, result, tmp_path):
    _write_v1(result, tmp_path / "v1")
    old = load(tmp_path / "v1")
    assert old.meta["amap"]["converted_from"] == "v1 (dense)"
    for m in result.modes:
        assert torch.equal(old.keys(m), result.keys(m))
        assert torch.equal(old.counts(m), result.counts(m))
        torch.testing.assert_close(old.means(m), result.means(m).float().double())
    # a v1 half merges with a v2 half into the one-pass AMAP
    opts = {"batch_size": 3, "progress": False, "positions": True, "top_k": 3}
    analyze(random_tiny, windows, shard=(0, 2), **opts).save(tmp_path / "a")
    _write_v1(analyze(random_tiny, windows, shard=(1, 2), **opts), tmp_path / "b")
    merged = amap_export.merge_dirs([tmp_path / "a", tmp_path / "b"])
    for m in result.modes:
        assert torch.equal(merged.keys(m), result.keys(m))
        assert torch.equal(merged.counts(m), result.counts(m))
        torch.testing.assert_close(merged.means(m), result.means(m), rtol=1e-6, atol=1e-6)
