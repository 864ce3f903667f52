"""One AMAP build (forward passes + accumulate) split over however many processes run this file.

``python benchmarks/distributed_probe.py DOCS THREADS`` (one process) or
``torchrun --nproc-per-node N benchmarks/distributed_probe.py DOCS THREADS``. Rank 0 prints one
JSON line: the slowest rank's compute time, the reduce time and the summed counts (a check).
"""

import json
import sys
import time

import torch

from workbench.analyses.amap import analyze
from workbench.data import load_windows
from workbench.distributed import DistContext
from workbench.models.random_tiny import random_tiny


def main() -> None:
    docs, threads = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    ctx = DistContext.from_env()
    # wider than the test model so the forward pass, not Python overhead, dominates
    model = random_tiny(n_layers=4, d_model=256, n_heads=8, d_mlp=1024, n_ctx=64)
    windows = load_windows(model, dataset="wordnet-glosses", limit=docs, window=15, stride=15,
                           bos=False)
    ctx.barrier()
    t0 = time.perf_counter()
    # this rank's slice as a shard (no ctx: the reduce is timed on its own below)
    local = analyze(model, windows, shard=(ctx.rank, ctx.world), context_units=0, progress=False,
                    batch_size=32, modes=("input", "output"))
    t1 = time.perf_counter()
    amap = ctx.reduce(local.amap)
    ctx.reduce(local.top)
    t2 = time.perf_counter()
    compute = torch.tensor([t1 - t0], dtype=torch.float64)
    if ctx.is_distributed:
        import torch.distributed as dist

        dist.all_reduce(compute, op=dist.ReduceOp.MAX)  # the job waits for its slowest rank
    if ctx.is_main:
        print(json.dumps({"processes": ctx.world, "threads": threads, "windows": len(windows),
                          "tokens": windows.n_tokens, "compute_s": float(compute),
                          "reduce_s": t2 - t1, "build_s": float(compute) + (t2 - t1),
                          "count_total": int(amap.counts["input"].sum())}))
    ctx.close()


if __name__ == "__main__":
    main()
