"""`workbench attention` and `workbench factors` as a user runs them (subprocess, offline)."""

import os
import subprocess
import sys

from workbench import artifacts

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def test_attention_sentence_pair_on_minilm(tmp_path):
    r = cli("attention", "--model", "minilm", "--text", "A man is eating food.",
            "--text-b", "Someone is eating.", "--layer", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    tensors, meta = artifacts.load(tmp_path / "attention.safetensors")
    assert tensors["patterns"].shape[:2] == (6, 12)
    assert tensors["token_type_ids"].tolist().count(1) == 5  # "someone is eating ." [SEP]
    assert meta["tokens_text"][0] == "[CLS]"
    html = (tmp_path / "attention.html").read_text()
    assert 'data-wb-widget="attention-head-view"' in html


def test_factors_user_errors_exit_2_with_a_message(tmp_path):
    r = cli("factors", "--model", "random-tiny", "--text", "abc", "--components", "8",
            "--out", str(tmp_path))
    assert r.returncode == 2 and "fewer --components" in r.stderr and "Traceback" not in r.stderr
    r = cli("factors", "--model", "random-tiny", "--text", "abcdefghij", "--layers", "x-y",
            "--out", str(tmp_path))
    assert r.returncode == 2 and "--layers" in r.stderr
