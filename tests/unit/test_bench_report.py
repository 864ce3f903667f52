"""benchmarks/report.py pairs baseline and workbench entries, computes ratios, judges goals and
prints the memory groups apart (hand-built pytest-benchmark JSON)."""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_report", Path(__file__).parents[2] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(spec)
sys.modules["bench_report"] = report  # dataclasses look their module up there
spec.loader.exec_module(report)


def bench(name, group, median, params=None, role=None, **info):
    extra = ({"role": role} if role else {}) | info
    return {"name": name, "group": group, "params": params or {},
            "stats": {"median": median}, "extra_info": extra}


def test_ratios_pair_by_size_and_device():
    data = {"benchmarks": [
        bench("test_cov_numpy[cpu-1000]", "cov", 3.0, {"device": "cpu", "n": 1000}),
        bench("test_cov_engine[cpu-1000]", "cov", 1.0, {"device": "cpu", "n": 1000}),
        bench("test_cov_numpy[cpu-10]", "cov", 1.0, {"device": "cpu", "n": 10}),
        bench("test_cov_engine[cpu-10]", "cov", 2.0, {"device": "cpu", "n": 10}),
        bench("test_x[cpu]", "g", 4.0, {"device": "cpu", "impl": "ours"}, role="workbench"),
        bench("test_x[cpu]", "g", 8.0, {"device": "cpu", "impl": "theirs"}, role="baseline"),
    ]}
    r = report.rows(data)
    assert r[("cov", "n=1000", "cov_numpy", "cov_engine", "cpu")] == 3.0
    assert r[("cov", "n=10", "cov_numpy", "cov_engine", "cpu")] == 0.5
    assert r[("g", "", "x[theirs]", "x[ours]", "cpu")] == 2.0
    text = report.table(data)
    assert "3.00×" in text and "not measured" in text  # no CUDA run: never estimated


def test_readme_table_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\nintro\n{report.START}\nold\n{report.END}\nfooter\n")
    report.write_readme(readme, "NEW")
    body = readme.read_text()
    assert "old" not in body and "NEW" in body and body.endswith("footer\n")


def test_end_to_end_lines_show_tokens_per_s_and_overhead():
    data = {"benchmarks": [
        bench("test_run[bare_forward]", "e2e-run", 0.5, role="baseline", tokens=1000,
              tokens_per_s=2000),
        bench("test_run[workbench_run]", "e2e-run", 2.0, role="workbench", tokens=1000,
              tokens_per_s=500),
        bench("test_peak[run]", "e2e-memory", 9.0, {"what": "run"}, "workbench", tokens=1000,
              peak_mib=800.4, growth_mib=250.6),
    ]}
    text = report.end_to_end(data)
    assert "| e2e-run: run[workbench_run] | 1000 | 2.000 | 500 | 4.0× |" in text
    assert "| e2e-run: run[bare_forward] | 1000 | 0.500 | 2,000 | 1.0× |" in text
    assert "peak[run]" not in text  # memory: in the memory table
    assert report.end_to_end({"benchmarks": []}) == ""


def test_cpu_only_baseline_pairs_with_cuda_entries_and_says_so():
    data = {"benchmarks": [
        bench("test_m_numpy[T16]", "moments", 4.0, {"tokens": 16}, "baseline"),
        bench("test_m_engine[T16-cpu]", "moments", 2.0, {"tokens": 16, "device": "cpu"}),
        bench("test_m_engine[T16-cuda]", "moments", 0.5, {"tokens": 16, "device": "cuda"}),
        # a baseline parametrized over devices is compared on its own device only
        bench("test_u[cpu-sysif]", "u", 9.0, {"device": "cpu", "impl": "sysif"}),
        bench("test_u[cuda-workbench]", "u", 1.0, {"device": "cuda", "impl": "workbench"}),
    ]}
    r = report.rows(data)
    assert r[("moments", "tokens=16", "m_numpy", "m_engine", "cpu")] == 2.0
    assert r[("moments", "tokens=16", "m_numpy", "m_engine", "cuda")] == 8.0
    assert not [k for k in r if k[0] == "u"]
    text = report.table(data)
    row = next(line for line in text.splitlines() if "m_engine" in line)
    assert "| 2.00× | 8.00× (vs CPU) |" in row
    assert "(vs CPU): a baseline that runs on the CPU only" in text


def test_cuda_run_fills_the_cuda_column_and_the_cpu_run_the_cpu_one():
    cpu = {"benchmarks": [bench("test_a_numpy", "a", 3.0, {"n": 1}, "baseline"),
                          bench("test_a[cpu]", "a", 1.0, {"n": 1, "device": "cpu"}, "workbench")]}
    cuda = {"benchmarks": [bench("test_a_numpy", "a", 6.0, {"n": 1}, "baseline"),
                           bench("test_a[cpu]", "a", 5.0, {"n": 1, "device": "cpu"}, "workbench"),
                           bench("test_a[cuda]", "a", 0.5, {"n": 1, "device": "cuda"}, "workbench")]}
    row = report.table(cpu, cuda).splitlines()[2]
    assert "| 3.00× | 12.00× (vs CPU) |" in row


