"""``MODEL_CARD.md`` for ``tiny-gloss-lm``, written from the numbers in ``metadata.json``."""

from __future__ import annotations

from pathlib import Path

# Verbatim from /usr/share/doc/wordnet-base/copyright (Debian wordnet-base 1:3.0), License: WordNet3.0.
WORDNET_LICENSE = """\
This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same."""


def render_model_card(meta: dict) -> str:
    """The model card's Markdown text."""
    r, d = meta["recipe"], meta["data"]
    bigram = meta["bigram_val_loss"]
    rows = "\n".join(f"| add-k bigram, k = {k} | {v:.4f} |" for k, v in bigram.items())
    quick = "\n> **Quick smoke-test run** (`--quick`): corpus subset, small vocabulary, few steps." \
        " Not the shipped model.\n" if r.get("quick") else ""
    minutes = meta["total_seconds"] / 60
    best_k = min(bigram, key=bigram.get)
    margin = meta["margin_vs_bigram_k0.01"]
    return f"""# tiny-gloss-lm
{quick}
A small GPT-style causal language model trained by the workbench, so that the workbench has an
offline causal LM to analyse. It writes dictionary-style glosses: prompt it with
`"lemma, lemma:"` (no trailing space) and it continues with a definition.

**Not a general-purpose language model**: {meta['n_params'] / 1e6:.1f}M parameters, trained on
{d['train_tokens'] / 1e6:.1f}M tokens of WordNet glosses. Use it to exercise interpretability tooling, not to generate text for people.

## Architecture
TransformerLens `HookedTransformer`, GPT-2 style: {r['n_layers']} layers, d_model {r['d_model']},
{r['n_heads']} heads x {r['d_model'] // r['n_heads']}, d_mlp {r['d_mlp']}, n_ctx {r['n_ctx']},
LayerNorm, GELU, learned positional embeddings, untied unembedding.
{meta['n_params']:,} parameters; weights `model.safetensors` in fp16
({meta['weights_bytes'] / 2**20:.1f} MiB, sha256 `{meta['weights_sha256'][:16]}...`).
Tokenizer: byte-level BPE (HF `tokenizers`), {r['vocab_size']} tokens, min frequency 2, trained on
the train split; `<|endoftext|>` is BOS, EOS and padding.

## Data
Princeton WordNet 3.0 (Debian `wordnet-base`), read with NLTK. One document per synset:
`lemma, lemma: gloss; "example"; "example"` (recipe `workbench.corpus`, gloss-v1; sha256 of all
documents `{d['all_sha256'][:16]}...`). Split by synset, not by line: a synset is held out when
`sha256("pos:offset") mod 50 == 0`.

| split | documents | tokens |
|---|---|---|
| train | {d['train_docs']:,} | {d['train_tokens']:,} |
| validation | {d['val_docs']:,} | {d['val_tokens']:,} |

Documents are packed as `<|endoftext|> doc <|endoftext|> doc ...`.

### WordNet 3.0 licence
The training data, and therefore this model, derive from WordNet 3.0, distributed under this
licence:

```
{WORDNET_LICENSE}
```

## Training
Seed {r['seed']}; {r['steps']:,} AdamW steps (lr {r['lr']}, betas {tuple(r['betas'])}, weight
decay {r['weight_decay']} on matrices, {r['warmup_steps']} warmup steps then cosine decay to 10%,
gradient clip {r['grad_clip']}); batches of {r['batch_size']} windows x {r['n_ctx']} tokens, each
starting at a random document boundary; bf16 autocast; {r['threads']} CPU thread(s), deterministic
algorithms. The budget is a step count, so a rerun with the same seed and thread count gives the
same losses. Training took {meta['train_seconds'] / 60:.1f} min ({meta['tokens_per_second']:,}
tokens/s; {minutes:.1f} min in all, on a 2-core CPU shared with other jobs), torch
{meta['environment']['torch']}, transformer-lens {meta['environment']['transformer_lens']}.
Loss per step and periodic validation loss: `training_log.jsonl`.

Retrain: `python -m workbench.training.train_gloss_lm --out workbench/models/tiny_gloss_lm`.

## Held-out cross-entropy (nats/token)
On the validation split: {d['val_windows']:,} windows of {r['n_ctx']} tokens that start at
document boundaries, {d['val_targets']:,} scored targets (each token once, including every
document's closing `<|endoftext|>`). Model: the fp16 weights reloaded in fp32. Baselines: count
models of the train split on the same tokenizer, scored on the same (previous, next) pairs.

| model | validation cross-entropy |
|---|---|
| **tiny-gloss-lm** | **{meta['val_loss']:.4f}** |
{rows}
| add-0.01 unigram | {meta['unigram_val_loss']:.4f} |

tiny-gloss-lm is **{abs(margin):.2f} nats/token {"below" if margin > 0 else "ABOVE"}** the add-0.01
bigram (of the k tried, k = {best_k} is best: {bigram[best_k]:.4f}). `tests/integration/test_tiny_gloss_lm.py` recomputes both on a fixed
slice of the validation split.
{_per_document(meta)}"""


def _per_document(meta: dict) -> str:
    """The one-document-at-a-time figures (``workbench.training.per_document``), when measured."""
    p = meta.get("per_document")
    if not p:
        return ""
    rows = "\n".join(f"| add-k bigram, k = {k} | {v:.4f} |" for k, v in p["bigram"].items())
    best = min(p["bigram"].values())
    return f"""
## One document at a time, from BOS (nats/token)
How a user prompts it: each of {p['documents']:,} validation documents alone, `<|endoftext|>` +
document + `<|endoftext|>`, no earlier document as context ({p['targets']:,} targets). Same
bigram counts (its `<|endoftext|>` row gives the first token).

| model | per-document cross-entropy |
|---|---|
| **tiny-gloss-lm** | **{p['model']:.4f}** |
{rows}

{abs(p['margin_vs_best_bigram']):.2f} nats/token {"below" if p['model'] < best else "ABOVE"} the best
bigram. Without the preceding documents the model loses the context the packed figure above
gives it; recompute with `python -m workbench.training.per_document`.
"""


def write_model_card(folder: Path, meta: dict) -> Path:
    """Write ``MODEL_CARD.md`` into ``folder``."""
    path = Path(folder) / "MODEL_CARD.md"
    path.write_text(render_model_card(meta))
    return path
