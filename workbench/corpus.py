"""The WordNet gloss corpus: one short natural-language document per WordNet 3.0 synset.

1. ``gloss_documents("train")`` yields strings like
   ``cat, true cat: feline mammal usually having thick soft fur and no ability to roar: domestic
   cats; wildcats`` followed by ``; "example"`` for each usage example of the synset.
2. The split is by synset, never by line: a synset is in ``validation`` when
   ``sha256("{pos}:{offset:08d}") mod 50 == 0`` (about 1 in 50, ~2.4k synsets), else in ``train``.
   ``pos`` is NLTK's (``n v a s r``; adjective satellites are ``s``), ``offset`` the byte offset in
   the ``data.*`` file.
3. Documents come in WordNet's own order (adj, adv, noun, verb files; offset order inside each),
   so every call gives the same sequence.
4. The rendered corpus is cached as text in the workbench cache (``corpus/``): the first call reads
   WordNet through NLTK (~12 s), later calls read one 11 MB file (~0.1 s).

Used as the training data of ``tiny-gloss-lm`` and as a built-in offline dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.paths import cache_dir

SPLITS: tuple[str, ...] = ("train", "validation", "all")
VALIDATION_ONE_IN = 50
#: Bump when the rendering or the split rule changes (it keys the cache).
RECIPE_VERSION = "gloss-v1"


def is_validation(pos: str, offset: int) -> bool:
    """Whether the synset ``(pos, offset)`` belongs to the validation split.

    >>> is_validation("n", 2121620)  # cat.n.01
    False
    """
    digest = hashlib.sha256(f"{pos}:{offset:08d}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_ONE_IN == 0


def render_synset(lemma_names: list[str], definition: str, examples: list[str]) -> str:
    """One synset as a sentence: ``lemma, lemma: gloss; "example"; "example"``.

    >>> render_synset(["cat", "true_cat"], "feline mammal", ['a "cat" sat'])
    'cat, true cat: feline mammal; "a "cat" sat"'
    """
    head = ", ".join(name.replace("_", " ") for name in lemma_names)
    parts = [f"{head}: {definition.strip()}"]
    parts += [f'"{example.strip()}"' for example in examples]
    # Documents are stored one per line, so no document may hold a newline.
    return " ".join("; ".join(parts).split())


def _iter_rendered() -> Iterator[tuple[bool, str]]:
    """``(is_validation, document)`` for every synset, read through NLTK's reader."""
    from workbench.wordnet import open_wordnet

    for synset in open_wordnet().all_synsets():
        doc = render_synset(synset.lemma_names(), synset.definition(), synset.examples())
        yield is_validation(synset.pos(), synset.offset()), doc


def _cache_key() -> str:
    from workbench.wordnet import resolve_wordnet_dir

    _, folder = resolve_wordnet_dir()
    files = sorted(p for p in folder.iterdir() if p.name.startswith("data."))
    # Sizes, not paths or mtimes: the same database read from Debian's folder or from the
    # workbench's mirror of it must hit the same cache entry.
    stamp = [RECIPE_VERSION] + [f"{p.name}:{p.stat().st_size}" for p in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def _cached_corpus() -> Path:
    """The cached corpus file: one JSON line ``[is_validation, document]`` per synset."""
    path = cache_dir("corpus") / f"{RECIPE_VERSION}-{_cache_key()}.jsonl"
    if path.is_file():
        return path
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for val, doc in _iter_rendered():
            f.write(json.dumps([val, doc], ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def gloss_documents(split: str = "train") -> Iterator[str]:
    """Iterate the documents of a split (``"train"``, ``"validation"`` or ``"all"``), one string
    per synset, in WordNet order.

    >>> docs = list(gloss_documents("validation"))  # doctest: +SKIP
    >>> len(docs), docs[0][:20]  # doctest: +SKIP
    (2386, '...')
    """
    if split not in SPLITS:
        raise WorkbenchError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    with _cached_corpus().open(encoding="utf-8") as f:
        for line in f:
            val, doc = json.loads(line)
            if split == "all" or val == (split == "validation"):
                yield doc


def corpus_sha256(split: str = "all") -> str:
    """sha256 of the split's documents joined by newlines (identifies the data in metadata)."""
    h = hashlib.sha256()
    for doc in gloss_documents(split):
        h.update(doc.encode("utf-8") + b"\n")
    return h.hexdigest()
