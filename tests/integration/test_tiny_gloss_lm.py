"""tiny-gloss-lm: the shipped model loads offline, beats the bigram baseline, lenses and generates;
the training script is deterministic on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models.gloss import MODEL_DIR, build_model, load_tiny_gloss_lm
from workbench.training.bigram import BigramModel
from workbench.training.gloss_data import (
    EOT,
    eval_windows,
    model_cross_entropy,
    pack,
    pairs_of_windows,
)

SLICE = 64  # validation windows of 128 tokens scored by the margin test
MARGIN = 0.3  # nats/token the model must beat the add-0.01 bigram by
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return load_tiny_gloss_lm()


def test_package_folder_is_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer", "training_log.jsonl",
            "metadata.json", "MODEL_CARD.md"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 8 * 2**20
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in card
    meta = json.loads((MODEL_DIR / "metadata.json").read_text())
    assert meta["margin_vs_bigram_k0.01"] >= MARGIN
    assert f"{meta['val_loss']:.4f}" in card and f"{meta['bigram_val_loss']['0.01']:.4f}" in card
    log = [json.loads(line) for line in (MODEL_DIR / "training_log.jsonl").open()]
    assert len(log) == meta["recipe"]["steps"]
    assert any("val_loss" in r for r in log)


def test_loads_through_the_registry(model, network_attempts):
    import workbench

    again = workbench.load_model("tiny-gloss-lm", device="cpu")
    assert again.cfg.n_layers == 4 and again.cfg.d_model == 128 and again.cfg.d_mlp == 512
    assert again.cfg.n_heads == 4 and again.cfg.d_head == 32 and again.cfg.n_ctx == 128
    assert again.cfg.normalization_type == "LN" and again.cfg.act_fn == "gelu"
    assert len(again.tokenizer) == again.cfg.d_vocab == 8192
    assert again.tokenizer.bos_token == EOT
    assert all(p.dtype == torch.float32 for p in again.parameters())
    assert network_attempts == []


def test_requested_dtype():
    half = load_tiny_gloss_lm(dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WorkbenchError, match="train_gloss_lm"):
        build_model(tmp_path / "nowhere")


def test_beats_bigram_on_validation_slice(model):
    """Recompute both held-out losses on a fixed slice (does not read the model card)."""
    from workbench.corpus import gloss_documents

    tok = model.tokenizer
    eot = tok.convert_tokens_to_ids(EOT)
    val_windows, val_mask = eval_windows(pack(gloss_documents("validation"), tok), eot, 128)
    windows, mask = val_windows[:SLICE], val_mask[:SLICE]
    assert mask.sum() > SLICE * 100
    lm_loss = model_cross_entropy(model, torch.from_numpy(windows), torch.from_numpy(mask))
    bigram = BigramModel.fit(pack(gloss_documents("train"), tok), len(tok))
    prev, nxt = pairs_of_windows(windows, mask)
    bigram_loss = bigram.cross_entropy(prev, nxt, k=0.01)
    print(f"validation slice: tiny-gloss-lm {lm_loss:.4f}, add-0.01 bigram {bigram_loss:.4f}")
    assert lm_loss <= bigram_loss - MARGIN


def test_last_lens_layer_in_final_ln_mode_is_the_logits(model):
    tokens = model.to_tokens("dog, domestic dog: a member of the genus Canis")
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
    last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    lens = model.unembed(model.ln_final(last))
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)


def test_greedy_continuation_is_text(model):
    prompt = "cat, true cat:"  # no trailing space: a lone space is an unseen token
    with torch.inference_mode():
        tokens = model.generate(
            prompt, max_new_tokens=24, do_sample=False, verbose=False, return_type="tokens"
        )
    text = model.tokenizer.decode(tokens[0, 1:])
    assert text.startswith(prompt) and len(text) > len(prompt) + 10
    new = text[len(prompt):]
    assert new.isprintable() and "\ufffd" not in new
    assert sum(ch.isalpha() for ch in new) > len(new) / 2


def _quick_runs(*outs: Path) -> list[list[dict]]:
    """Quick trainings into ``outs``, side by side (each trains on one thread: two cores run two
    at once; one after the other they took ~6 min of a CI run)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "workbench.training.train_gloss_lm", "--quick",
                               "--seed", "0", "--out", str(out)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=900)  # ~1 min idle; generous for loaded CI machines
        assert proc.returncode == 0, err[-2000:]
    return [[json.loads(line) for line in (out / "training_log.jsonl").open()] for out in outs]


def test_quick_training_is_deterministic(tmp_path):
    first, second = _quick_runs(tmp_path / "a", tmp_path / "b")
    assert [r["loss"] for r in first] == [r["loss"] for r in second]
    assert [r.get("val_loss") for r in first] == [r.get("val_loss") for r in second]
    assert first[-1]["loss"] < first[0]["loss"] - 0.5  # it learns
    meta_a = json.loads((tmp_path / "a" / "metadata.json").read_text())
    meta_b = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta_a["weights_sha256"] == meta_b["weights_sha256"]
    assert meta_a["val_loss"] == meta_b["val_loss"]
    assert np.isfinite(meta_a["bigram_val_loss"]["0.01"])
    reloaded = build_model(tmp_path / "a")
    assert reloaded.cfg.d_vocab == 1024


def test_per_document_loss_equals_a_loop_over_documents(model):
    """Batched, padded scoring = one document at a time through TL's own loss; the card's
    figure is recorded and below the bigram on the same pairs."""
    from itertools import islice

    from workbench.corpus import gloss_documents
    from workbench.training.per_document import bigram_loss, document_sequences, model_loss

    docs = list(islice(gloss_documents("validation"), 40))
    seqs = document_sequences(docs, model.tokenizer, int(model.cfg.n_ctx))
    assert all(s[0] == 0 and s[-1] == 0 for s in seqs)  # <|endoftext|> before and after
    total = count = 0.0
    with torch.inference_mode():
        for s in seqs:
            ids = torch.from_numpy(s)[None]
            total += float(model(ids, return_type="loss")) * (len(s) - 1)
            count += len(s) - 1
    assert model_loss(model, seqs, batch_size=7) == pytest.approx(total / count, rel=1e-5)
    pairs = BigramModel.fit([np.array([0, 5, 6, 0, 5, 7])], 8)
    # the BOS row is counted like any other: P(5 | 0) = (2 + k) / (2 + 8k)
    k = 0.01
    assert bigram_loss(pairs, [np.array([0, 5])], k=k) == pytest.approx(
        -np.log((2 + k) / (2 + 8 * k)))
    card = json.loads((MODEL_DIR / "metadata.json").read_text())["per_document"]
    assert card["documents"] > 2000 and card["model"] < min(card["bigram"].values())
