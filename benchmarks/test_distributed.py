"""AMAP build on 1 process vs 2 processes (torchrun, gloo) on this machine's cores.

Each entry is one fresh launch (process start and imports included: what a user waits for);
``extra_info`` holds the build phase alone (slowest rank's forward passes + the reduce), measured
inside the processes. The baseline is one process with one thread: on this shared 2-core machine
one process with 2 intra-op threads was 15x *slower* than with one (133 s vs 8.5 s for 600
documents; its threads wait on each other at every small op while the other core is busy), so
one thread is the fair single-process number. Results and reasoning: docs/distributed.md.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK

ROOT = Path(__file__).resolve().parents[1]
PROBE = str(Path(__file__).with_name("distributed_probe.py"))
DOCS = 40 if QUICK else 600
CORES = os.cpu_count() or 1


def launch(processes: int, threads: int) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, PROBE, str(DOCS), str(threads)]
    else:
        sys.path.insert(0, str(ROOT))
        from tests.torchrun import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "--local-addr", "127.0.0.1", PROBE, str(DOCS), str(threads)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return {**info, "wall_s": wall}


@pytest.mark.benchmark(group="distributed-amap-build")
@pytest.mark.parametrize("processes, threads", [(1, 1), (2, 1)], ids=["1proc-baseline", "2proc"])
def test_amap_build_processes(benchmark, processes, threads):
    info = benchmark.pedantic(lambda: launch(processes, threads), rounds=1, iterations=1)
    benchmark.extra_info.update({"role": "baseline" if processes == 1 else "workbench",
                                 "cores": CORES, **info})
    # what is timed is right: every token was counted once, whatever the split
    assert info["count_total"] == info["tokens"]
