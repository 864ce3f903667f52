"""The logit lens as a reducer of the capture engine (``workbench.capture.run``).

``LensReducer(model, windows, mode=..., k=..., watch=...)`` reads the residual hooks of every
batch and keeps the dataset statistics (``LensStats``), every window's ranks (``WindowRanks``) and
the first window's read-outs; ``finish()`` returns the ``LensResult``
(``workbench.analyses.lens``, whose ``analyze`` runs it alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench import artifacts, capture
from workbench.analyses.lens import LensResult, check_generate, decode_ids, greedy, resolve_watch
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.kernels.lens import (
    DEFAULT_BUDGET,
    MODES,
    LensOutput,
    Unembed,
    logit_lens,
    next_token_targets,
)
from workbench.kernels.lens_stats import LensStats, WindowRanks


def _check(model, mode: str, k: int) -> None:
    if capture.is_encoder(model):
        raise WorkbenchError(
            f"{model.cfg.model_name} is an encoder (bidirectional): it has no next-token "
            "prediction for a logit lens to read; use a causal model (tiny-gloss-lm, random-tiny "
            "or a TransformerLens name like gpt2)"
        )
    if mode not in MODES:
        raise WorkbenchError(f"unknown lens mode {mode!r}; use one of {', '.join(MODES)}")
    if not 1 <= k <= model.cfg.d_vocab:
        raise WorkbenchError(f"k={k} must be between 1 and the vocabulary size {model.cfg.d_vocab}")


class LensReducer:
    """The logit lens as a reducer of the capture engine: residual hooks in; dataset statistics
    (``LensStats``), every window's ranks (``WindowRanks``) and the first window's read-outs out.

    The first window's top-k / entropy / KL / residuals are kept when its batch passes; a pass
    that never saw it (a resumed pass, a later shard or rank) reads that one window again."""

    name = "lens"
    need_logits = False

    def __init__(self, model, windows: Windows, *, mode: str = "final_ln", k: int = 10,
                 watch: Sequence[int | str] | None = None, generate: int = 0,
                 budget_bytes: int = DEFAULT_BUDGET, batch_size: int = 8):
        _check(model, mode, k)
        if generate < 0:
            raise WorkbenchError(f"generate must be >= 0, got {generate}")
        check_generate(model, int(windows.mask[0].sum()), generate)  # before the pass
        self.model, self.windows = model, windows
        self.mode, self.k, self.watch, self.generate = mode, k, watch, generate
        self.budget_bytes = budget_bytes
        self.watch_ids = None if not watch else resolve_watch(model.tokenizer, watch,
                                                              model.cfg.d_vocab)
        self.hooks = capture.resid_hooks(model)
        device = next(model.parameters()).device
        self.accs = {"stats": LensStats(len(self.hooks), int(model.cfg.d_vocab), device=device),
                     "windows": WindowRanks(len(self.hooks), *windows.tokens.shape,
                                            None if self.watch_ids is None else len(self.watch_ids))}
        self.first = None
        self.settings = {"lens_mode": mode, "k": k, "generate": generate,
                         "watch": None if watch is None else list(watch),
                         "budget_bytes": budget_bytes, "batch_size": batch_size}

    def accumulators(self) -> dict:
        return self.accs

    def _lens(self, stack, tokens, mask) -> LensOutput:
        watch = None if self.watch_ids is None else self.watch_ids.to(stack.device)
        return logit_lens(stack, Unembed.from_model(self.model), mode=self.mode, k=self.k,
                          targets=next_token_targets(tokens, mask), watch=watch,
                          budget_bytes=self.budget_bytes)

    def update(self, batch) -> None:
        stack = torch.stack([batch.acts[h] for h in self.hooks])
        out = self._lens(stack, batch.tokens, batch.mask)
        self.accs["stats"].update(out.ranks, out.entropy, out.kl, out.agreement, batch.mask)
        self.accs["windows"].update(batch.index, out.ranks, out.watch_ranks, batch.mask)
        hit = (batch.index == 0).nonzero()
        if hit.numel() and not self.generate:
            j = int(hit[0, 0])
            n = int(batch.mask[j].sum())
            self.first = (batch.tokens[j, :n], out.window(j, n), stack[:, j, :n])

    def _first_window(self) -> tuple:
        """Window 0 alone (or its greedy continuation): one forward of one window."""
        model, w = self.model, self.windows
        device = next(model.parameters()).device
        seq = w.tokens[0][w.mask[0]].to(device)
        if self.generate:
            seq = greedy(model, seq, self.generate)
        mask = torch.ones((1, len(seq)), dtype=torch.bool, device=device)
        acts, _ = capture.forward(model, seq[None], mask, self.hooks)
        with torch.inference_mode():
            stack = torch.stack([acts[h] for h in self.hooks])
            out = self._lens(stack, seq[None], mask)
        return seq, out.window(0), stack[:, 0]

    def finish(self) -> LensResult:
        model, windows = self.model, self.windows
        if self.first is None:
            self.first = self._first_window()
        tokens, out, stack = self.first
        generated_from = int(windows.mask[0].sum()) if self.generate else None
        watch_ids = self.watch_ids
        shown = tokens.tolist() + out.topk_ids.flatten().tolist()
        shown += [] if watch_ids is None else watch_ids.tolist()
        meta = artifacts.run_metadata(model, windows, **self.settings)
        meta["normalization_type"] = str(getattr(model.cfg, "normalization_type", None))
        per_window = self.accs["windows"]
        return LensResult(
            tokens=tokens.cpu(),
            topk_ids=out.topk_ids[:, 0].cpu(),
            topk_probs=out.topk_probs[:, 0].cpu(),
            ranks=out.ranks[:, 0, :-1].cpu(),
            entropy=out.entropy[:, 0].cpu(),
            kl=out.kl[:, 0].cpu(),
            agreement=out.agreement[:, 0].cpu(),
            watch_ids=watch_ids,
            watch_ranks=None if out.watch_ranks is None else out.watch_ranks[:, 0].cpu(),
            dataset={k_: v.cpu() for k_, v in self.accs["stats"].compute().items()},
            window_tokens=windows.tokens.masked_fill(~windows.mask, -1),
            window_ranks=per_window.ranks.cpu(),
            window_doc_ids=windows.doc_ids.clone(),
            window_starts=windows.starts.clone(),
            window_watch_ranks=(per_window.watch_ranks.cpu() if watch_ids is not None else None),
            layer_labels=capture.layer_labels(model),
            token_strs=decode_ids(model.tokenizer, shown),
            mode=self.mode,
            k=self.k,
            generated_from=generated_from,
            meta=meta,
            states={f"state.stats.{k_}": v for k_, v in self.accs["stats"].state_dict().items()},
            _stack=stack,
            _model=model,
        )
