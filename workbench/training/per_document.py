"""Per-document held-out loss of tiny-gloss-lm: each document alone, from BOS, against the bigram.

The packed-stream figure of the model card scores windows of 128 tokens that carry earlier
documents as context. A user prompts one document at a time, from BOS (``<|endoftext|>``): this
scores exactly that, ``[BOS] + doc`` per validation document (every token of the document and the
closing ``<|endoftext|>`` predicted from BOS and the document's own prefix), pooled over all
targets, and the add-k bigram on the same (previous, next) pairs (its BOS row is the
``<|endoftext|>`` → first-token counts of the packed training stream).

    python -m workbench.training.per_document [--docs N]   # writes into metadata.json + card
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import torch

from workbench.training.bigram import BigramModel

EOT = "<|endoftext|>"


def document_sequences(docs: Sequence[str], tokenizer, n_ctx: int) -> list[np.ndarray]:
    """``[EOT] + doc + [EOT]`` per document, cut to the context (+1 for the last target)."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    encodings = tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)
    return [np.array([eot, *enc.ids, eot], dtype=np.int64)[: n_ctx + 1] for enc in encodings]


@torch.inference_mode()
def model_loss(model, sequences: Sequence[np.ndarray], batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over every target of every sequence (nats/token)."""
    total, count = 0.0, 0
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding
    for b in range(0, len(order), batch_size):
        rows = [sequences[i] for i in order[b : b + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.from_numpy(r)
            mask[j, : len(r) - 1] = True
        logits = model(ids[:, :-1])  # causal: right padding never reaches a real target
        nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                ids[:, 1:].flatten(), reduction="none")
        total += float(nll[mask.flatten()].double().sum())
        count += int(mask.sum())
    return total / count


def bigram_loss(bigram: BigramModel, sequences: Sequence[np.ndarray], k: float) -> float:
    prev = np.concatenate([s[:-1] for s in sequences])
    nxt = np.concatenate([s[1:] for s in sequences])
    return bigram.cross_entropy(prev, nxt, k=k)


def evaluate(limit: int | None = None, ks: Sequence[float] = (0.01, 0.1, 1.0)) -> dict:
    """The per-document figures of the shipped tiny-gloss-lm on the validation split."""
    from itertools import islice

    from workbench.corpus import gloss_documents
    from workbench.models.gloss import load_tiny_gloss_lm
    from workbench.training.gloss_data import pack

    model = load_tiny_gloss_lm()
    tok = model.tokenizer
    val = list(islice(gloss_documents("validation"), limit))
    seqs = document_sequences(val, tok, int(model.cfg.n_ctx))
    bigram = BigramModel.fit(pack(gloss_documents("train"), tok), len(tok))
    out = {"documents": len(seqs), "targets": int(sum(len(s) - 1 for s in seqs)),
           "model": round(model_loss(model, seqs), 4),
           "bigram": {str(k): round(bigram_loss(bigram, seqs, k), 4) for k in ks}}
    out["margin_vs_best_bigram"] = round(min(out["bigram"].values()) - out["model"], 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    from workbench.models.gloss import MODEL_DIR
    from workbench.training.model_card import write_model_card

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=None, help="first N validation documents")
    args = ap.parse_args(argv)
    result = evaluate(args.docs)
    path = MODEL_DIR / "metadata.json"
    meta = json.loads(path.read_text())
    meta["per_document"] = result
    path.write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(MODEL_DIR, meta)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
