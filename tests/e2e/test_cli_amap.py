"""``workbench amap build | merge | export`` as a user runs them: subprocesses, offline."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

# One torch thread: on 2 shared cores, two OpenMP threads spin-wait on each other (10x slower).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
TEXT = "the cat sat on the mat and the dog sat on the log by the door. " * 6


def command(*args) -> list[str]:
    return [sys.executable, "-m", "workbench", *map(str, args)]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, env=ENV, timeout=300)


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
    from safetensors.numpy import load_file

    parts = [load_file(str(d / "amap.safetensors")) for d in (whole, data / "b", data / "ab")]
    n_ids = 1 + max(int(p[f"keys.{m}"].max()) for p in parts for m in ("input", "output"))

    def spread(p, mode, what):  # the sparse columns put back at their ids, by numpy
        x = p[f"{what}.{mode}"]
        out = np.zeros((n_ids,) if x.ndim == 1 else (x.shape[0], n_ids, x.shape[2]), x.dtype)
        if x.ndim == 1:
            out[p[f"keys.{mode}"]] = x
        else:
            out[:, p[f"keys.{mode}"]] = x
        return out

    for mode in ("input", "output"):
        assert set(parts[2][f"keys.{mode}"]) == set(parts[0][f"keys.{mode}"]) | set(
            parts[1][f"keys.{mode}"])
        assert list(parts[2][f"keys.{mode}"]) == sorted(parts[2][f"keys.{mode}"])
        for what in ("count", "sum"):
            np.testing.assert_allclose(spread(parts[2], mode, what), spread(parts[0], mode, what)
                                       + spread(parts[1], mode, what), rtol=1e-12, atol=1e-12)
    # the same build twice, or a merge together with a build it holds: refused
    for pair in ((whole, whole), (data / "ab", data / "b")):
        r = cli("amap", "merge", *pair, "--out", data / "twice")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "twice" in r.stderr and not (data / "twice").exists()
    r = cli("amap", "export", data / "ab", "--layers", "1", "--tokens", "t", "c", "--parquet",
            data / "ab.parquet")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(data / "ab.parquet")
    assert list(df.columns) == ["t", "c", "#unit", "#mode", "#layer", "#mean"]
    assert df.index[0] == "1_0" and set(df["#mode"]) == {"input", "output"}
    # a different build (no positions) cannot be merged in
    r = cli("amap", "build", "--model", "random-tiny", "--file", data / "b.jsonl", "--out",
            data / "c", "--quiet", "--no-html", "--modes", "input,output")
    assert r.returncode == 0, r.stderr  # the other build itself is fine
    r = cli("amap", "merge", whole, data / "c", "--out", data / "bad")
    assert r.returncode == 2 and "positions" in r.stderr and "Traceback" not in r.stderr
    assert not (data / "bad").exists()  # refused before anything was written


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
    # the random-init control: the data again (a --file build stores only the file's name)
    control = ("semantics", "--amap", whole, "--max-lemmas", "200", "--tsne-points", "30",
               "--permutations", "19", "--layers", "1", "--control", "random-init",
               "--out", data / "sem-control")
    r = cli(*control)
    assert r.returncode == 2 and "--file" in r.stderr and "Traceback" not in r.stderr
    r = cli(*control, "--file", data / "a.txt")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stdout.splitlines() if x.startswith("layer 1")]
    assert lines and all("control T=" in x and "supported: " in x for x in lines)
    html = (data / "sem-control" / "semantics.html").read_text()
    assert "Against the random-init control" in html and "Confound" in html


GLOSSES = ("amap", "build", "--model", "random-tiny", "--dataset", "wordnet-glosses", "--quiet",
           "--no-html", "--batch-size", "8")


def test_build_sigkilled_then_resumed_is_byte_identical(tmp_path):
    """A real kill (SIGKILL, no clean-up) between checkpoints; --resume ends byte-identical."""
    args = (*GLOSSES, "--limit", "200", "--checkpoint-every", "5")  # 1,527 windows, 191 batches
    t0 = time.perf_counter()
    # The reference build runs beside the one that is killed (one torch thread each).
    whole = subprocess.Popen(command(*args, "--out", tmp_path / "whole"), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "killed"
    victim = subprocess.Popen(command(*args, "--out", out), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        info = out / "amap.ckpt.json"
        while not (info.exists() and json.loads(info.read_text())["batches"] >= 40):
            assert victim.poll() is None, "the build ended before it could be killed"
            assert time.perf_counter() - t0 < 120, "no checkpoint after 120 s"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        victim.kill()
    assert not (out / "amap.safetensors").exists()
    resumed = cli(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    reference = (tmp_path / "whole" / "amap.safetensors").read_bytes()
    assert (out / "amap.safetensors").read_bytes() == reference
    assert not [p.name for p in out.iterdir() if "ckpt" in p.name]


def test_memory_limit_refusal_names_the_ways_out(data):
    out = data / "too-big"
    r = cli(*BUILD, "--file", data / "a.txt", "--out", out, "--memory-limit-gib", "0.0001")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for way in ("--layers", "--modes input", "--shard", "--sum-device cpu"):
        assert way in r.stderr
    assert not out.exists()


TOKEN_LINE = re.compile(r'^ +(\d+) (".*?") +([+-]\d+\.\d{4})(  <- peak)?$')


def printed_windows(stdout: str) -> dict[str, list[list[tuple[str, float, bool]]]]:
    """``unit -> windows -> (token, activation, is_peak)`` parsed back from the printed text."""
    units: dict[str, list] = {}
    for line in stdout.splitlines():
        if line.startswith("unit "):
            windows = units.setdefault(line.split()[1], [])
        elif line.lstrip().startswith("#"):
            windows.append([])
        elif m := TOKEN_LINE.match(line):
            windows[-1].append((json.loads(m.group(2)), float(m.group(3)), bool(m.group(4))))
    return units


def test_contexts_of_chosen_units_match_a_naive_forward(tmp_path, random_tiny):
    from workbench.data import load_windows

    amap = tmp_path / "amap"
    r = cli(*GLOSSES, "--limit", "12", "--top-k", "3", "--out", amap)
    assert r.returncode == 0, r.stderr
    units = [(1, 17), (0, 3), (1, 200)]
    r = cli("amap", "contexts", amap, "--unit", "1_17", "--unit", "0_3,1_200", "--json",
            tmp_path / "ctx.json")
    assert r.returncode == 0, r.stderr
    contexts = json.loads((tmp_path / "ctx.json").read_text())
    printed = printed_windows(r.stdout)
    assert [(c["layer"], c["neuron"]) for c in contexts] == units
    assert list(printed) == ["1_17", "0_3", "1_200"]
    # the reference: the same data windowed by hand, and run_with_cache one window at a time
    windows = load_windows(random_tiny, dataset="wordnet-glosses", limit=12, window=15,
                           stride=15, bos=False)
    caches = []
    with torch.inference_mode():
        for i in range(len(windows)):
            n = int(windows.mask[i].sum())
            _, cache = random_tiny.run_with_cache(windows.tokens[i : i + 1, :n])
            caches.append(cache)
    for c, (layer, neuron) in zip(contexts, units, strict=True):
        acts = [cache[f"blocks.{layer}.mlp.hook_post"][0, :, neuron] for cache in caches]
        maxima = [float(a.max()) for a in acts]
        naive_top = sorted(range(len(windows)), key=lambda w: (-maxima[w], w))[:3]
        assert [w["window"] for w in c["windows"]] == naive_top
        for w, shown in zip(c["windows"], printed[c["unit"]], strict=True):
            ref = acts[w["window"]]
            torch.testing.assert_close(torch.tensor(w["acts"]), ref, atol=1e-5, rtol=1e-5)
            assert [round(a, 4) for _, a, _ in shown] == pytest.approx(ref.tolist(), abs=6e-5)
            assert [t for t, _, _ in shown] == w["tokens"]
            assert [p for _, _, p in shown].index(True) == int(ref.argmax())


def test_contexts_of_a_file_build_need_the_file_again(data, whole):
    r = cli("amap", "contexts", whole, "--unit", "0_5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "file:a.txt" in r.stderr and "--text/--file/--dataset" in r.stderr
    r = cli("amap", "contexts", whole, "--unit", "0_5", "--file", data / "a.txt", "--top", "1")
    assert r.returncode == 0, r.stderr
    assert len(printed_windows(r.stdout)["0_5"]) == 1 and "<- peak" in r.stdout
    r = cli("amap", "contexts", whole, "--unit", "5_0")  # checked before anything loads
    assert r.returncode == 2 and "layer 5 is not in this AMAP" in r.stderr
