"""Text sources → token windows.

1. Pick a source: a string (or list of documents), a text file, a JSONL file (``field``), an HF
   dataset name, or the built-in WordNet gloss corpus (``dataset="wordnet-glosses"``);
   files are read by ``workbench.inputs``.
2. Each document is tokenized whole (no special tokens), then cut into windows of ``window`` text
   tokens every ``stride`` tokens; windows never cross documents and nothing is truncated: the last
   window of a document is shorter and padded (``mask`` False on padding).
3. With ``bos=True`` each window starts with the tokenizer's BOS (or [CLS] … [SEP] for BERT-style
   tokenizers), so a window holds ``window + 1`` (or ``+ 2``) positions.

>>> w = from_text("a b c d e", tok, window=2, stride=2, bos=False)  # doctest: +SKIP
>>> w.tokens.shape  # [n_windows, window]                            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.errors import OfflineError, WorkbenchError
from workbench.inputs import file_sha256, read_file_documents, text_field

BUILTIN_DATASETS = ("wordnet-glosses", "wordnet-glosses-validation")


@dataclass
class Windows:
    """Token windows of a text source, right-padded, with provenance."""

    tokens: Int[Tensor, "n pos"]
    mask: Bool[Tensor, "n pos"]
    doc_ids: Int[Tensor, " n"]
    starts: Int[Tensor, " n"]  # offset of each window's first text token in its document
    window: int
    stride: int
    bos: bool
    pad_id: int
    source: str
    sha256: str
    n_documents: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) positions, special tokens included."""
        return int(self.mask.sum())

    def select(self, index: Int[Tensor, " k"] | slice) -> Windows:
        """A sub-set of the windows (same provenance)."""
        return Windows(
            self.tokens[index], self.mask[index], self.doc_ids[index], self.starts[index],
            self.window, self.stride, self.bos, self.pad_id, self.source, self.sha256,
            self.n_documents, dict(self.extra),
        )

    def shard(self, rank: int, world: int) -> Windows:
        """Rank ``rank`` of ``world`` contiguous, disjoint, covering shards."""
        if not 0 <= rank < world:
            raise WorkbenchError(f"shard {rank}/{world} is out of range: use 0 <= i < n")
        bounds = torch.linspace(0, len(self), world + 1).round().long()
        return self.select(slice(int(bounds[rank]), int(bounds[rank + 1])))

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, Tensor, Tensor]]:
        """``(first_window_index, tokens, mask)`` per batch, trimmed to the longest window."""
        if batch_size < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(start, len(self), batch_size):
            tok, m = self.tokens[i : i + batch_size], self.mask[i : i + batch_size]
            width = int(m.sum(1).max()) if m.numel() else 0
            yield i, tok[:, :width], m[:, :width]

    def metadata(self) -> dict:
        return {
            "source": self.source, "sha256": self.sha256, "window": self.window,
            "stride": self.stride, "bos": self.bos, "n_windows": len(self),
            "n_documents": self.n_documents, "n_tokens": self.n_tokens, **self.extra,
        }


