"""benchmarks/report.py pairs baseline and workbench entries and computes ratios."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_report", Path(__file__).parents[2] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def bench(name, group, median, params=None, role=None):
    return {"name": name, "group": group, "params": params or {},
            "stats": {"median": median}, "extra_info": {"role": role} if role else {}}


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
    assert r[("g", "", "x", "x", "cpu")] == 2.0
    text = report.table(data)
    assert "3.00×" in text and "not measured" in text  # no CUDA run: never estimated


def test_readme_table_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\nintro\n{report.START}\nold\n{report.END}\nfooter\n")
    report.write_readme(readme, "NEW")
    body = readme.read_text()
    assert "old" not in body and "NEW" in body and body.endswith("footer\n")


def test_end_to_end_lines_show_tokens_per_s_overhead_and_memory():
    def e2e(name, group, median, role, **info):
        b = bench(name, group, median, role=role)
        b["extra_info"].update(info)
        return b

    data = {"benchmarks": [
        e2e("test_run[bare_forward]", "e2e-run", 0.5, "baseline", tokens=1000, tokens_per_s=2000),
        e2e("test_run[workbench_run]", "e2e-run", 2.0, "workbench", tokens=1000, tokens_per_s=500),
        e2e("test_peak[run]", "e2e-memory", 9.0, "workbench", tokens=1000, peak_mib=800.4,
            growth_mib=250.6),
    ]}
    text = report.end_to_end(data)
    assert "| e2e-run: run[workbench_run] | 1000 | 2.000 | 500 | 4.0× |" in text
    assert "| e2e-run: run[bare_forward] | 1000 | 0.500 | 2,000 | 1.0× |" in text
    assert "| peak[run] | 1000 | 800 | 251 |" in text
    assert report.end_to_end({"benchmarks": []}) == ""
