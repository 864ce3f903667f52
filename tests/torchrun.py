"""Launch ``torchrun --nproc-per-node N`` on loopback (gloo, CPU) from a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc ARGS`` with the master on 127.0.0.1 (no network)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "--local-addr", "127.0.0.1", "--max-restarts", "0", *args]
    full_env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=ROOT)


def gloss_model() -> str:
    """tiny-gloss-lm once its weights are in the package, else random-tiny (same code paths)."""
    weights = ROOT / "workbench" / "models" / "tiny_gloss_lm" / "model.safetensors"
    return "tiny-gloss-lm" if weights.exists() else "random-tiny"


def assert_same_tensors(a: dict, b: dict, rtol: float = 1e-6, what: str = "") -> None:
    """Same keys; integer tensors (counts) equal exactly; floats within ``rtol`` of the tensor's
    largest magnitude (elementwise relative error is meaningless on entries that cancel to ~0)."""
    import torch

    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in sorted(a):
        x, y = a[k], b[k]
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}{k}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        if not x.is_floating_point():
            assert torch.equal(x, y), f"{what}{k}: integer tensors differ"
            continue
        finite = torch.isfinite(x)
        assert torch.equal(finite, torch.isfinite(y)) and torch.equal(x[~finite].isnan(), y[~finite].isnan()), \
            f"{what}{k}: NaN/inf pattern differs"
        x64, y64 = x[finite].double(), y[finite].double()
        if x64.numel():
            scale = float(x64.abs().max().clamp(min=1e-300))
            err = float((x64 - y64).abs().max()) / scale
            assert err <= rtol, f"{what}{k}: max error {err:.3g} of its scale > {rtol}"


def assert_same_amap(a: dict, b: dict, rtol: float = 1e-6, what: str = "") -> None:
    """AMAP artifacts: sums, counts and maxima as ``assert_same_tensors``; the max-activating
    windows equal except where ties make the choice arbitrary. The engine batches by length, so
    one window's activations can round differently (~1e-7) in another batch width: windows whose
    maxima tie (windows starting with the same token, in a causal model without BOS) may then
    swap. A slot may differ only if its value ties another slot of the unit (or it is the last,
    which ties a window left out); never more than 1% of the slots."""
    import torch

    assert_same_tensors({k: v for k, v in a.items() if not k.startswith("top.")},
                        {k: v for k, v in b.items() if not k.startswith("top.")}, rtol, what)
    va, vb = a["top.values"], b["top.values"]
    torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5, msg=f"{what}top.values")
    differ = (a["top.windows"] != b["top.windows"])
    gaps = (va[..., :, None] - va[..., None, :]).abs() + torch.eye(va.shape[-1]) * 1e9
    tied = gaps.min(-1).values <= 1e-5 * va.abs().clamp(min=1)
    tied[..., -1] = True
    assert not bool((differ & ~tied).any()), f"{what}top.windows differ on untied slots"
    assert float(differ.double().mean()) <= 0.01, f"{what}top.windows: {int(differ.sum())} differ"
    same = ~differ
    for key in ("positions", "starts"):
        if f"top.{key}" in a:
            assert torch.equal(a[f"top.{key}"][same], b[f"top.{key}"][same]), f"{what}top.{key}"
    if "top.acts" in a:
        torch.testing.assert_close(a["top.acts"][same], b["top.acts"][same], atol=1e-5,
                                   rtol=1e-5, msg=f"{what}top.acts")
