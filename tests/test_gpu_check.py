"""``benchmarks/gpu_check.sh --dry-run``: every step of the one-shot GPU script runs on CPU with tiny shapes, so a
broken step is caught here and not in a rare, short GPU window. Also checks the window's constraints: step limits
sum to at most 300 s, at most 8 files under $OUT, rows written as JSON lines by each benchmark."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "gpu_tests", "kernels", "throughput_pretrain", "patchify", "throughput_finetune", "frontend",
         "kernels_compile", "throughput_ref_compile", "throughput_fused_compile"]


def _summary_steps(summary: str) -> list[tuple[str, str]]:
    return re.findall(r"^  (\w+)\s+(rc=\S+)", summary, flags=re.M)


def test_step_limits_fit_the_window():
    """Parsed from the script itself (no run needed): the ``step NAME LIMIT`` lines in order, limits summing to at
    most 300 s, every compiled step after the eager ones."""
    steps = re.findall(r"^step (\w+) (\d+) ", SCRIPT.read_text(), flags=re.M)
    assert [n for n, _ in steps] == STEPS
    assert sum(int(t) for _, t in steps) <= 300


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path_factory.mktemp("tmp")))
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=420,
                       cwd=ROOT)
    return r, out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dry_run_every_step_passes(dry_run):
    r, out = dry_run
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, summary + r.stdout[-6000:] + r.stderr[-2000:]
    steps = _summary_steps(summary)
    assert [n for n, _ in steps] == STEPS, summary  # every step ran, eager ones before the compiled ones
    assert all(rc == "rc=0" for _, rc in steps), summary
    assert re.search(r"step limits: (\d+) s", summary) and int(re.search(r"step limits: (\d+) s", summary)[1]) <= 300
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files


def test_dry_run_rows_are_json_lines_from_every_benchmark(dry_run):
    _, out = dry_run
    kernels = [r for r in _records(out / "kernels.jsonl") if r["record"] == "row"]
    assert {r["impl"] for r in kernels} == {"ref", "triton", "compiled"}  # eager step, then the compile step
    assert {r["op"] for r in kernels} == {"gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked"}
    tp = _records(out / "throughput.jsonl")
    assert [r["record"] for r in tp].count("run") == 4  # four steps appended to one file
    rows = {(r["mode"], r["impl"]): r["status"] for r in tp if r["record"] == "row"}
    for key in [("pretrain", "ref"), ("pretrain", "fused"), ("finetune", "ref"), ("finetune", "fused"),
                ("pretrain", "ref_compile"), ("pretrain", "fused_compile")]:
        assert rows[key] == "ok", (key, rows)
    assert rows[("pretrain", "timm")] in ("ok", "skipped: timm not installed (pip install timm)")
    assert any(r["record"] == "row" for r in _records(out / "patchify.jsonl"))
