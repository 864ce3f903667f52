"""Data for ``tiny-gloss-lm``: its BPE tokenizer, packed token streams and context windows.

1. ``tokenizer_dir = train_tokenizer(docs, folder, vocab_size=8192)``: a byte-level BPE
   (HF ``tokenizers``, min frequency 2, ``<|endoftext|>`` as BOS/EOS/pad), saved as a folder that
   ``AutoTokenizer.from_pretrained`` and ``HookedTransformer`` accept.
2. ``stream = pack(docs, tokenizer)``: ``EOT doc EOT doc ...`` as one int64 array. Every document
   is preceded by ``<|endoftext|>``, so a window that starts at an EOT looks exactly like a prompt
   that HookedTransformer prepends its BOS to.
3. Training windows (:func:`sample_windows`) start at a random document boundary; evaluation
   windows (:func:`eval_windows`) tile the stream so that each target is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Int

from workbench.errors import WorkbenchError

EOT = "<|endoftext|>"


def train_tokenizer(docs: Sequence[str], folder: Path, vocab_size: int = 8192) -> Path:
    """Train a byte-level BPE on ``docs`` and save it (``tokenizer.json`` & co.) into ``folder``.

    Training is deterministic (same documents → same merges), ~2 s for the full train split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: Path):
    """The saved tokenizer as a ``PreTrainedTokenizerFast`` (offline, from the folder)."""
    from transformers import AutoTokenizer

    if not (Path(folder) / "tokenizer.json").is_file():
        raise WorkbenchError(f"no tokenizer.json in {folder}; train one with train_tokenizer()")
    return AutoTokenizer.from_pretrained(str(folder))


def pack(docs: Iterable[str], tokenizer) -> Int[np.ndarray, " tokens"]:
    """``EOT doc EOT doc ...``: the documents' token ids, each preceded by ``<|endoftext|>``."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    backend = tokenizer.backend_tokenizer
    encodings = backend.encode_batch(list(docs), add_special_tokens=False)
    parts: list[np.ndarray] = []
    for enc in encodings:
        parts.append(np.array([eot] + enc.ids, dtype=np.int64))
    if not parts:
        raise WorkbenchError("no documents to tokenize")
    return np.concatenate(parts)


def doc_starts(stream: Int[np.ndarray, " tokens"], eot_id: int) -> Int[np.ndarray, " docs"]:
    """Positions of the ``<|endoftext|>`` tokens (each opens a document)."""
    return np.flatnonzero(stream == eot_id).astype(np.int64)


def sample_windows(
    stream: Int[torch.Tensor, " tokens"],
    starts: Int[torch.Tensor, " starts"],
    batch_size: int,
    n_ctx: int,
    generator: torch.Generator,
) -> Int[torch.Tensor, "batch n_ctx_plus_1"]:
    """``batch_size`` windows of ``n_ctx + 1`` tokens, each starting at a random ``starts`` entry.

    Inputs are ``w[:, :-1]``, targets ``w[:, 1:]``. ``starts`` must leave room for a full
    window (``start + n_ctx + 1 <= len(stream)``).
    """
    pick = torch.randint(len(starts), (batch_size,), generator=generator)
    offsets = torch.arange(n_ctx + 1)
    return stream[starts[pick][:, None] + offsets[None, :]]


def usable_starts(stream_len: int, starts: np.ndarray, n_ctx: int) -> np.ndarray:
    """The window starts that leave room for ``n_ctx + 1`` tokens."""
    keep = starts[starts + n_ctx + 1 <= stream_len]
    if len(keep) == 0:
        raise WorkbenchError(f"the token stream ({stream_len}) is shorter than one window")
    return keep


def eval_windows(
    stream: Int[np.ndarray, " tokens"], eot_id: int, n_ctx: int
) -> tuple[Int[np.ndarray, "windows n_ctx_plus_1"], Bool[np.ndarray, "windows n_ctx"]]:
    """Tile ``stream`` with windows that start at document boundaries; score each target once.

    A window covers ``stream[s : s + n_ctx + 1]``. The next window starts at the last
    ``<|endoftext|>`` inside it (or at ``s + n_ctx`` when one document fills the whole window), and
    targets from there on are masked in this window: they are scored in the next one, with their
    document's beginning in context. The last window is padded with EOT and masked.

    >>> toks, mask = eval_windows(np.array([0, 5, 6, 0, 7, 0, 8, 9]), eot_id=0, n_ctx=4)
    >>> toks.tolist(), mask.tolist()
    ([[0, 5, 6, 0, 7], [0, 7, 0, 8, 9]], [[True, True, True, False], [True, True, True, True]])
    """
    n = len(stream)
    is_eot = stream == eot_id
    windows, masks = [], []
    s = 0
    while s < n - 1:
        end = min(s + n_ctx, n - 1)  # last target index of this window
        if end == n - 1:
            nxt = n - 1
        else:
            inside = np.flatnonzero(is_eot[s + 1 : end + 1])
            nxt = s + 1 + int(inside[-1]) if len(inside) else end
        window = np.full(n_ctx + 1, eot_id, dtype=np.int64)
        piece = stream[s : end + 1]
        window[: len(piece)] = piece
        mask = np.zeros(n_ctx, dtype=bool)
        mask[: nxt - s] = True  # targets stream[s+1 .. nxt]
        windows.append(window)
        masks.append(mask)
        s = nxt
    return np.stack(windows), np.stack(masks)


@torch.inference_mode()
def model_cross_entropy(
    model,
    windows: Int[torch.Tensor, "windows n_ctx_plus_1"],
    mask: Bool[torch.Tensor, "windows n_ctx"],
    batch_size: int = 32,
    autocast: bool = False,
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` over the masked targets."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)
        m = mask[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(w[:, :-1])
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="none"
        )
        total += float(nll[m.flatten()].double().sum())
        count += int(m.sum())
    if count == 0:
        raise WorkbenchError("no targets to evaluate")
    return total / count


def pairs_of_windows(
    windows: Int[np.ndarray, "windows n_ctx_plus_1"], mask: Bool[np.ndarray, "windows n_ctx"]
) -> tuple[Int[np.ndarray, " n"], Int[np.ndarray, " n"]]:
    """The ``(previous, next)`` token pairs of the scored targets (for the bigram baseline)."""
    prev, nxt = windows[:, :-1], windows[:, 1:]
    return prev[mask], nxt[mask]
