"""Capture: activations equal TransformerLens's own cache; only named hooks kept; memory plan."""

import pytest
import torch

from workbench.capture import resid_hooks, run, stream
from workbench.data import load_windows
from workbench.errors import WorkbenchError
from workbench.memory import plan

TEXT = "The quick brown fox jumps over the lazy dog. " * 6


@pytest.fixture(scope="module")
def windows(random_tiny):
    return load_windows(random_tiny, text=TEXT, window=40, stride=30)


def test_stream_equals_run_with_cache(random_tiny, windows):
    hooks = resid_hooks(random_tiny) + ["blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern"]
    seen = 0
    for batch in stream(random_tiny, windows, hooks, batch_size=3, progress=False):
        assert set(batch.acts) == set(hooks)  # nothing else is kept
        _, cache = random_tiny.run_with_cache(batch.tokens)
        for h in hooks:
            real = batch.mask if batch.acts[h].dim() == 3 else slice(None)
            torch.testing.assert_close(batch.acts[h][real], cache[h][real], rtol=0, atol=1e-6)
        assert torch.equal(batch.tokens.cpu(), windows.tokens[batch.index][:, : batch.tokens.shape[1]])
        seen += len(batch.index)
    assert seen == len(windows)


def test_logits_when_asked(random_tiny, windows):
    batch = next(stream(random_tiny, windows, ["blocks.0.hook_resid_pre"], need_logits=True,
                        progress=False))
    torch.testing.assert_close(batch.logits, random_tiny(batch.tokens), rtol=0, atol=1e-5)
    batch = next(stream(random_tiny, windows, ["blocks.0.hook_resid_pre"], progress=False))
    assert batch.logits is None


def test_forward_stops_after_deepest_hook(random_tiny, windows):
    called = []
    handle = random_tiny.blocks[1].register_forward_hook(lambda *a: called.append(1))
    try:
        list(stream(random_tiny, windows, ["blocks.0.hook_resid_post"], progress=False))
    finally:
        handle.remove()
    assert called == []  # block 1 never ran


class _Tally:
    """A reducer that records what the engine hands it (independent of the kernels)."""

    def __init__(self, name, hooks, need_logits=False):
        self.name, self.hooks, self.need_logits = name, hooks, need_logits
        self.tokens, self.ids, self.seen_hooks, self.logits = 0, [], set(), []

    def accumulators(self):
        return {}

    def update(self, b):
        self.tokens += int(b.mask.sum())
        self.ids += b.index.tolist()
        self.seen_hooks |= set(b.acts)
        self.logits.append(b.logits is not None)


def test_run_feeds_every_reducer_and_counts_tokens(random_tiny, windows):
    a = _Tally("a", ["blocks.0.hook_resid_pre"])
    b = _Tally("b", ["blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"], need_logits=True)
    stats = run(random_tiny, windows, [a, b], batch_size=4, progress=False, window_offset=100)
    for r in (a, b):
        assert r.tokens == windows.n_tokens
        # every window once, under its global id (index + the offset)
        assert sorted(r.ids) == list(range(100, 100 + len(windows)))
        # one forward per batch serves the union of the hooks, logits for everyone
        assert r.seen_hooks == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"}
        assert all(r.logits)
    assert stats.tokens == windows.n_tokens and stats.batches == -(-len(windows) // 4)
    assert stats.forwarded >= stats.tokens


def test_unknown_hook_is_a_clear_error(random_tiny, windows):
    with pytest.raises(WorkbenchError, match="do not exist"):
        next(stream(random_tiny, windows, ["blocks.9.hook_resid_post"], progress=False))


def test_plan_matches_measured_bytes_and_counts_shared_storage_once(random_tiny):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern"]
    p = plan(random_tiny, hooks, batch=3, seq=20)
    tokens = torch.zeros((3, 20), dtype=torch.long)
    _, cache = random_tiny.run_with_cache(tokens, names_filter=hooks)
    for h in hooks:
        assert p.per_hook[h] == cache[h].numel() * cache[h].element_size()
    # resid_post of block 0 is the very tensor block 1 reads as resid_pre
    assert p.shared == {"blocks.1.hook_resid_pre": "blocks.0.hook_resid_post"}
    assert p.unique_bytes == p.per_hook["blocks.0.hook_resid_post"] + p.per_hook[
        "blocks.0.attn.hook_pattern"]


def test_encoder_padding_does_not_change_real_positions(minilm):
    w = load_windows(minilm, text=["short one", "a much longer document that needs padding less"])
    hooks = resid_hooks(minilm)
    padded = next(stream(minilm, w, hooks, batch_size=2, progress=False))
    alone = next(stream(minilm, w.select(slice(0, 1)), hooks, batch_size=1, progress=False))
    n = int(alone.mask.sum())
    for h in hooks:
        torch.testing.assert_close(padded.acts[h][0, :n], alone.acts[h][0, :n], rtol=0, atol=1e-4)


def test_a_reducer_set_stopped_and_resumed_is_byte_identical(random_tiny, tmp_path):
    """distributions + lens + AMAP through one engine pass, stopped after 2 batches (as a kill
    would) and resumed from the checkpoint: every state equals the uninterrupted pass bit for bit;
    a changed setting is refused."""
    from workbench.analyses.amap_reducer import AmapReducer
    from workbench.analyses.distributions import DistributionsReducer
    from workbench.analyses.lens_reducer import LensReducer
    from workbench.capture import CaptureInterrupted, states_of
    from workbench.data import load_windows

    docs = ["the cat sat on the mat " * 3, "a dog", "neurons fire on some tokens " * 2, "x y z"]
    windows = load_windows(random_tiny, text=docs, window=12, stride=12)

    def reducers():
        return [DistributionsReducer(random_tiny, windows, value_range=(-15.0, 15.0)),
                LensReducer(random_tiny, windows), AmapReducer(random_tiny, windows)]

    whole = reducers()
    run(random_tiny, windows, whole, batch_size=2, progress=False)
    killed = reducers()
    opts = {"batch_size": 2, "progress": False, "checkpoint_dir": tmp_path, "fingerprint": "f",
            "checkpoint_every": 1}
    with pytest.raises(CaptureInterrupted):
        run(random_tiny, windows, killed, max_batches=2, **opts)
    with pytest.raises(WorkbenchError, match="--resume"):
        run(random_tiny, windows, reducers(), **opts)
    with pytest.raises(WorkbenchError, match="different build"):
        run(random_tiny, windows, reducers(), resume=True, **{**opts, "fingerprint": "g"})
    resumed = reducers()
    stats = run(random_tiny, windows, resumed, resume=True, **opts)
    assert stats.batches == -(-len(windows) // 2) - 2  # only the batches after the checkpoint
    want, got = states_of(whole), states_of(resumed)
    assert set(want) == set(got)
    for key, t in want.items():
        assert t.dtype == got[key].dtype and torch.equal(t, got[key]), key