def test_processes_pair_one_against_two():
    data = {"benchmarks": [
        bench("test_build[1proc-baseline]", "distributed", 10.0, {"processes": 1, "threads": 1},
              "baseline"),
        bench("test_build[2proc]", "distributed", 5.0, {"processes": 2, "threads": 1}, "workbench"),
    ]}
    assert report.rows(data) == {("distributed", "threads=1", "build[processes=1]",
                                  "build[processes=2]", "cpu"): 2.0}


def test_goal_column_says_met_or_not_per_device():
    goal = {"goal_ratio": 3.0, "goal": "≥ 3× numpy"}
    data = {"benchmarks": [
        bench("test_h_numpy[T1]", "h", 6.0, {"tokens": 1}, "baseline"),
        bench("test_h_engine[T1-cpu]", "h", 1.0, {"tokens": 1, "device": "cpu"}, "workbench", **goal),
        bench("test_h_engine[T1-cuda]", "h", 3.0, {"tokens": 1, "device": "cuda"}, "workbench",
              **goal),
        bench("test_h_numpy[T9]", "h", 2.0, {"tokens": 9}, "baseline"),
        bench("test_h_engine[T9-cpu]", "h", 1.0, {"tokens": 9, "device": "cpu"}, "workbench", **goal),
        bench("test_k_numpy", "k", 2.0, role="baseline"),
        bench("test_k_engine", "k", 1.0, role="workbench", goal_ratio=1.5),
        bench("test_n_sklearn", "n", 2.0, role="baseline"),
        bench("test_n_engine", "n", 1.0, role="workbench"),
    ]}
    lines = report.table(data).splitlines()
    row = {line.split(" | ")[1]: line for line in lines if line.startswith("| h ")}
    assert row["tokens=1"].endswith("| ≥ 3× numpy: CPU met, CUDA not met |")
    assert row["tokens=9"].endswith("| ≥ 3× numpy: not met |")
    assert next(line for line in lines if line.startswith("| k ")).endswith("| ≥ 1.5×: met |")
    assert next(line for line in lines if line.startswith("| n ")).endswith("| — |")


def test_sizes_sort_by_number():
    data = {"benchmarks": [b for t in (1024, 16, 128) for b in (
        bench(f"test_x_numpy[T{t}]", "x", 1.0, {"tokens": t}, "baseline"),
        bench(f"test_x_engine[T{t}]", "x", 1.0, {"tokens": t}, "workbench"))]}
    sizes = [line.split(" | ")[1] for line in report.table(data).splitlines()[2:]]
    assert sizes == ["tokens=16", "tokens=128", "tokens=1024"]


def test_memory_groups_leave_the_ratio_table_for_the_memory_table():
    data = {"benchmarks": [
        bench("test_peak[numpy]", "distributions-memory", 5.0, {"mode": "numpy"}, "baseline",
              tokens=[16, 160], peak_mib=300.0, growth_mib=40.0, growth_ratio_10x=9.5),
        bench("test_peak[engine]", "distributions-memory", 5.0, {"mode": "engine"}, "workbench",
              tokens=[16, 160], peak_mib=250.0, growth_mib=2.0, growth_ratio_10x=1.4,
              peak_rss_ratio_10x=1.01, goal_max={"peak_rss_ratio_10x": 1.1},
              goal="peak at 10× tokens ≤ 1.1×"),
        bench("test_lens_peak[cpu]", "lens-memory", 9.0, {"device": "cpu"}, "workbench",
              tokens=1024, peak_mib=900.0, growth_mib=1500.0, goal_max={"growth_mib": 1024}),
        bench("test_peak[run]", "e2e-memory", 9.0, {"what": "run"}, "workbench", tokens=1000,
              peak_mib=800.4, growth_mib=250.6),
        bench("test_throughput", "capture-throughput", 1.0, role="workbench"),
        bench("test_odd[a]", "odd", 1.0, {"mode": "a"}, "baseline"),
        bench("test_odd[b]", "odd", 1.0, {"mode": "b"}, "workbench"),
    ]}
    assert report.rows(data) == {}
    ratio = report.table(data)
    assert "memory" not in ratio.replace("Not in the ratio table", "")
    assert "capture-throughput (workbench only" in ratio
    assert "odd (baseline and workbench differ in parameters: mode=a; mode=b)" in ratio
    mem = report.memory_table(data)
    assert ("| distributions-memory | peak[engine] | CPU | 16 → 160 | 250 | 2 | 1.01× | 1.40× | "
            "peak at 10× tokens ≤ 1.1×: met |") in mem
    assert "| distributions-memory | peak[numpy] | CPU | 16 → 160 | 300 | 40 | — | 9.50× | — |" in mem
    assert ("| lens-memory | lens_peak | CPU | 1,024 | 900 | 1,500 | — | — | "
            "growth_mib ≤ 1024: not met |") in mem
    assert "| e2e-memory | peak[run] | CPU | 1,000 | 800 | 251 | — | — | — |" in mem
    assert report.memory_table({"benchmarks": []}) == ""


def test_report_compares_with_an_earlier_run_only_when_asked():
    def run(ratio):
        return {"benchmarks": [bench("test_a_numpy", "a", ratio, role="baseline"),
                               bench("test_a_engine", "a", 1.0, role="workbench")]}

    assert "earlier run" not in report.report(run(2.0))
    text = report.report(run(2.0), compare=run(4.0))
    assert "| a | - | a_numpy | a_engine | 2.00× | not measured | — | 4.00× |" in text
