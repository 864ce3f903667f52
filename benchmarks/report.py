"""Ratio table from pytest-benchmark JSON: baseline time / workbench time, per group and size.

    python benchmarks/report.py benchmarks/results/latest.json                  # print the table
    python benchmarks/report.py new.json --compare benchmarks/results/cpu-full.json
    python benchmarks/report.py cpu.json --cuda cuda.json --write-readme        # README table

A row pairs, inside one benchmark group, a workbench entry with a baseline entry of the same
parameters (device and implementation aside). Roles come from ``extra_info["role"]`` or, failing
that, from the test name (numpy, naive, ecco, sysif, sklearn, bare, baseline → baseline).
Ratios > 1 mean the workbench is faster. Missing devices print "not measured", never an estimate.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BASELINE_WORDS = ("baseline", "numpy", "np_", "naive", "ecco", "sysif", "sklearn", "argsort",
                  "bare", "reference", "dense_onehot", "full_sort", "softmax_sort")
ROLE_PARAMS = {"impl", "method", "role", "which", "engine", "kind"}
START, END = "<!-- ratio-table:start -->", "<!-- ratio-table:end -->"


def role(bench: dict) -> str:
    r = (bench.get("extra_info") or {}).get("role")
    if r in ("baseline", "workbench"):
        return r
    params = bench.get("params") or {}
    text = (bench["name"] + " " + " ".join(str(params.get(p, "")) for p in ROLE_PARAMS)).lower()
    return "baseline" if any(w in text for w in BASELINE_WORDS) else "workbench"


def device_of(bench: dict) -> str:
    params = bench.get("params") or {}
    dev = str(params.get("device") or (bench.get("extra_info") or {}).get("device") or "cpu")
    return "cuda" if dev.startswith("cuda") else "cpu"


def size_key(bench: dict) -> str:
    params = {k: v for k, v in (bench.get("params") or {}).items()
              if k not in ROLE_PARAMS and k != "device"}
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def short(name: str) -> str:
    return re.sub(r"\[.*\]$", "", name).removeprefix("test_")


def rows(data: dict) -> dict[tuple[str, str, str, str], float]:
    """{(group, size, baseline name, workbench name, device): ratio}."""
    by_group: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        by_group.setdefault(b.get("group") or short(b["name"]), []).append(b)
    out = {}
    for group, benches in by_group.items():
        base = [b for b in benches if role(b) == "baseline"]
        ours = [b for b in benches if role(b) == "workbench"]
        for w in ours:
            for b in base:
                if size_key(b) == size_key(w) and device_of(b) == device_of(w):
                    ratio = b["stats"]["median"] / w["stats"]["median"]
                    out[(group, size_key(w), short(b["name"]), short(w["name"]), device_of(w))] = ratio
    return out


def table(cpu: dict, cuda: dict | None = None, compare: dict | None = None) -> str:
    r_cpu = rows(cpu)
    r_cuda = rows(cuda) if cuda else {}
    r_old = rows(compare) if compare else {}
    keys = sorted({k[:4] for k in list(r_cpu) + list(r_cuda)})
    head = "| group | sizes | baseline | workbench | CPU ratio | CUDA ratio |"
    if compare:
        head += " CPU ratio (earlier run) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for k in keys:
        cpu_r = r_cpu.get((*k, "cpu"))
        cuda_r = r_cuda.get((*k, "cuda")) or r_cpu.get((*k, "cuda"))
        cells = [k[0], k[1] or "-", k[2], k[3],
                 f"{cpu_r:.2f}×" if cpu_r else "not measured",
                 f"{cuda_r:.2f}×" if cuda_r else "not measured"]
        if compare:
            old = r_old.get((*k, "cpu"))
            cells.append(f"{old:.2f}×" if old else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def end_to_end(data: dict) -> str:
    """Tokens/s, overhead over the bare forward and peak memory of the ``e2e-*`` groups."""
    benches = [b for b in data.get("benchmarks", []) if (b.get("group") or "").startswith("e2e-")]
    if not benches:
        return ""
    speed = [b for b in benches if b["group"] != "e2e-memory"]
    memory = [b for b in benches if b["group"] == "e2e-memory"]
    lines = ["| end-to-end (CPU) | tokens | median s | tokens/s | × bare forward time |",
             "|---|---|---|---|---|"]
    for group in sorted({b["group"] for b in speed}):
        inside = [b for b in speed if b["group"] == group]
        base = [b for b in inside if role(b) == "baseline"]
        for b in sorted(inside, key=lambda b: role(b) != "baseline"):
            info, med = b.get("extra_info") or {}, b["stats"]["median"]
            over = f"{med / base[0]['stats']['median']:.1f}×" if base else "—"
            lines.append(f"| {group}: {b['name'].removeprefix('test_')} | {info.get('tokens', '?')} | {med:.3f} | "
                         f"{info.get('tokens_per_s', 0):,.0f} | {over} |")
    if memory:
        lines += ["", "| peak memory (fresh process, CPU) | tokens | peak RSS MiB | "
                  "growth over loaded model MiB |", "|---|---|---|---|"]
        for b in memory:
            info = b.get("extra_info") or {}
            peak, growth = info.get("peak_mib"), info.get("growth_mib")
            lines.append(f"| {b['name'].removeprefix('test_')} | {info.get('tokens', '?')} | "
                         f"{f'{peak:.0f}' if peak else '?'} | "
                         f"{f'{growth:.0f}' if growth is not None else '?'} |")
    return "\n".join(lines)


def machine(data: dict) -> str:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {})
    return (f"{cpu.get('brand_raw', m.get('processor', '?'))}, {cpu.get('count', '?')} cores, "
            f"Python {m.get('python_version', '?')}, torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} threads), CUDA: {m.get('cuda') or 'none'}, "
            f"{'quick' if m.get('quick_mode') else 'full'} mode, {data.get('datetime', '?')}")


def write_readme(readme: Path, text: str) -> None:
    body = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in body:
        body += f"\n{START}\n{END}\n"
    pre, rest = body.split(START, 1)
    post = rest.split(END, 1)[1]
    readme.write_text(f"{pre}{START}\n{text}\n{END}{post}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON (CPU run)")
    ap.add_argument("--cuda", type=Path, help="pytest-benchmark JSON of a CUDA run")
    ap.add_argument("--compare", type=Path, help="an earlier JSON to compare CPU ratios with")
    ap.add_argument("--write-readme", action="store_true", help="update benchmarks/README.md")
    args = ap.parse_args(argv)
    cpu = json.loads(args.json.read_text())
    cuda = json.loads(args.cuda.read_text()) if args.cuda else None
    old = json.loads(args.compare.read_text()) if args.compare else None
    text = table(cpu, cuda, old)
    e2e = end_to_end(cpu)
    if e2e:
        text += "\n\n" + e2e
    info = f"CPU run: {machine(cpu)}" + (f"\n\nCUDA run: {machine(cuda)}" if cuda else
                                          "\n\nCUDA: not measured (no GPU lent to this run).")
    print(text + "\n\n" + info)
    if args.write_readme:
        write_readme(Path(__file__).parent / "README.md", text + "\n\n" + info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
