"""Worker for tests/integration/test_distributed.py, launched by ``torchrun --nproc-per-node 2``.

Each rank feeds every accumulator kind its contiguous slice of a fixed data set, reduces with
``DistContext.reduce`` and writes the reduced states to ``OUT/rank{r}.safetensors``.
``MODE``: ``ok``; ``mismatch`` (rank 1 sizes its AMAP for another vocabulary); ``raise`` (rank 1 fails with an
error before the reduce).
"""

import sys
from pathlib import Path

import torch

from workbench import distributed
from workbench.artifacts import save
from workbench.distributed import DistContext
from workbench.errors import WorkbenchError
from workbench.kernels.amap import Amap
from workbench.kernels.dimstats import DimStats
from workbench.kernels.histogram import Histogram, linear_edges
from workbench.kernels.moments import Moments
from workbench.kernels.sample import BottomK, permute_ids

N_ROWS = 306  # shards of 4-row windows: 152 + 154 rows


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of 6 values (offset mean: the fp32-naive-variance trap), token keys, row ids."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(N_ROWS, 6, generator=g, dtype=torch.float32) * 2 + 50
    keys = torch.randint(0, 11, (N_ROWS, 2), generator=g)
    return x, keys, torch.arange(N_ROWS)


def accumulators(d_vocab: int = 11) -> dict:
    return {
        "moments": Moments(6),
        "hist": Histogram(linear_edges(44, 56, 24), 6),
        "dims": DimStats(2, 3),
        "sample": BottomK(40, n_values=6, n_ids=1),
        "amap": Amap(2, d_vocab, 3, modes=("input", "output"), n_positions=4),
        "amap_in": Amap(2, d_vocab, 3, modes=("input",)),
    }


def feed(accs: dict, lo: int, hi: int) -> dict:
    """Update every accumulator with rows ``lo:hi``, 48 rows at a time."""
    x, keys, ids = data()
    for s in range(lo, hi, 48):
        e = min(s + 48, hi)
        xb = x[s:e]
        accs["moments"].update(xb)
        accs["hist"].update(xb)
        accs["dims"].update(xb.reshape(-1, 2, 3))
        k = permute_ids(ids[s:e], seed=3)
        pos = accs["sample"].candidates(k)
        accs["sample"].update(k[pos], xb[pos], ids[s:e, None][pos])
        # Groups of 4 rows are "windows" of 4 positions (shard bounds and chunks are multiples
        # of 4, so every run sees the same windows); the 6 values are [layer=2, mlp=3].
        n_win = -(-(e - s) // 4)
        acts = torch.zeros(n_win * 4, 6, dtype=torch.float64)
        acts[: e - s] = xb.double()
        acts = acts.reshape(n_win, 4, 2, 3).permute(2, 0, 1, 3)
        mask = (torch.arange(n_win * 4) < e - s).reshape(n_win, 4)
        k = torch.zeros(n_win * 4, 2, dtype=torch.long)
        k[: e - s] = keys[s:e]
        k = k.reshape(n_win, 4, 2)
        accs["amap"].update(acts, mask, {"input": k[..., 0], "output": k[..., 1]})
        accs["amap_in"].update(acts.float(), mask, {"input": k[..., 0]})
    return accs


def bounds(rank: int, world: int) -> tuple[int, int]:
    """Contiguous shards of whole 4-row windows (as ``Windows.shard`` splits windows)."""
    b = torch.linspace(0, -(-N_ROWS // 4), world + 1).round().long() * 4
    return int(b[rank]), min(int(b[rank + 1]), N_ROWS)


def flat_state(accs: dict) -> dict[str, torch.Tensor]:
    return {f"{name}/{k}": v for name, acc in accs.items() for k, v in acc.state_dict().items()}


def main() -> int:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    distributed._CHUNK = 7  # several chunks per elementwise state, as a large state takes
    ctx = DistContext.from_env()
    try:
        with ctx.guard("kernel test"):
            accs = accumulators(12 if mode == "mismatch" and ctx.rank == 1 else 11)
            feed(accs, *bounds(ctx.rank, ctx.world))
            if mode == "raise" and ctx.rank == 1:
                raise WorkbenchError("simulated failure on this rank")
            accs = ctx.reduce_all(accs)
        save(out / f"rank{ctx.rank}.safetensors", flat_state(accs), {"rank": ctx.rank})
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
