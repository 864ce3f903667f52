"""``workbench amap build | merge | export`` as a user runs them: subprocesses, offline."""

import os
import subprocess
import sys

import pandas as pd
import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
TEXT = "the cat sat on the mat and the dog sat on the log by the door. " * 6


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("amap_cli")
    (d / "a.txt").write_text(TEXT)
    (d / "b.jsonl").write_text('{"text": "a second file, with other words in it"}\n' * 3)
    return d


BUILD = ("amap", "build", "--model", "random-tiny", "--positions", "--batch-size", "2",
         "--checkpoint-every", "2", "--quiet", "--no-html")


@pytest.fixture(scope="module")
def whole(data):
    r = cli(*BUILD, "--file", data / "a.txt", "--out", data / "whole")
    assert r.returncode == 0, r.stderr
    assert "invariants: all hold" in r.stdout
    return data / "whole"


def test_build_killed_then_resumed_is_byte_identical(data, whole):
    killed = data / "killed"
    r = cli(*BUILD, "--file", data / "a.txt", "--out", killed, "--stop-after", "3")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = cli(*BUILD, "--file", data / "a.txt", "--out", killed, "--resume")
    assert r.returncode == 0, r.stderr
    assert (whole / "amap.safetensors").read_bytes() == (killed / "amap.safetensors").read_bytes()


def test_merge_export_and_refusals(data, whole):
    r = cli(*BUILD, "--file", data / "b.jsonl", "--out", data / "b")
    assert r.returncode == 0, r.stderr
    r = cli("amap", "merge", whole, data / "b", "--out", data / "ab")
    assert r.returncode == 0, r.stderr
    r = cli("amap", "export", data / "ab", "--layers", "1", "--tokens", "t", "c", "--parquet",
            data / "ab.parquet")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(data / "ab.parquet")
    assert list(df.columns) == ["t", "c", "#unit", "#mode", "#layer", "#mean"]
    assert df.index[0] == "1_0" and set(df["#mode"]) == {"input", "output"}
    # a different build (no positions) cannot be merged in
    r = cli("amap", "build", "--model", "random-tiny", "--file", data / "b.jsonl", "--out",
            data / "c", "--quiet", "--no-html", "--modes", "input,output")
    r = cli("amap", "merge", whole, data / "c", "--out", data / "bad")
    assert r.returncode == 2 and "positions" in r.stderr and "Traceback" not in r.stderr


def test_text_shorter_than_a_window_is_a_clear_error(data):
    r = cli("amap", "build", "--model", "random-tiny", "--text", "hello", "--out", data / "short")
    assert r.returncode == 2
    assert "5 tokens" in r.stderr and "window of 15" in r.stderr and "Traceback" not in r.stderr


def test_semantics_on_a_built_amap(data, whole):
    r = cli("semantics", "--amap", whole, "--max-lemmas", "200", "--tsne-points", "60",
            "--permutations", "19", "--layers", "1", "--out", data / "sem")
    assert r.returncode == 0, r.stderr
    assert "layer 1 lexname" in r.stdout
    html = (data / "sem" / "semantics.html").read_text()
    assert "t-SNE of lemma AMAPs" in html and "Do lemmas sharing a label" in html
    r = cli("semantics", "--amap", data / "nothing-here")
    assert r.returncode == 2 and "no AMAP" in r.stderr
