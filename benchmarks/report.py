"""Ratio and memory tables from pytest-benchmark JSON.

    python benchmarks/report.py benchmarks/results/latest.json                  # print the tables
    python benchmarks/report.py latest.json --compare benchmarks/results/previous.json
    python benchmarks/report.py cpu.json --cuda cuda.json --write-readme        # README tables

1. **Ratio table** (time): inside one benchmark group, a workbench entry is paired with every
   baseline entry of the same parameters, implementation aside (``ROLE_PARAMS``: impl, method,
   processes, ...). Ratio = baseline median / workbench median; > 1 means the workbench is faster.
   A baseline that runs on the CPU only (numpy, scikit-learn: no ``device`` parameter) is paired
   with the workbench's CUDA entries too; those cells say "vs CPU". Roles come from
   ``extra_info["role"]`` or, failing that, from the test name (numpy, naive, ecco, sysif,
   sklearn, bare, baseline → baseline). Groups left without a pair are listed under the table.
2. **Goals**: an entry's ``extra_info`` may state the goal its issue set: ``goal_ratio`` (the
   least ratio) and ``goal`` (its words, e.g. "≥ 3× numpy"); the goal column says met / not met
   per device. Memory entries state ``goal_max`` ({extra_info key: largest value}).
3. **Memory table**: every ``*-memory`` group, from ``extra_info``: ``peak_mib`` (peak RSS, or
   CUDA max allocated), ``growth_mib`` (the peak above the memory before the measured work),
   ``growth_ratio_10x`` (growth at 10× the tokens over growth at 1×) and ``tokens``.
4. **End-to-end**: tokens/s and overhead over the bare forward of the ``e2e-*`` time groups.

Missing devices print "not measured", never an estimate. ``--write-readme`` writes this run's
tables (without the earlier run's column) between the markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

BASELINE_WORDS = ("baseline", "numpy", "np_", "naive", "ecco", "sysif", "sklearn", "argsort",
                  "bare", "reference", "dense_onehot", "full_sort", "softmax_sort", "scipy")
# Parameters that name the side of a comparison, not its size: entries differing only in these
# (and the device) are paired.
ROLE_PARAMS = {"impl", "method", "role", "which", "engine", "kind", "processes"}
MEMORY_SUFFIX = "-memory"
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


def cpu_only(bench: dict) -> bool:
    """A baseline not parametrized over devices (numpy, scikit-learn) runs on the CPU only."""
    return "device" not in (bench.get("params") or {}) and device_of(bench) == "cpu"


def size_key(bench: dict) -> str:
    params = {k: v for k, v in (bench.get("params") or {}).items()
              if k not in ROLE_PARAMS and k != "device"}
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def short(name: str) -> str:
    return re.sub(r"\[.*\]$", "", name).removeprefix("test_")


def label(bench: dict) -> str:
    """The test name, plus the values of its role parameters: ``amap_update[sysif]``."""
    params = bench.get("params") or {}
    sides = [str(v) if isinstance(v, str) else f"{k}={v}"
             for k, v in sorted(params.items()) if k in ROLE_PARAMS]
    return short(bench["name"]) + (f"[{', '.join(sides)}]" if sides else "")


def group_of(bench: dict) -> str:
    return bench.get("group") or short(bench["name"])


def is_memory(bench: dict) -> bool:
    return group_of(bench).endswith(MEMORY_SUFFIX)


@dataclass(frozen=True)
class Goal:
    text: str
    least_ratio: float


def goal_of(*benches: dict) -> Goal | None:
    """The first ``goal_ratio`` stated by these entries (the workbench's first)."""
    for b in benches:
        info = b.get("extra_info") or {}
        if info.get("goal_ratio") is not None:
            least = float(info["goal_ratio"])
            return Goal(info.get("goal") or f"≥ {least:g}×", least)
    return None


@dataclass(frozen=True)
class Pair:
    group: str
    size: str
    baseline: str
    workbench: str
    device: str  # the workbench entry's
    ratio: float  # baseline median / workbench median
    baseline_on_cpu: bool  # a CPU-only baseline against a CUDA entry
    goal: Goal | None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.group, self.size, self.baseline, self.workbench


def _groups(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        out.setdefault(group_of(b), []).append(b)
    return out


def pairs(data: dict) -> list[Pair]:
    """Every (baseline, workbench) pair of the time groups (``*-memory`` groups excluded)."""
    out = []
    for group, benches in _groups(data).items():
        if group.endswith(MEMORY_SUFFIX):
            continue
        base = [b for b in benches if role(b) == "baseline"]
        for w in (b for b in benches if role(b) == "workbench"):
            for b in base:
                if size_key(b) != size_key(w):
                    continue
                across = device_of(b) != device_of(w)
                if across and not (cpu_only(b) and device_of(w) == "cuda"):
                    continue
                ratio = b["stats"]["median"] / w["stats"]["median"]
                out.append(Pair(group, size_key(w), label(b), label(w), device_of(w), ratio,
                                across, goal_of(w, b)))
    return out


def rows(data: dict) -> dict[tuple[str, str, str, str, str], float]:
    """{(group, size, baseline name, workbench name, device): ratio}."""
    return {(*p.key, p.device): p.ratio for p in pairs(data)}


def unpaired(data: dict) -> list[str]:
    """Time groups that gave no row, and why (so nothing is dropped silently)."""
    paired = {p.group for p in pairs(data)}
    notes = []
    for group, benches in sorted(_groups(data).items()):
        if group in paired or group.endswith(MEMORY_SUFFIX):
            continue
        roles = {role(b) for b in benches}
        if roles == {"workbench"}:
            notes.append(f"{group} (workbench only, no baseline in its group)")
        elif roles == {"baseline"}:
            notes.append(f"{group} (baseline only)")
        else:
            sizes = sorted({size_key(b) or "-" for b in benches})
            notes.append(f"{group} (baseline and workbench differ in parameters: "
                         f"{'; '.join(sizes)})")
    return notes


def natural(text: str) -> list:
    """Sort key that orders ``tokens=16 < tokens=128`` by number."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _ratio_cell(p: Pair | None) -> str:
    if p is None:
        return "not measured"
    return f"{p.ratio:.2f}×" + (" (vs CPU)" if p.baseline_on_cpu else "")


def _goal_cell(by_device: dict[str, Pair]) -> str:
    goals = {dev: p for dev, p in by_device.items() if p.goal is not None}
    if not goals:
        return "—"
    text = next(iter(goals.values())).goal.text
    verdict = {dev: "met" if p.ratio >= p.goal.least_ratio else "not met" for dev, p in goals.items()}
    if list(verdict) == ["cpu"]:
        return f"{text}: {verdict['cpu']}"
    return f"{text}: " + ", ".join(f"{dev.upper()} {v}" for dev, v in sorted(verdict.items()))


def table(cpu: dict, cuda: dict | None = None, compare: dict | None = None) -> str:
    """The ratio table: CPU and CUDA ratios, the goal, and an earlier run's ratios if given."""
    now: dict[tuple, dict[str, Pair]] = {}
    for p in pairs(cpu):
        now.setdefault(p.key, {})[p.device] = p
    for p in pairs(cuda) if cuda else []:
        if p.device == "cuda":  # the CUDA run's CPU entries: the CPU run has its own
            now.setdefault(p.key, {})[p.device] = p
    old: dict[tuple, dict[str, Pair]] = {}
    for p in pairs(compare) if compare else []:
        old.setdefault(p.key, {})[p.device] = p
    old_cuda = any("cuda" in v for v in old.values())
    head = "| group | sizes | baseline | workbench | CPU ratio | CUDA ratio | goal |"
    if compare:
        head += " CPU ratio (earlier run) |" + (" CUDA ratio (earlier run) |" if old_cuda else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)] if now else ["No ratio rows."]
    for k in sorted(now, key=lambda k: [natural(part) for part in k]):
        by_dev = now[k]
        cells = [k[0], k[1] or "-", k[2], k[3], _ratio_cell(by_dev.get("cpu")),
                 _ratio_cell(by_dev.get("cuda")), _goal_cell(by_dev)]
        if compare:
            earlier = old.get(k, {})
            cells.append(f"{earlier['cpu'].ratio:.2f}×" if "cpu" in earlier else "—")
            if old_cuda:
                cells.append(_ratio_cell(earlier["cuda"]) if "cuda" in earlier else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if any(p.baseline_on_cpu for by_dev in now.values() for p in by_dev.values()):
        lines += ["", "(vs CPU): a baseline that runs on the CPU only (numpy, scikit-learn, scipy) "
                  "against the workbench on CUDA."]
    notes = unpaired(cpu)
    if notes:
        lines += ["", "Not in the ratio table: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _mib(v) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "?"


def _tokens(v) -> str:
    if isinstance(v, (list, tuple)):
        return " → ".join(f"{t:,}" for t in v)
    return f"{v:,}" if isinstance(v, int) else "?"


def _memory_goal(info: dict) -> str:
    bounds = info.get("goal_max")
    if not bounds:
        return "—"
    text = info.get("goal") or ", ".join(f"{k} ≤ {v:g}" for k, v in bounds.items())
    values = [info.get(k) for k in bounds]
    if any(v is None for v in values):
        return f"{text}: not measured"
    met = all(v <= bound for v, bound in zip(values, bounds.values(), strict=True))
    return f"{text}: {'met' if met else 'not met'}"


def memory_table(cpu: dict, cuda: dict | None = None) -> str:
    """Every ``*-memory`` group: peak, growth above the memory before the work, 10× ratio, goal."""
    benches = [b for b in cpu.get("benchmarks", []) if is_memory(b)]
    benches += [b for b in (cuda or {}).get("benchmarks", []) if is_memory(b)
                and device_of(b) == "cuda"]
    if not benches:
        return ""
    lines = ["| memory (fresh processes) | entry | device | tokens | peak MiB | growth MiB | "
             "peak at 10× tokens | growth at 10× tokens | goal |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(benches, key=lambda b: (natural(group_of(b)), natural(b["name"]), device_of(b)))
    for b in order:
        info = b.get("extra_info") or {}
        ratio, peak_ratio = info.get("growth_ratio_10x"), info.get("peak_rss_ratio_10x")
        lines.append(
            f"| {group_of(b)} | {short(b['name'])}{_side(b)} | {device_of(b).upper()} | "
            f"{_tokens(info.get('tokens'))} | {_mib(info.get('peak_mib'))} | "
            f"{_mib(info.get('growth_mib'))} | "
            f"{f'{peak_ratio:.2f}×' if peak_ratio is not None else '—'} | "
            f"{f'{ratio:.2f}×' if ratio is not None else '—'} | "
            f"{_memory_goal(info)} |")
    lines += ["", "Peak: the process' peak RSS (VmHWM) or, on CUDA, max allocated; growth: the peak "
              "above the memory just before the measured work (the model and inputs loaded)."]
    return "\n".join(lines)


def precision_table(data: dict) -> str:
    """Every ``*-precision`` group: the relative error each side reached, and the goal."""
    benches = [b for b in data.get("benchmarks", []) if group_of(b).endswith("-precision")]
    if not benches:
        return ""
    lines = ["| precision | entry | count | largest relative error | median s | goal |",
             "|---|---|---|---|---|---|"]
    for b in sorted(benches, key=lambda b: (natural(group_of(b)), natural(b["name"]))):
        info = b.get("extra_info") or {}
        err = info.get("rel_error")
        lines.append(f"| {group_of(b)} | {short(b['name'])}{_side(b)} | {_tokens(info.get('count'))}"
                     f" | {f'{err:.2e}' if err is not None else '?'} | "
                     f"{b['stats']['median']:.2f} | {_memory_goal(info)} |")
    return "\n".join(lines)


def _side(bench: dict) -> str:
    params = {k: v for k, v in (bench.get("params") or {}).items() if k != "device"}
    return f"[{', '.join(str(v) for _, v in sorted(params.items()))}]" if params else ""


def end_to_end(data: dict) -> str:
    """Tokens/s and overhead over the bare forward pass of the ``e2e-*`` time groups."""
    speed = [b for b in data.get("benchmarks", [])
             if group_of(b).startswith("e2e-") and not is_memory(b)]
    if not speed:
        return ""
    lines = ["| end-to-end (CPU) | tokens | median s | tokens/s | × bare forward time |",
             "|---|---|---|---|---|"]
    for group in sorted({group_of(b) for b in speed}):
        inside = [b for b in speed if group_of(b) == group]
        base = [b for b in inside if role(b) == "baseline"]
        for b in sorted(inside, key=lambda b: role(b) != "baseline"):
            info, med = b.get("extra_info") or {}, b["stats"]["median"]
            over = f"{med / base[0]['stats']['median']:.1f}×" if base else "—"
            lines.append(f"| {group}: {b['name'].removeprefix('test_')} | {info.get('tokens', '?')} | "
                         f"{med:.3f} | {info.get('tokens_per_s', 0):,.0f} | {over} |")
    return "\n".join(lines)


def machine(data: dict) -> str:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {})
    checks = " (jaxtyping runtime checks ON: timings include them)" if m.get("jaxtyping_checks") else ""
    return (f"{cpu.get('brand_raw', m.get('processor', '?'))}, {cpu.get('count', '?')} cores, "
            f"Python {m.get('python_version', '?')}, torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} threads), CUDA: {m.get('cuda') or 'none'}, "
            f"{'quick' if m.get('quick_mode') else 'full'} mode{checks}, {data.get('datetime', '?')}")


def report(cpu: dict, cuda: dict | None = None, compare: dict | None = None) -> str:
    """All tables and the machines they ran on."""
    parts = [table(cpu, cuda, compare), memory_table(cpu, cuda), precision_table(cpu),
             end_to_end(cpu)]
    info = f"CPU run: {machine(cpu)}" + (f"\n\nCUDA run: {machine(cuda)}" if cuda else
                                          "\n\nCUDA: not measured (no GPU lent to this run).")
    if compare:
        info += f"\n\nEarlier run: {machine(compare)}"
    return "\n\n".join(p for p in parts if p) + "\n\n" + info


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
    ap.add_argument("--compare", type=Path, help="an earlier JSON to compare ratios with")
    ap.add_argument("--write-readme", action="store_true",
                    help="write this run's tables into benchmarks/README.md")
    args = ap.parse_args(argv)
    cpu = json.loads(args.json.read_text())
    cuda = json.loads(args.cuda.read_text()) if args.cuda else None
    old = json.loads(args.compare.read_text()) if args.compare else None
    print(report(cpu, cuda, old))
    if args.write_readme:
        write_readme(Path(__file__).parent / "README.md", report(cpu, cuda))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
