"""Logit lens analysis: what each layer would predict, how it ranks the real next token, and how it
ranks watched tokens, at every position (ecco's ``predictions`` / ``rankings`` /
``rankings_watch``, done for every position and any amount of text).

>>> r = analyze(model, load_windows(model, text="The keys to the cabinet"), watch=[" is", " are"])  # doctest: +SKIP
>>> r.predictions(position=-1, k=5)     # per-layer top-5 at the last position        # doctest: +SKIP
>>> r.rankings().ranks                   # [L+1, P-1] ranks of the actual next tokens   # doctest: +SKIP
>>> r.rankings_watch(position=-1).ranks  # [L+1, W]                                     # doctest: +SKIP
>>> r.ranks_of_window(2).ranks           # [L+1, n-1] ranks of the next tokens in window 2  # doctest: +SKIP

Lenses are DESIGN.md's: ``blocks.0.hook_resid_pre`` ("emb"), then the residual after each block
("h.0" … "h.{L-1}"; the last is the final residual, i.e. the model's logits in ``final_ln`` mode).
The per-text tensors (top-k, entropy, KL, ``ranks``) cover the first window; ``window_ranks``
holds the rank of the actual next token at every position of every window (text longer than the
context is never dropped), and ``dataset`` holds aggregates over every window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench import artifacts, capture
from workbench.data import Windows
from workbench.errors import WorkbenchError
from workbench.kernels.lens import (
    Unembed,
    project,
    target_ranks,
)
from workbench.results import ResultMixin

ARTIFACT = "lens.safetensors"


@dataclass
class Rankings:
    """Ranks per layer (rows, in depth order) and column (positions or watched tokens)."""

    ranks: Int[Tensor, "lens cols"]
    layers: list[str]
    columns: list[str]
    positions: list[int]


@dataclass(repr=False)
class LensResult(ResultMixin):
    """Per-text lens read-outs of the first window, plus dataset aggregates over all windows."""

    tokens: Int[Tensor, " pos"]
    topk_ids: Int[Tensor, "lens pos k"]
    topk_probs: Float[Tensor, "lens pos k"]
    ranks: Int[Tensor, "lens pos-1"]  # ranks[l, p] of tokens[p + 1]
    entropy: Float[Tensor, "lens pos"]
    kl: Float[Tensor, "lens pos"]
    agreement: Bool[Tensor, "lens pos"]
    watch_ids: Int[Tensor, " w"] | None
    watch_ranks: Int[Tensor, "lens pos w"] | None
    dataset: dict[str, Tensor]  # LensStats.compute() over every window (teacher-forced)
    # Every window, teacher-forced (in generated mode too: the input windows, not the generation).
    window_tokens: Int[Tensor, "n_windows win"]  # -1 on padding
    window_ranks: Int[Tensor, "lens n_windows win-1"]  # rank of window_tokens[:, p+1]; -1: none
    window_doc_ids: Int[Tensor, " n_windows"]
    window_starts: Int[Tensor, " n_windows"]  # offset of each window's first text token in its doc
    window_watch_ranks: Int[Tensor, "lens n_windows win w"] | None  # -1 on padding
    layer_labels: list[str]
    token_strs: dict[int, str]  # decoded text of every id the result shows
    mode: str
    k: int
    generated_from: int | None = None  # index in ``tokens`` of the first generated token
    meta: dict = field(default_factory=dict)
    states: dict[str, Tensor] = field(default_factory=dict)  # state.stats.*: LensStats, to merge
    _stack: Tensor | None = field(default=None, repr=False, compare=False)
    _model: object = field(default=None, repr=False, compare=False)

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_windows(self) -> int:
        return int(self.window_tokens.shape[0])

    def ranks_of_window(self, i: int) -> Rankings:
        """Rank of the actual next token per layer at every real position of window ``i``
        (teacher-forced; ``window_ranks[:, i]`` without the padding). Window 0's equal ``ranks``
        unless the text was generated (``ranks`` then also covers the generation)."""
        n = self.n_windows
        if not -n <= i < n:
            raise WorkbenchError(f"window {i} is outside the input's {n} windows; use 0..{n - 1}")
        toks = self.window_tokens[i % n]
        toks = toks[toks >= 0].tolist()
        self._decode(toks)
        cols = list(range(len(toks) - 1))
        columns = [f"{self.label(toks[p])} → {self.label(toks[p + 1])}" for p in cols]
        return Rankings(self.window_ranks[:, i % n, : len(cols)].long(), list(self.layer_labels),
                        columns, cols)

    def _decode(self, ids: Sequence[int]) -> None:
        missing = [i for i in set(ids) if i not in self.token_strs]
        if missing and self._model is not None:
            self.token_strs.update(decode_ids(self._model.tokenizer, missing))

    def _position(self, position: int) -> int:
        p = position + self.n_positions if position < 0 else position
        if not 0 <= p < self.n_positions:
            raise WorkbenchError(
                f"position {position} is outside the text's {self.n_positions} positions; "
                f"use 0..{self.n_positions - 1} (or negative from the end)"
            )
        return p

    def _layer(self, layer: int | str) -> int:
        if isinstance(layer, str):
            if layer not in self.layer_labels:
                raise WorkbenchError(f"unknown layer {layer!r}; use one of {self.layer_labels}")
            return self.layer_labels.index(layer)
        n = len(self.layer_labels)
        if not -n <= layer < n:
            raise WorkbenchError(f"layer {layer} out of range: the lens has {n} layers (0..{n - 1})")
        return layer % n

    def label(self, token_id: int | Tensor) -> str:
        return self.token_strs.get(int(token_id), f"#{int(token_id)}")

    def predictions(self, position: int = -1, k: int | None = None,
                    layer: int | str | None = None) -> list[dict]:
        """Top-k tokens of each layer (or one ``layer``) at ``position``: rows of
        ``{layer, rank, id, token, prob}``, layers in depth order (ecco's ``predictions``)."""
        p = self._position(position)
        k = self.k if k is None else k
        if k > self.k:
            ids, probs = self._recompute_topk(p, k)
        else:
            ids, probs = self.topk_ids[:, p, :k], self.topk_probs[:, p, :k]
        layers = range(len(self.layer_labels)) if layer is None else [self._layer(layer)]
        return [
            {"layer": self.layer_labels[i], "rank": j + 1, "id": int(ids[i, j]),
             "token": self.label(ids[i, j]), "prob": float(probs[i, j])}
            for i in layers for j in range(k)
        ]

    def rankings(self, generated_only: bool | None = None) -> Rankings:
        """Rank of the actual next token per layer and position (of the generated tokens only,
        as ecco, when the text was generated and ``generated_only`` is not False)."""
        start = 0
        if self.generated_from is not None and generated_only is not False:
            start = self.generated_from - 1
        cols = list(range(start, self.n_positions - 1))
        columns = [f"{self.label(self.tokens[p])} → {self.label(self.tokens[p + 1])}" for p in cols]
        return Rankings(self.ranks[:, start:], list(self.layer_labels), columns, cols)

    def rankings_watch(self, watch: Sequence[int | str] | None = None,
                       position: int | None = None) -> Rankings:
        """Ranks of watched tokens per layer at ``position`` (default: the last position)."""
        p = self._position(-1 if position is None else position)
        if watch is None:
            if self.watch_ids is None:
                raise WorkbenchError("no watched tokens: pass watch=[...] (ids or strings)")
            ids, ranks = self.watch_ids, self.watch_ranks[:, p]
        else:
            if self._model is None or self._stack is None:
                raise WorkbenchError("this result has no residuals to re-rank (loaded from disk?); "
                                     "run the analysis again with watch=[...]")
            ids = resolve_watch(self._model.tokenizer, watch, int(self._model.cfg.d_vocab))
            self.token_strs.update(decode_ids(self._model.tokenizer, ids.tolist()))
            with torch.inference_mode():
                logits = project(self._stack[:, p], Unembed.from_model(self._model), self.mode)
                ranks = target_ranks(logits, ids.to(logits.device).expand(logits.shape[0], -1))
        return Rankings(ranks.cpu(), list(self.layer_labels), [self.label(i) for i in ids],
                        [p] * len(ids))

    def _recompute_topk(self, p: int, k: int) -> tuple[Tensor, Tensor]:
        if self._model is None or self._stack is None:
            raise WorkbenchError(f"k={k} is more than the {self.k} stored; analyse with k>={k}")
        with torch.inference_mode():
            logits = project(self._stack[:, p], Unembed.from_model(self._model), self.mode)
            vals, ids = logits.topk(k, dim=-1)
            probs = (vals - logits.logsumexp(-1, keepdim=True)).exp()
        self.token_strs.update(decode_ids(self._model.tokenizer, ids.flatten().tolist()))
        return ids.cpu(), probs.cpu()

    def tensors(self) -> dict[str, Tensor]:
        """The artifact's tensors (DESIGN.md keys, then per-position extras, then ``dataset.*``)."""
        out = {"tokens": self.tokens, "topk_ids": self.topk_ids, "topk_probs": self.topk_probs,
               "ranks": self.ranks, "entropy": self.entropy, "kl": self.kl,
               "agreement": self.agreement}
        if self.watch_ids is not None:
            out |= {"watch_ids": self.watch_ids, "watch_ranks": self.watch_ranks}
        if self.generated_from is not None:
            out["generated_from"] = torch.tensor(self.generated_from, dtype=torch.long)
            out["generated_ranks"] = self.ranks[:, self.generated_from - 1 :]
        out |= {"window_tokens": self.window_tokens, "window_ranks": self.window_ranks,
                "window_doc_ids": self.window_doc_ids, "window_starts": self.window_starts}
        if self.window_watch_ranks is not None:
            out["window_watch_ranks"] = self.window_watch_ranks
        out |= {f"dataset.{k}": v for k, v in self.dataset.items()}
        out |= self.states
        return {k: v.detach().cpu().clone() for k, v in out.items()}

    def summary(self) -> dict:
        """Key numbers: mode, sizes, and per layer the top-1 agreement with the final layer."""
        d = self.dataset
        return {"mode": self.mode, "positions": self.n_positions, "windows": self.n_windows,
                "layers": list(self.layer_labels), "k": self.k,
                "dataset_positions": int(d["n_positions"]),
                "top1_agreement_by_layer": [round(float(x), 4) for x in d["top1_agreement"]],
                "top1_accuracy_by_layer": [round(float(x), 4) for x in d["top1_accuracy"]],
                "watch": None if self.watch_ids is None else
                [self.label(i) for i in self.watch_ids.tolist()]}

    def to_frame(self):
        """One row per lens: agreement, accuracy, mean ln rank, KL and entropy over the data."""
        import pandas as pd

        from workbench.views.lens import summary_rows

        return pd.DataFrame(summary_rows(self)).set_index("layer")

    def figures(self, position: int | None = None) -> dict:
        from workbench.views import lens as view

        return view.figures(self, position)

    def save(self, out_dir: str | Path) -> Path:
        meta = dict(self.meta)
        meta["layer_labels"] = self.layer_labels
        meta["tokens_text"] = [self.label(t) for t in self.tokens]
        meta["lens"] = {"mode": self.mode, "k": self.k,
                        "token_strs": {str(i): t for i, t in sorted(self.token_strs.items())}}
        return artifacts.save(Path(out_dir) / ARTIFACT, self.tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        """A result from ``lens.safetensors`` (a file, or its folder); without residuals, so
        ``predictions(k=...)`` beyond the stored k and new watch lists need a rerun."""
        file, t, meta = artifacts.load_named(path, ARTIFACT, "lens artifact", "`workbench lens`")
        f = artifacts.Fields(meta, file)
        lens = f.section("lens")
        strs = lens.get("token_strs", dict)
        labels = f.get("layer_labels", list)
        need = ("tokens", "topk_ids", "topk_probs", "ranks", "entropy", "kl", "agreement",
                "window_tokens", "window_ranks", "window_doc_ids", "window_starts")
        missing = [k for k in need if k not in t]
        f.require(not missing, f"holds no {missing} tensors (not a lens artifact of this version)")
        n_lens = len(labels)
        f.require(all(t[k].shape[0] == n_lens for k in ("topk_ids", "ranks", "window_ranks")),
                  f"its tensors do not have the {n_lens} lenses its 'layer_labels' name")
        gen = t.get("generated_from")
        return cls(
            **{k: t[k] for k in need}, watch_ids=t.get("watch_ids"),
            watch_ranks=t.get("watch_ranks"), window_watch_ranks=t.get("window_watch_ranks"),
            dataset={k[8:]: v for k, v in t.items() if k.startswith("dataset.")},
            layer_labels=labels, token_strs={int(i): s_ for i, s_ in strs.items()},
            mode=lens.get("mode", str), k=lens.int("k", 1),
            generated_from=None if gen is None else int(gen), meta=meta,
            states={k: v for k, v in t.items() if k.startswith("state.")})


def decode_ids(tokenizer, ids: Sequence[int]) -> dict[int, str]:
    return {int(i): tokenizer.decode([int(i)]) for i in set(ids)}


def resolve_watch(tokenizer, watch: Sequence[int | str], d_vocab: int) -> Tensor:
    """Token ids of ``watch`` (ids, or strings that must each be exactly one token)."""
    ids = []
    for item in watch:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise WorkbenchError(f"watch item {item!r} is neither a token id nor a string")
        if isinstance(item, int):
            if not 0 <= item < d_vocab:
                raise WorkbenchError(f"watch id {item} is outside the vocabulary (0..{d_vocab - 1})")
            ids.append(item)
            continue
        pieces = tokenizer(item, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            shown = [tokenizer.decode([i]) for i in pieces]
            raise WorkbenchError(
                f"watch {item!r} is {len(pieces)} tokens, not one: pieces {shown} (ids {pieces}); "
                "watch single tokens: give one of these pieces (or its id) instead"
            )
        ids.append(pieces[0])
    if not ids:
        raise WorkbenchError("watch is empty: give at least one token id or string")
    return torch.tensor(ids, dtype=torch.long)


def check_generate(model, n_prompt: int, n: int) -> None:
    if n_prompt + n > model.cfg.n_ctx:
        raise WorkbenchError(
            f"generating {n} tokens after {n_prompt} would exceed the model's context of "
            f"{model.cfg.n_ctx}; use --generate {max(0, model.cfg.n_ctx - n_prompt)} or less"
        )


def greedy(model, prompt: Int[Tensor, " p"], n: int) -> Int[Tensor, " total"]:
    """``prompt`` followed by ``n`` greedily generated tokens (argmax, no sampling)."""
    check_generate(model, len(prompt), n)
    seq = prompt
    with torch.inference_mode():
        for _ in range(n):
            nxt = model(seq[None])[0, -1].argmax()
            seq = torch.cat([seq, nxt[None]])
    return seq


def analyze(
    model,
    windows: Windows,
    *,
    batch_size: int = 8,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    ctx=None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 50,
    max_batches: int | None = None,
    **options,
) -> LensResult:
    """Run the logit lens over ``windows`` (teacher-forced at every position).

    Options (``workbench.analyses.lens_reducer.LensReducer``): ``mode`` (``final_ln`` or
    ``raw``), ``k`` (top-k kept per
    position), ``watch`` (token ids or single-token strings ranked everywhere),
    ``generate=N`` (first extend the first window greedily by N tokens; its per-text tensors then
    cover prompt + generation and ``rankings()`` shows the generated tokens' ranks, as ecco),
    ``budget_bytes`` (bounds the transient ``[lenses, positions, vocab]`` logits chunk).
    ``shard`` / ``ctx`` / ``checkpoint_dir`` / ``resume``: as for every corpus analysis
    (``capture.run``); a shard's result holds its own windows' ranks and statistics.
    """
    from workbench.analyses.lens_reducer import LensReducer
    from workbench.sharding import shard_metadata

    reducer = LensReducer(model, windows, batch_size=batch_size, **options)
    capture.run_reducer(model, windows, reducer, batch_size=batch_size, progress=progress,
                        shard=shard, ctx=ctx, checkpoint_dir=checkpoint_dir, resume=resume,
                        checkpoint_every=checkpoint_every, max_batches=max_batches)
    result = reducer.finish()
    if shard is not None:
        result.meta["shard"] = shard_metadata(windows, *shard)
    return result
