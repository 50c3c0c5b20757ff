"""The benchmark runs in --quick mode and produces its table and chart (its figures are not asserted: speed
goals are reported by the benchmark, never enforced by timed tests)."""

import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_writes_its_table_and_chart(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    table = (out / "results.md").read_text()
    for section in ("feature extraction", "forward", "efficiency", "forward memory", "end to end", "long audio",
                    "training step"):
        assert f"| {section} |" in table, section
    assert "load average" in table
    assert (out / "results.png").stat().st_size > 10_000
    assert (out / "results.json").is_file()
