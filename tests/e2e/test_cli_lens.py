"""``workbench lens`` as a user runs it: a subprocess, offline."""

import json
import os
import subprocess
import sys

import pytest

from workbench import artifacts

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
pytestmark = pytest.mark.e2e


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "lens", "--model", "random-tiny",
                           "--quiet", *args], capture_output=True, text=True, env=ENV, timeout=180)


def test_lens_writes_artifact_metadata_and_page(tmp_path):
    r = cli("--text", "The keys to the cabinet", "--watch", "a", "b", "--watch-ids", "32",
            "--generate", "3", "--k", "4", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    for name in ("lens.safetensors", "lens.json", "lens.html"):
        assert (tmp_path / name).exists() and str(tmp_path / name) in r.stdout
    t, meta = artifacts.load(tmp_path / "lens.safetensors")
    P = 1 + len("The keys to the cabinet") + 3  # BOS + bytes + generated
    assert t["tokens"].shape == (P,) and t["topk_ids"].shape == (3, P, 4)
    assert t["ranks"].shape == (3, P - 1) and t["watch_ranks"].shape == (3, P, 3)
    assert t["generated_ranks"].shape == (3, 3) and int(t["generated_from"]) == P - 3
    assert json.loads((tmp_path / "lens.json").read_text())["settings"]["generate"] == 3
    page = (tmp_path / "lens.html").read_text()
    assert "Logit lens" in page and "h.1" in page
    assert "<script src=" not in page  # plotly.js is inlined, nothing is fetched


def test_lens_user_errors_exit_2(tmp_path):
    r = cli("--text", "The keys", "--watch", " is", "--out", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pieces" in r.stderr and "' '" in r.stderr
    assert not (tmp_path / "lens.safetensors").exists()


def test_lens_over_several_windows_says_where_the_other_windows_are(tmp_path):
    text = " ".join(f"word{i} sits in the cabinet" for i in range(12))  # 3 windows of 128
    r = cli("--text", text, "--k", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert ("per-position top-k shown for window 0 of 3; ranks of every position of all 3 "
            "windows are in lens.safetensors:window_ranks") in r.stdout
    t, _ = artifacts.load(tmp_path / "lens.safetensors")
    assert t["window_ranks"].shape == (3, 3, 127) and t["window_tokens"].shape == (3, 128)
    assert "window_ranks" in (tmp_path / "lens.html").read_text()
