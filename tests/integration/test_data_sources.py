"""HF ``datasets`` sources offline: unknown names fail fast; local datasets window correctly;
an artifact's data is read again from its metadata (``rebuild_windows``)."""

import json
import time

import pytest
import torch

from workbench.data import load_windows, rebuild_windows
from workbench.errors import OfflineError, WorkbenchError

DOCS = [
    "the cat sat on the mat and the dog sat on the log",
    "",
    "tiny",
    "a third document: long enough for a few windows of six tokens, stride four",
]


@pytest.fixture
def local_dataset(tmp_path, monkeypatch):
    """A dataset folder ``datasets.load_dataset`` reads offline (split train, fields text/body)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    rows = [json.dumps({"text": d, "body": d.upper(), "n": i}) for i, d in enumerate(DOCS)]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def naive_windows(tokenizer, docs, window, stride):
    """(doc, start, ids) of every window, by the rule: windows start every ``stride`` tokens
    until one reaches the end of its document; empty documents have none."""
    out = []
    for d, doc in enumerate(docs):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), stride):
            out.append((d, s, ids[s : s + window]))
            if s + window >= len(ids):
                break
    return out


def assert_windows_are(w, reference):
    assert len(w) == len(reference)
    for i, (d, s, ids) in enumerate(reference):
        n = int(w.mask[i].sum())
        assert (int(w.doc_ids[i]), int(w.starts[i]), w.tokens[i, :n].tolist()) == (d, s, ids)
        assert not w.mask[i, n:].any()


@pytest.mark.parametrize("name", ["some-user/unknown-ds", "wikitext:no-such-config"])
def test_unknown_dataset_offline_fails_fast_naming_offline_sources(random_tiny, name):
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        load_windows(random_tiny, dataset=name, window=15)
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert repr(name) in msg and "--file" in msg and "--dataset wordnet-glosses" in msg


def test_unknown_dataset_probes_the_hub_when_offline_flags_are_unset(random_tiny, monkeypatch,
                                                                     network_attempts):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="no hub is reachable"):
        load_windows(random_tiny, dataset="some-user/unknown-ds", window=15)
    assert time.perf_counter() - t0 < 5.0
    assert "huggingface.co" in network_attempts


def test_local_dataset_windows_match_direct_tokenization(random_tiny, local_dataset):
    tok = random_tiny.tokenizer
    w = load_windows(random_tiny, dataset=str(local_dataset), window=6, stride=4, bos=False)
    assert_windows_are(w, naive_windows(tok, DOCS, 6, 4))
    assert w.source == f"hf:{local_dataset}:train" and w.n_documents == len(DOCS)
    # provenance: the same strings given as text hash the same
    assert w.sha256 == load_windows(random_tiny, text=DOCS, window=6, stride=4, bos=False).sha256
    body = load_windows(random_tiny, dataset=str(local_dataset), field="body", window=6,
                        stride=6, bos=False)
    assert_windows_are(body, naive_windows(tok, [d.upper() for d in DOCS], 6, 6))
    # --limit streams the first documents only
    first = load_windows(random_tiny, dataset=str(local_dataset), limit=1, window=6, bos=False)
    assert_windows_are(first, naive_windows(tok, DOCS[:1], 6, 6))
    with_bos = load_windows(random_tiny, dataset=str(local_dataset), window=6, stride=4)
    assert (with_bos.tokens[:, 0] == tok.bos_token_id).all()
    assert torch.equal(with_bos.tokens[:, 1:], w.tokens)
    with pytest.raises(WorkbenchError, match="has no field 'nope'"):
        load_windows(random_tiny, dataset=str(local_dataset), field="nope", window=6)


def test_rebuild_windows_from_metadata(random_tiny, local_dataset):
    w = load_windows(random_tiny, dataset=str(local_dataset), field="body", window=6, stride=4,
                     bos=False)
    again = rebuild_windows(random_tiny, w.metadata())
    assert torch.equal(again.tokens, w.tokens) and again.sha256 == w.sha256
    glosses = load_windows(random_tiny, dataset="wordnet-glosses", limit=5, window=15, bos=False)
    again = rebuild_windows(random_tiny, glosses.metadata())
    assert torch.equal(again.tokens, glosses.tokens) and torch.equal(again.mask, glosses.mask)
    text = load_windows(random_tiny, text=DOCS, window=6, stride=4, bos=False)
    with pytest.raises(WorkbenchError, match="cannot be read again.*--text/--file/--dataset"):
        rebuild_windows(random_tiny, text.metadata())
    assert torch.equal(rebuild_windows(random_tiny, text.metadata(), text=DOCS).tokens,
                       text.tokens)
    with pytest.raises(WorkbenchError, match="not the data the artifact was built on"):
        rebuild_windows(random_tiny, text.metadata(), text="other words")
