"""Train ``tiny-gloss-lm`` on CPU, deterministically, and write the shippable model folder.

    python -m workbench.training.train_gloss_lm --out workbench/models/tiny_gloss_lm
    python -m workbench.training.train_gloss_lm --out /tmp/quick --quick     # < 1 minute

1. Corpus: WordNet 3.0 glosses (``workbench.corpus``), split by synset.
2. Tokenizer: byte-level BPE trained on the train split (8192 tokens; quick: 1024 on a subset).
3. Model: GPT-style HookedTransformer, 4 layers, d_model 128, 4 heads x 32, d_mlp 512, n_ctx 128,
   LayerNorm, GELU. AdamW (lr 2e-3, betas 0.9/0.95, weight decay 0.1 on matrices), 100 warmup
   steps then cosine decay, gradient clip 1.0, batches of 16 windows x 128 tokens that start at a
   random document boundary, bf16 autocast.
4. The budget is a step count, not a clock, so the same seed gives the same weights and losses
   (fixed thread count, seeded generator, deterministic algorithms).
5. Output folder: ``model.safetensors`` (fp16), ``config.json``, ``tokenizer/``,
   ``training_log.jsonl``, ``metadata.json``, ``MODEL_CARD.md``. Held-out numbers are computed on
   the fp16 weights reloaded in fp32, next to add-k bigram baselines on the same tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench.training.bigram import BigramModel, unigram_cross_entropy
from workbench.training.gloss_data import (
    EOT,
    doc_starts,
    eval_windows,
    load_tokenizer,
    model_cross_entropy,
    pack,
    pairs_of_windows,
    sample_windows,
    train_tokenizer,
    usable_starts,
)

BIGRAM_KS = (0.01, 0.1, 1.0)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (recorded in ``metadata.json``)."""

    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    n_ctx: int = 128
    vocab_size: int = 8192
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_every: int = 500
    threads: int = 1
    bf16_autocast: bool = True
    train_doc_stride: int = 1  # use every n-th train document (quick runs use a subset)
    val_doc_stride: int = 1
    quick: bool = False


# The smoke test trains in fp32: bf16 autocast is 8.5x SLOWER than fp32 on CPUs without bf16
# instructions (measured on this project's CI machines, AMD EPYC without AVX512-BF16: a 2048 x 128
# by 128 x 512 matmul 45 ms vs 5.3 ms), which made one quick run ~3 minutes instead of < 1.
QUICK = dict(steps=40, vocab_size=1024, eval_every=20, train_doc_stride=25, val_doc_stride=4,
             warmup_steps=10, quick=True, bf16_autocast=False)


