"""Token windows: windowing rules, BOS, padding, sources and their errors (byte tokenizer)."""

import json

import pytest
import torch

from workbench.data import from_file, from_text, load_windows, tokenize_documents
from workbench.errors import WorkbenchError
from workbench.models.random_tiny import byte_tokenizer_dir


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(byte_tokenizer_dir()))


def naive_windows(ids, window, stride):
    out, s = [], 0
    while True:
        out.append(ids[s : s + window])
        if s + window >= len(ids):
            return out
        s += stride


@pytest.mark.parametrize("n,window,stride", [(10, 4, 4), (10, 4, 2), (3, 4, 4), (8, 4, 4), (9, 3, 1)])
@pytest.mark.parametrize("bos", [False, True])
def test_windows_cover_every_token(tok, n, window, stride, bos):
    text = "abcdefghijklmnopqrstuvwxyz"[:n]
    w = tokenize_documents([text], tok, window, stride, bos)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    expected = naive_windows(ids, window, stride)
    assert len(w) == len(expected)
    head = [tok.bos_token_id] if bos else []
    for row, m, exp in zip(w.tokens, w.mask, expected, strict=True):
        assert row[m].tolist() == head + exp
        assert not m[len(head) + len(exp) :].any()  # padding is masked
    covered = set()
    for s, m in zip(w.starts.tolist(), w.mask.sum(1).tolist(), strict=True):
        covered |= set(range(s, s + m - len(head)))
    assert covered == set(range(n))  # nothing truncated


def test_windows_do_not_cross_documents(tok):
    w = tokenize_documents(["abc", "defgh"], tok, 4, 4, bos=False)
    assert w.doc_ids.tolist() == [0, 1, 1]
    assert w.n_documents == 2


def test_long_text_is_windowed_not_truncated(random_tiny):
    text = "x" * (random_tiny.cfg.n_ctx * 3 + 5)
    w = load_windows(random_tiny, text=text)
    assert w.tokens.shape[1] <= random_tiny.cfg.n_ctx
    assert int(w.mask.sum()) == len(text) + len(w)  # every char + one BOS per window


def test_window_larger_than_context_is_refused(random_tiny):
    with pytest.raises(WorkbenchError, match="exceeds the model's context"):
        load_windows(random_tiny, text="hello", window=random_tiny.cfg.n_ctx)


def test_empty_inputs_are_refused(tok, tmp_path, random_tiny):
    with pytest.raises(WorkbenchError, match="empty"):
        from_text("", tok)
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(WorkbenchError, match="empty"):
        load_windows(random_tiny, file=tmp_path / "e.txt")


def test_missing_file_and_bad_bytes(tok, tmp_path):
    with pytest.raises(WorkbenchError, match="file not found"):
        from_file(tmp_path / "nope.txt", tok)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 ok")
    with pytest.raises(WorkbenchError, match="not valid UTF-8.*iconv"):
        from_file(bad, tok)


def test_jsonl_field(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["ab", "cde"])))
    w = from_file(p, tok, window=8, field="body", bos=False)
    assert [r[m].tolist() for r, m in zip(w.tokens, w.mask, strict=True)] == [
        tok("ab")["input_ids"], tok("cde")["input_ids"]]
    with pytest.raises(WorkbenchError, match="no field 'text'"):
        from_file(p, tok)
    (tmp_path / "x.jsonl").write_text("{not json\n")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        from_file(tmp_path / "x.jsonl", tok)


def test_stride_larger_than_window_is_refused(tok):
    with pytest.raises(WorkbenchError, match="stride"):
        from_text("abcdef", tok, window=2, stride=3)


def test_shards_are_disjoint_and_cover(tok):
    w = from_text("abcdefghijklmnopqrstuvwxyz" * 3, tok, window=4)
    for world in (1, 2, 3, 5):
        parts = [w.shard(r, world) for r in range(world)]
        assert torch.equal(torch.cat([p.tokens for p in parts]), w.tokens)


def test_batches_trim_padding(tok):
    w = from_text(["abcdefgh", "ab"], tok, window=8, bos=False)
    batches = list(w.batches(1))
    assert [b[1].shape[1] for b in batches] == [8, 2]
    assert sum(int(b[2].sum()) for b in batches) == w.n_tokens


def test_metadata_hash_tracks_content(tok):
    a = from_text("hello", tok).metadata()
    b = from_text("hello!", tok).metadata()
    assert a["sha256"] != b["sha256"] and a["window"] == 128


def test_file_metadata_holds_the_files_sha256(tok, tmp_path, random_tiny):
    import hashlib

    p = tmp_path / "t.txt"
    p.write_bytes("caf\u00e9 au lait\n".encode())
    expected = hashlib.sha256(p.read_bytes()).hexdigest()  # what sha256sum prints
    assert from_file(p, tok).metadata()["file_sha256"] == expected
    assert load_windows(random_tiny, file=p).metadata()["file_sha256"] == expected
    assert "file_sha256" not in from_text("café au lait", tok).metadata()


def test_encoder_windows_have_cls_and_sep(minilm):
    w = load_windows(minilm, text="hello world")
    t = w.tokens[0][w.mask[0]].tolist()
    assert t[0] == minilm.tokenizer.cls_token_id and t[-1] == minilm.tokenizer.sep_token_id


def test_a_byte_order_mark_is_not_text_in_any_format(tmp_path):
    from workbench.inputs import read_jsonl, read_text_file

    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello world")
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "hello world"}\n')
    assert read_text_file(tmp_path / "a.txt") == "hello world"
    assert read_jsonl(tmp_path / "a.jsonl") == ["hello world"]


@pytest.mark.parametrize("value", ["null", "3", "[\"a\"]", "{\"x\": 1}", "true"])
def test_jsonl_fields_that_are_not_strings_are_refused_with_the_line(tmp_path, value):
    from workbench.errors import WorkbenchError
    from workbench.inputs import read_jsonl

    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n' + f'{{"text": {value}}}\n')
    with pytest.raises(WorkbenchError, match=r"a\.jsonl:2: field 'text' is .* not a string"):
        read_jsonl(tmp_path / "a.jsonl")
