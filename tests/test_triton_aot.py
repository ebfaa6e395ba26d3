"""Every Triton kernel compiled ahead of time for sm_80 and sm_90, at MaskSpec-base shapes and each dtype, on CPU.

The compilation (Triton's full NVIDIA pipeline down to a cubin with its bundled ptxas, see
:mod:`maskspec_fast.ops.triton_aot`) runs once per session in a subprocess with ``TRITON_INTERPRET=0`` (this
process has the interpreter on, whose ``@triton.jit`` objects cannot be compiled). Asserted: every launch
compiles, with no register spills, within the per-block register and shared-memory limits of the card. The
registers / shared memory table is printed (``pytest -s`` or in the failure message).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskspec_fast.ops import _triton_utils

pytestmark = pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="triton not installed")

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("sm_80", "sm_90")
DTYPES = ("fp32", "bf16", "fp16")
# Per-block limits (CUDA programming guide, compute capability tables): 64K 32-bit registers per block on both;
# dynamic shared memory per block with opt-in 163 KB (A100, sm_80) and 227 KB (H100, sm_90)
REGS_PER_BLOCK = 65536
SMEM_PER_BLOCK = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def _ptxas_present() -> bool:
    import triton

    try:
        tool = triton.knobs.nvidia.ptxas
        return tool is not None and os.path.exists(tool.path)
    except Exception:  # the knob raises when neither the bundled binary nor TRITON_PTXAS_PATH exists
        return False


@pytest.fixture(scope="module")
def aot(tmp_path_factory) -> dict:
    if not _ptxas_present():
        pytest.skip("no ptxas binary (neither Triton's bundled one nor TRITON_PTXAS_PATH): cannot build cubins")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton_cache")),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "maskspec_fast.ops.triton_aot", "--arch", "80,90", "--dtypes", ",".join(DTYPES),
         "--json", "-"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )
    print(r.stderr)  # the table
    if not r.stdout.strip():
        pytest.fail(f"triton_aot produced no JSON (rc {r.returncode}):\n{r.stderr[-4000:]}")
    payload = json.loads(r.stdout.strip().splitlines()[-1])
    payload["table"] = r.stderr
    payload["rc"] = r.returncode
    return payload


def test_every_launch_compiles_for_sm80_and_sm90(aot):
    failed = [f"{r['kernel']} [{r['case']}, {r['dtype']}, {r['arch']}]: {r['error']}" for r in aot["results"]
              if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert aot["rc"] == 0, aot["table"]
    assert {r["arch"] for r in aot["results"]} == set(ARCHS)


def test_every_kernel_covered_at_every_dtype_and_arch(aot):
    """A new ``*_kernel`` that the AOT launch list does not exercise fails here instead of escaping the check."""
    kernels = {n for names in aot["jit_functions"].values() for n in names if n.endswith("_kernel")}
    assert len(kernels) >= 7, aot["jit_functions"]  # gathers (4), masked MSE, patchify, unpatchify
    done = {(r["kernel"], r["dtype"], r["arch"]) for r in aot["results"] if r["ok"]}
    missing = [(k, d, a) for k in sorted(kernels) for d in DTYPES for a in ARCHS if (k, d, a) not in done]
    assert not missing, f"kernels not compiled: {missing}"


def test_no_register_spills_and_within_block_limits(aot):
    bad = []
    for r in aot["results"]:
        tag = f"{r['kernel']} [{r['case']}, {r['dtype']}, {r['arch']}]"
        if r["registers"] is None or r["spill_stores"] is None:
            bad.append(f"{tag}: ptxas -v output not parsed")
            continue
        if r["spill_stores"] or r["spill_loads"]:
            bad.append(f"{tag}: spills {r['spill_stores']} B stored / {r['spill_loads']} B loaded "
                       f"({r['registers']} registers)")
        if r["registers"] * r["num_warps"] * 32 > REGS_PER_BLOCK:
            bad.append(f"{tag}: {r['registers']} registers x {r['num_warps'] * 32} threads > {REGS_PER_BLOCK}")
        if r["shared_bytes"] > SMEM_PER_BLOCK[r["arch"]]:
            bad.append(f"{tag}: {r['shared_bytes']} B shared memory > {SMEM_PER_BLOCK[r['arch']]}")
    assert not bad, "\n".join(bad) + "\n" + aot["table"]


def test_ptxas_log_parser_reads_spills():
    """The spill check above is only as good as this parser: a log with spills must show them."""
    from maskspec_fast.ops.triton_aot import parse_ptxas_log

    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n"
           "    48 bytes stack frame, 40 bytes spill stores, 36 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    assert parse_ptxas_log(log) == {"registers": 255, "stack_bytes": 48, "spill_stores": 40, "spill_loads": 36}
    assert parse_ptxas_log("garbage")["registers"] is None