def model_config(recipe: Recipe, d_vocab: int) -> dict:
    """The ``HookedTransformerConfig`` fields of the model, JSON-ready (``config.json``)."""
    return dict(
        model_name="tiny-gloss-lm",
        n_layers=recipe.n_layers,
        d_model=recipe.d_model,
        n_heads=recipe.n_heads,
        d_head=recipe.d_model // recipe.n_heads,
        d_mlp=recipe.d_mlp,
        n_ctx=recipe.n_ctx,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
    )  # no ``seed`` field: TL would reseed the global RNGs every time the model is loaded


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup for ``warmup_steps``, then cosine decay to 10% of the peak at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(recipe.steps - recipe.warmup_steps, 1)
    progress = min((step - recipe.warmup_steps) / span, 1.0)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases or LayerNorm gains)."""
    decay = [p for _, p in sorted(model.named_parameters()) if p.ndim >= 2]
    no_decay = [p for _, p in sorted(model.named_parameters()) if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def _seed_everything(recipe: Recipe) -> torch.Generator:
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(recipe.seed)
    return torch.Generator().manual_seed(recipe.seed)


def save_weights(model: torch.nn.Module, path: Path) -> str:
    """Parameters (no mask buffers) as fp16 safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.named_parameters()}
    save_file(tensors, str(path), metadata={"format": "pt"})  # one key: byte-identical reruns
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(out: Path, recipe: Recipe) -> dict:
    """Run the whole recipe into ``out``; returns the metadata written to ``metadata.json``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from workbench.corpus import corpus_sha256, gloss_documents
    from workbench.models.gloss import build_model

    t_start = time.time()
    generator = _seed_everything(recipe)
    out.mkdir(parents=True, exist_ok=True)

    train_docs = list(gloss_documents("train"))[:: recipe.train_doc_stride]
    val_docs = list(gloss_documents("validation"))[:: recipe.val_doc_stride]
    t0 = time.time()
    train_tokenizer(train_docs, out / "tokenizer", recipe.vocab_size)
    tokenizer = load_tokenizer(out / "tokenizer")
    tokenizer_s = time.time() - t0
    eot = tokenizer.convert_tokens_to_ids(EOT)
    train_ids, val_ids = pack(train_docs, tokenizer), pack(val_docs, tokenizer)
    starts = torch.from_numpy(usable_starts(len(train_ids), doc_starts(train_ids, eot), recipe.n_ctx))
    train_stream = torch.from_numpy(train_ids)
    val_np, val_mask_np = eval_windows(val_ids, eot, recipe.n_ctx)
    val_windows, val_mask = torch.from_numpy(val_np), torch.from_numpy(val_mask_np)

    cfg_fields = model_config(recipe, len(tokenizer))
    torch.manual_seed(recipe.seed)
    model = HookedTransformer(HookedTransformerConfig(**cfg_fields), tokenizer=tokenizer)
    model.train()
    optimizer = make_optimizer(model, recipe)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters, {len(train_ids):,} train tokens, {len(val_ids):,} val tokens, "
          f"{recipe.steps} steps", flush=True)

    log_path = out / "training_log.jsonl"
    t_train = time.time()
    with log_path.open("w") as log:
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, recipe)
            batch = sample_windows(train_stream, starts, recipe.batch_size, recipe.n_ctx, generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
                logits = model(batch[:, :-1])
                loss = torch.nn.functional.cross_entropy(
                    logits.float().flatten(0, 1), batch[:, 1:].flatten()
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, "loss": round(loss.item(), 6),
                      "lr": lr_at(step, recipe), "elapsed_s": round(time.time() - t_train, 2)}
            if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
                model.eval()
                record["val_loss"] = round(model_cross_entropy(
                    model, val_windows, val_mask, autocast=recipe.bf16_autocast), 6)
                model.train()
                print(f"step {step + 1}: train {record['loss']:.4f} "
                      f"val {record['val_loss']:.4f} ({record['elapsed_s']:.0f} s)", flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
    train_s = time.time() - t_train

    weights_sha = save_weights(model, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(cfg_fields, indent=2) + "\n")
    # The shipped numbers are those of the shipped weights: fp16 reloaded as fp32.
    shipped = build_model(out, device="cpu", dtype=torch.float32)
    val_loss = model_cross_entropy(shipped, val_windows, val_mask)
    bigram = BigramModel.fit(train_ids, len(tokenizer))
    prev, nxt = pairs_of_windows(val_np, val_mask_np)
    bigram_losses = {str(k): bigram.cross_entropy(prev, nxt, k=k) for k in BIGRAM_KS}
    metadata = {
        "model": "tiny-gloss-lm",
        "recipe": asdict(recipe),
        "n_params": n_params,
        "weights_sha256": weights_sha,
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "data": {
            "source": "Princeton WordNet 3.0 (Debian wordnet-base), workbench.corpus gloss-v1",
            "all_sha256": corpus_sha256("all"),
            "train_docs": len(train_docs), "val_docs": len(val_docs),
            "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
            "val_targets": int(val_mask_np.sum()), "val_windows": int(len(val_np)),
        },
        "val_loss": val_loss,
        "bigram_val_loss": bigram_losses,
        "unigram_val_loss": unigram_cross_entropy(train_ids, nxt, len(tokenizer)),
        "margin_vs_bigram_k0.01": bigram_losses["0.01"] - val_loss,
        "train_seconds": round(train_s, 1),
        "tokenizer_seconds": round(tokenizer_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "tokens_per_second": round(recipe.steps * recipe.batch_size * recipe.n_ctx / train_s),
        "environment": {
            "torch": torch.__version__, "transformer_lens": _version("transformer_lens"),
            "tokenizers": _version("tokenizers"), "python": platform.python_version(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    from workbench.training.model_card import write_model_card

    write_model_card(out, metadata)
    print(f"val {val_loss:.4f} nats/token vs add-0.01 bigram {bigram_losses['0.01']:.4f} "
          f"({metadata['total_seconds']:.0f} s total)", flush=True)
    return metadata


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test, < 1 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (the budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixed: determinism)")
    args = parser.parse_args(argv)
    fields = dict(QUICK) if args.quick else {}
    fields.update(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        fields["steps"] = args.steps
    return train(args.out, Recipe(**fields))


if __name__ == "__main__":
    main()
