"""Model loading: embedded offline models, hub names offline, unknown names; minilm parity with HF."""

import threading
import time
from pathlib import Path

import pytest
import torch

import workbench
from workbench.errors import OfflineError, WorkbenchError


def test_list_models_offline_first():
    models = workbench.list_models()
    names = [m.name for m in models]
    assert names[:4] == ["gemma-3-270m", "tiny-gloss-lm", "minilm", "random-tiny"]
    assert all(m.offline for m in models)
    rt = next(m for m in models if m.name == "random-tiny")
    assert not rt.pretrained and "NOT trained" in rt.description
    hub = workbench.list_models(include_hub=True)
    assert any(m.name == "gpt2" and not m.offline for m in hub)


def test_hub_model_offline_fails_fast_with_offline_list(network_attempts):
    # the bound: offline failure must not hang on the network
    exc, seconds = _load_gpt2_within(5.0)
    assert isinstance(exc, OfflineError)
    msg = str(exc)
    assert "'gpt2'" in msg and "no hub is reachable" in msg
    for name in ("tiny-gloss-lm", "minilm", "random-tiny"):
        assert name in msg
    assert seconds < 5.0


def test_unknown_model_suggests_close_matches():
    with pytest.raises(WorkbenchError, match="Did you mean: .*gpt2"):
        workbench.load_model("gtp2")
    with pytest.raises(WorkbenchError, match="unknown model 'zzzz-qqq'"):
        workbench.load_model("zzzz-qqq")


def test_auto_device_is_cpu_without_cuda(random_tiny):
    from workbench.paths import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    m = workbench.load_model("random-tiny", device="auto")
    assert next(m.parameters()).device.type == resolve_device("auto")


def test_random_tiny_is_seeded():
    a = workbench.load_model("random-tiny", device="cpu")
    b = workbench.load_model("random-tiny", device="cpu")
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_minilm_residual_matches_hf_hidden_states(minilm):
    """HookedEncoder residual stream (emb, h.0..h.5) within 1e-4 of HF BertModel hidden_states."""
    from workbench.capture import forward, resid_hooks
    from workbench.models.minilm import load_hf_bert

    bert, tok = load_hf_bert("cpu")
    enc = tok(["The cat sat on the mat.", "Interpretability needs exact numbers, always."],
              padding=True, return_tensors="pt")
    with torch.inference_mode():
        hf = bert(**enc, output_hidden_states=True).hidden_states
    acts, _ = forward(minilm, enc["input_ids"], enc["attention_mask"].bool(), resid_hooks(minilm))
    mask = enc["attention_mask"].bool()
    worst = 0.0
    for ours, ref in zip(acts.values(), hf, strict=True):
        worst = max(worst, float((ours[mask] - ref[mask]).abs().max()))
    assert len(hf) == minilm.cfg.n_layers + 1
    assert worst < 1e-4, worst


def test_default_paths_never_touch_the_network(network_attempts, tmp_path):
    """Load every embedded model fresh and capture with each, with sockets blocked."""
    from workbench.capture import resid_hooks, stream
    from workbench.data import load_windows

    names = ["random-tiny", "minilm"]
    if (Path(workbench.models.__file__).parent / "tiny_gloss_lm" / "config.json").exists():
        names.append("tiny-gloss-lm")
    for name in names:
        model = workbench.load_model(name, device="cpu")
        w = load_windows(model, text="A dog is a domesticated mammal. " * 4, window=16)
        for batch in stream(model, w, resid_hooks(model), batch_size=2, progress=False):
            assert len(batch.acts) == model.cfg.n_layers + 1
    assert network_attempts == []


def _load_gpt2_within(seconds: float) -> tuple[BaseException | None, float]:
    from workbench.models.hub import official_names

    official_names()  # the bound is on the network probe, not on importing transformer_lens
    box: list[BaseException] = []

    def attempt():
        try:
            workbench.load_model("gpt2", device="cpu")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box.append(exc)

    import transformer_lens  # noqa: F401 - import cost (seconds on a loaded CPU) is not the network's

    t0 = time.perf_counter()
    th = threading.Thread(target=attempt, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"loading gpt2 without a network did not fail within {seconds} s"
    return (box[0] if box else None), time.perf_counter() - t0


def test_hub_probe_without_offline_flags_fails_fast(monkeypatch, network_attempts):
    """No HF_HUB_OFFLINE shortcut: the socket/DNS probe itself must find the hub unreachable."""
    from workbench.models.hub import _cached_locally

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    if _cached_locally("gpt2"):
        pytest.skip("gpt2 is in the local HF cache: it would load without the hub")
    exc, seconds = _load_gpt2_within(5.0)
    assert isinstance(exc, OfflineError), exc
    msg = str(exc)
    assert "no hub is reachable" in msg
    for name in ("tiny-gloss-lm", "minilm", "random-tiny"):
        assert name in msg
    assert "huggingface.co" in network_attempts  # the probe ran (and was refused)
    assert seconds < 5.0


def test_hub_probe_follows_hf_endpoint_and_never_hangs(monkeypatch):
    import socket

    from workbench.models.hub import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as server:  # a listening loopback "mirror" is reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2.0)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's offline flag wins
        assert not hub_reachable(timeout=2.0)
        monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not hub_reachable(timeout=2.0)  # closed now: refused at once

    def stuck_dns(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror("too late")

    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.invalid")
    monkeypatch.setattr(socket, "getaddrinfo", stuck_dns)
    t0 = time.perf_counter()
    assert not hub_reachable(timeout=0.5)
    assert time.perf_counter() - t0 < 2.0  # the DNS lookup is abandoned, not awaited


def test_weights_hash_is_remembered_until_a_weight_changes(random_tiny):
    import copy

    from workbench.identity import _hash_state, weights_hash

    model = copy.deepcopy(random_tiny)
    first = weights_hash(model)
    assert first == _hash_state(model.state_dict())  # the memo holds the real digest
    assert weights_hash(model) == first
    with torch.no_grad():
        model.blocks[0].mlp.W_in[0, 0] += 1.0  # in place: same storage, new version
    changed = weights_hash(model)
    assert changed != first and changed == _hash_state(model.state_dict())


def test_unembedding_without_the_weight_copy_equals_numpy():
    """``load_model`` swaps TransformerLens' ``F.linear(x, W_U.T.contiguous())`` (a copy of W_U
    per forward) for the transposed view: the logits equal numpy's x @ W_U + b_U (x: what the
    unembedding reads), and the unembed hooks still fire."""
    import numpy as np

    model = workbench.load_model("tiny-gloss-lm", device="cpu")
    assert "forward" in vars(model.unembed)  # swapped on this instance
    ids = model.to_tokens("a small domesticated carnivorous mammal")
    seen = []
    model.unembed.hook_out.add_hook(lambda t, hook: seen.append(hook.name))
    with torch.inference_mode():
        logits, cache = model.run_with_cache(ids, names_filter="unembed.hook_in")
    model.reset_hooks()
    x = cache["unembed.hook_in"][0].double().numpy()
    ref = x @ model.W_U.detach().double().numpy() + model.b_U.detach().double().numpy()
    np.testing.assert_allclose(logits[0].double().numpy(), ref, rtol=1e-5, atol=1e-4)
    assert seen == ["unembed.hook_out"]
