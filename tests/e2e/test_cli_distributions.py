"""``workbench distributions`` as a user runs it: a subprocess, files on disk."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.e2e

TEXT = "The cat sat on the mat because it was warm. A dog is a mammal that barks."


def workbench(*args, cwd=None):
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = workbench("distributions", "--model", "random-tiny", "--text", TEXT, "--out", str(out),
                     "--quiet", "--bins", "60", "--range", "-6", "6", "--layer", "h.0",
                     "--sample", "50", "--scatter-points", "200")
    return proc, out


def test_writes_artifact_metadata_and_page(run):
    proc, out = run
    assert proc.returncode == 0, proc.stderr
    for name in ("distributions.safetensors", "distributions.json", "distributions.html"):
        assert (out / name).exists() and str(out / name) in proc.stdout
    t = load_file(str(out / "distributions.safetensors"))
    assert t["covariance"].shape == (3, 3) and t["covariance"].dtype == np.float64
    assert t["hist_counts"].shape == (3, 60) and t["hist_counts"].dtype == np.int64
    assert np.array_equal(t["hist_edges"], np.linspace(-6, 6, 61))
    total = t["hist_counts"].sum(1) + t["hist_under"] + t["hist_over"]
    assert np.array_equal(total, t["n_samples"])
    meta = json.loads((out / "distributions.json").read_text())
    assert meta["model"] == "random-tiny" and meta["settings"]["layer"] == "h.0"
    assert meta["data"]["source"] == "text"


def test_page_is_self_contained(run):
    _, out = run
    page = (out / "distributions.html").read_text()
    assert "Hidden-state distributions" in page and "Outlier dimensions" in page
    assert "<script src=" not in page  # plotly.js inlined, nothing fetched


def test_user_errors_exit_2_with_a_message(tmp_path):
    proc = workbench("distributions", "--model", "random-tiny", "--text", TEXT, "--out",
                     str(tmp_path), "--layer", "h.9", "--quiet")
    assert proc.returncode == 2 and "unknown layer 'h.9'" in proc.stderr
    assert "Traceback" not in proc.stderr
