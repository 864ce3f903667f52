"""The CLI skeleton as a user runs it: a subprocess, offline."""

import os
import subprocess
import sys

import pytest
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    assert "models" in r.stdout


def test_models_lists_offline_models():
    r = cli("models")
    assert r.returncode == 0, r.stderr
    for name in ("tiny-gloss-lm", "minilm", "random-tiny"):
        assert name in r.stdout


def test_user_errors_exit_2_with_message(tmp_path):
    """A missing input file is a user error: a one-line message, exit 2, no traceback."""
    r = cli("distributions", "--model", "random-tiny", "--file", str(tmp_path / "missing.txt"),
            "--out", str(tmp_path))
    assert r.returncode == 2
    assert "file not found" in r.stderr and "Traceback" not in r.stderr


def test_hub_model_without_network_exits_2_fast(tmp_path):
    """No offline flags at all: the hub probe (pointed at a closed loopback port through
    HF_ENDPOINT, as a mirror would be) must fail and the command exit 2 with the offline list."""
    import time

    env = {k: v for k, v in ENV.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workbench", "lens", "--model", "gpt2", "--text",
                        "hi", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       env=env, timeout=60)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    assert "no hub is reachable" in r.stderr and "Traceback" not in r.stderr
    for name in ("tiny-gloss-lm", "minilm", "random-tiny"):
        assert name in r.stderr
    assert seconds < 20, f"took {seconds:.1f} s"
    print(f"gpt2 offline refusal: {seconds:.1f} s")

BAD_DEVICES = ["toaster", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("flag, device", [("--device", d) for d in BAD_DEVICES]
                         + [("--sum-device", "toaster")])
def test_bad_devices_are_one_line_before_anything_runs(tmp_path, flag, device):
    cmd = ("amap", "build") if flag == "--sum-device" else ("distributions",)
    out = tmp_path / "out"
    r = cli(*cmd, "--model", "random-tiny", "--text", "hello there world, once more", flag,
            device, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert device in r.stderr and "cpu" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path, where):
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    out = blocker if where == "file" else blocker / "run"
    r = cli("run", "--model", "random-tiny", "--text", "hello there world", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"
