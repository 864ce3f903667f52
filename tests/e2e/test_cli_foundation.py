"""The CLI skeleton as a user runs it: a subprocess, offline."""

import os
import subprocess
import sys

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