def _special_ids(tokenizer, bos: bool) -> tuple[list[int], list[int]]:
    if not bos:
        return [], []
    if getattr(tokenizer, "cls_token_id", None) is not None and tokenizer.bos_token_id is None:
        return [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    if tokenizer.bos_token_id is None:
        raise WorkbenchError("this tokenizer has no BOS token: pass bos=False (CLI: --no-bos)")
    return [tokenizer.bos_token_id], []


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _encode_chunked(documents: Iterable[str], tokenizer, chunk: int = 2048):
    """(document, ids) pairs, tokenizing ``chunk`` documents per call (fast tokenizers batch)."""
    buf: list[str] = []
    for doc in documents:
        buf.append(doc)
        if len(buf) == chunk:
            yield from zip(buf, tokenizer(buf, add_special_tokens=False)["input_ids"], strict=True)
            buf = []
    if buf:
        yield from zip(buf, tokenizer(buf, add_special_tokens=False)["input_ids"], strict=True)


def tokenize_documents(
    documents: Iterable[str],
    tokenizer,
    window: int,
    stride: int,
    bos: bool = True,
    source: str = "text",
    sha256: str | None = None,
) -> Windows:
    """Cut each document into windows; see the module docstring for the rules."""
    if window < 1 or stride < 1:
        raise WorkbenchError(f"window and stride must be >= 1 (got window={window}, stride={stride})")
    if stride > window:
        raise WorkbenchError(
            f"stride {stride} > window {window} would skip tokens; use stride <= window"
        )
    digest = hashlib.sha256()
    id_lists = []
    for doc, ids in _encode_chunked(documents, tokenizer):
        digest.update(doc.encode("utf-8") + b"\x00")
        id_lists.append(ids)
    return cut_windows(id_lists, tokenizer, window, stride, bos, source,
                       sha256 or digest.hexdigest())


def cut_windows(id_lists: Sequence[Sequence[int]], tokenizer, window: int, stride: int,
                bos: bool, source: str, sha256: str) -> Windows:
    """Windows of already tokenized documents (the rules of the module docstring)."""
    head, tail = _special_ids(tokenizer, bos)
    width = len(head) + window + len(tail)
    rows: list[list[int]] = []
    doc_ids: list[int] = []
    starts: list[int] = []
    for d, ids in enumerate(id_lists):
        ids = list(ids)
        if not ids:
            continue
        s = 0
        while True:
            rows.append(head + ids[s : s + window] + tail)
            doc_ids.append(d)
            starts.append(s)
            if s + window >= len(ids):
                break
            s += stride
    if not rows:
        raise WorkbenchError(f"the input ({source}) is empty: no tokens to analyse; give some text")
    pad = _pad_id(tokenizer)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return Windows(
        tokens, mask, torch.tensor(doc_ids), torch.tensor(starts), window, stride, bos, pad,
        source, sha256, len(id_lists),
    )


DEFAULT_MAX_WINDOW = 1024


def _defaults(model, window: int | None, stride: int | None, bos: bool | None):
    bos = True if bos is None else bos
    n_special = (2 if getattr(model.tokenizer, "cls_token_id", None) is not None
                 and model.tokenizer.bos_token_id is None else 1) if bos else 0
    limit = model.cfg.n_ctx - n_special
    # Default: the context, capped at DEFAULT_MAX_WINDOW so a long-context model (gemma-3-270m:
    # 8192) does not forward 8k-token windows (attention scores ~1 GiB per layer and batch row).
    window = min(limit, DEFAULT_MAX_WINDOW - n_special) if window is None else window
    if window > limit:
        raise WorkbenchError(
            f"window {window} (+{n_special} special) exceeds the model's context of "
            f"{model.cfg.n_ctx} tokens; use --window {limit} or less"
        )
    return window, (window if stride is None else stride), bos


def dataset_documents(name: str, split: str = "train", field: str = "text",
                      limit: int | None = None) -> tuple[list[str], str]:
    """Documents of a built-in dataset or an HF ``datasets`` name, and a source label.

    An HF dataset with configurations is named ``name:config`` (``wikitext:wikitext-103-raw-v1``).
    """
    if name in BUILTIN_DATASETS:
        from workbench.corpus import gloss_documents

        which = "validation" if name.endswith("validation") else "all"
        docs = []
        for doc in gloss_documents(which):
            docs.append(doc)
            if limit is not None and len(docs) >= limit:
                break
        return docs, f"builtin:{name}"
    try:
        import datasets
    except ImportError as exc:
        raise WorkbenchError("HF datasets need `pip install datasets`") from exc
    from workbench.models.hub import hub_reachable

    try:
        path, _, config = name.partition(":")
        ds = datasets.load_dataset(path, config or None, split=split, streaming=limit is not None)
    except Exception as exc:
        if not hub_reachable():
            raise OfflineError(
                f"dataset {name!r} is not cached and no hub is reachable; use --file or "
                f"--dataset wordnet-glosses (offline)"
            ) from None
        raise WorkbenchError(f"could not load dataset {name!r}: {exc}") from exc
    docs = []
    for n, row in enumerate(ds):
        docs.append(text_field(row, field, f"dataset {name!r} row {n}"))
        if limit is not None and len(docs) >= limit:
            break
    return docs, f"hf:{name}:{split}"


def load_windows(
    model,
    text: str | Sequence[str] | None = None,
    file: str | Path | None = None,
    dataset: str | None = None,
    field: str = "text",
    window: int | None = None,
    stride: int | None = None,
    bos: bool | None = None,
    limit: int | None = None,
    file_documents: Sequence[str] | None = None,
) -> Windows:
    """Windows for ``model`` from exactly one of ``text``, ``file`` (.txt / .jsonl), ``dataset``.

    ``window`` defaults to the model's context (minus special tokens), ``stride`` to ``window``.
    ``file_documents``: ``file``'s documents when already read (``inputs.read_file_documents``,
    as the CLI does before loading the model), so the file is not read twice.
    """
    given = [x is not None for x in (text, file, dataset)]
    if sum(given) != 1:
        raise WorkbenchError("give exactly one input: --text, --file or --dataset")
    window, stride, bos = _defaults(model, window, stride, bos)
    if text is not None:
        docs = [text] if isinstance(text, str) else list(text)
        source = "text"
    elif file is not None:
        p = Path(file)
        docs = list(file_documents) if file_documents is not None else read_file_documents(p, field)
        source = f"file:{p.name}"
    else:
        docs, source = dataset_documents(dataset, field=field, limit=limit)
    if not any(d.strip() for d in docs):
        raise WorkbenchError(f"the input ({source}) is empty: give some text")
    windows = tokenize_documents(docs, model.tokenizer, window, stride, bos, source)
    if source.startswith("hf:"):
        windows.extra["field"] = field  # so the data can be read again (rebuild_windows)
    if file is not None:
        windows.extra["file_sha256"] = file_sha256(file)
    return windows


def _source_meta(data: dict) -> dict:
    """The ``data`` metadata that names a source (a merge's first part, for merged artifacts)."""
    if "source" in data or not data.get("parts"):
        return data
    return _source_meta(data["parts"][0] or {})


def rebuild_windows(model, data: dict, text: str | Sequence[str] | None = None,
                    file: str | Path | None = None,
                    dataset: str | None = None, field: str | None = None,
                    limit: int | None = None) -> Windows:
    """The windows an artifact was built on, from its ``data`` metadata (``Windows.metadata()``).

    Built-in and HF datasets are read again by name (the first ``n_documents`` documents);
    a ``--text`` or ``--file`` source is not stored, so pass the same ``text`` / ``file`` /
    ``dataset`` (and ``field`` / ``limit``) as the build. Window, stride and BOS come from the
    metadata; data whose sha256 differs from the build's is refused.
    """
    meta = _source_meta(data)
    source = meta.get("source")
    if source is None or "window" not in meta:
        raise WorkbenchError("the artifact's metadata names no data source and windowing: "
                             "it was not written by this workbench's build")
    again = ("pass the same --text/--file/--dataset (and --field/--limit) flags as the build "
             f"(window {meta['window']}, stride {meta['stride']} and BOS come from the artifact)")
    window, stride, bos = meta["window"], meta["stride"], meta["bos"]
    if any(x is not None for x in (text, file, dataset)):
        windows = load_windows(model, text=text, file=file, dataset=dataset,
                               field=field or "text", window=window, stride=stride, bos=bos,
                               limit=limit)
    elif source.startswith(("builtin:", "hf:")):
        name, split = source.split(":", 1)[1], "train"
        if source.startswith("hf:"):
            name, split = name.rsplit(":", 1)
        docs, label = dataset_documents(name, split=split, field=field or meta.get("field", "text"),
                                        limit=limit or meta.get("n_documents"))
        windows = tokenize_documents(docs, model.tokenizer, window, stride, bos, label)
    else:
        raise WorkbenchError(f"the artifact was built on {source!r}, which cannot be read again "
                             f"from its metadata; {again}")
    if data.get("sha256") is not None and windows.sha256 != data["sha256"]:
        raise WorkbenchError(
            f"the data given ({windows.source}, {windows.n_documents} documents, sha256 "
            f"{windows.sha256[:12]}) is not the data the artifact was built on ({source}, "
            f"{meta.get('n_documents')} documents, sha256 {data['sha256'][:12]}); {again}")
    return windows


def from_text(text: str | Sequence[str], tokenizer, window: int = 128, stride: int | None = None,
              bos: bool = True) -> Windows:
    """Windows of a string (or a list of documents) for a bare tokenizer."""
    docs = [text] if isinstance(text, str) else list(text)
    return tokenize_documents(docs, tokenizer, window, stride or window, bos, "text")


def from_file(path: str | Path, tokenizer, window: int = 128, stride: int | None = None,
              bos: bool = True, field: str = "text") -> Windows:
    """Windows of a text file (one document) or a JSONL file (one document per line)."""
    p = Path(path)
    docs = read_file_documents(p, field)
    windows = tokenize_documents(docs, tokenizer, window, stride or window, bos, f"file:{p.name}")
    windows.extra["file_sha256"] = file_sha256(p)
    return windows
