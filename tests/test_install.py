"""Packaging: a wheel built from a clean copy of the working tree carries maskspec_fast._C (and the .so it
carries loads and computes), and without CMake the wheel still builds, without the extension, saying why."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "build", "dist", ".venv", "venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")


def _tree_files() -> list[Path]:
    """Tracked and new (not ignored) files, as a fresh checkout plus uncommitted work would have them."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode()
        return [ROOT / f for f in out.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy everything but build output
        return [
            p for p in ROOT.rglob("*")
            if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)
            and not p.name.endswith((".so", ".pyd", ".pyc")) and ".egg-info" not in str(p)
        ]


@pytest.fixture
def clean_copy(tmp_path) -> Path:
    dst = tmp_path / "maskspec_fast_src"
    for f in _tree_files():
        target = dst / f.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    assert not list(dst.rglob("_C*.so")), "the copy must not carry a prebuilt extension"
    return dst


def _wheel(src: Path, out: Path, **env: str) -> tuple[Path, str]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(src)]
    # CI exports MASKSPEC_EXT_REQUIRED=1 for its own install; these builds set the policy they test themselves.
    base = {k: v for k, v in os.environ.items() if k != "MASKSPEC_EXT_REQUIRED"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**base, "MAX_JOBS": "2", **env})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("maskspec_fast-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


def test_wheel_contains_working_extension(clean_copy, tmp_path):
    wheel, log = _wheel(clean_copy, tmp_path / "wheels")
    names = zipfile.ZipFile(wheel).namelist()
    so = [n for n in names if n.startswith("maskspec_fast/_C") and n.endswith(".so")]
    assert so, f"no maskspec_fast/_C*.so in {wheel.name}: {names}\n{log[-3000:]}"
    assert "maskspec_fast/ops/patchify_fused.py" in names
    # the .so from the wheel (not the one in the source tree) loads and runs
    zipfile.ZipFile(wheel).extract(so[0], tmp_path / "x")
    code = (
        "import importlib.util, sys, torch; from torch.utils.dlpack import to_dlpack as dl\n"
        f"spec = importlib.util.spec_from_file_location('maskspec_fast._C', {str(tmp_path / 'x' / so[0])!r})\n"
        "C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)\n"
        "x = torch.arange(2 * 32 * 40, dtype=torch.float32).reshape(2, 32, 40); out = torch.empty(2, 4, 256)\n"
        "C.patchify(dl(x), 16, dl(out))\n"
        "ref = x[:, :, :32].reshape(2, 2, 16, 2, 16).permute(0, 1, 3, 2, 4).reshape(2, 4, 256)\n"
        "assert torch.equal(out, ref); print('ok', C.has_openmp)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_wheel_without_cmake_installs_without_extension(clean_copy, tmp_path):
    # a binary left in build/ by an earlier successful build must not be shipped either
    plat = f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    stale = clean_copy / "build" / plat / "maskspec_fast" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    wheel, log = _wheel(clean_copy, tmp_path / "wheels", MASKSPEC_CMAKE=str(tmp_path / "no-such-cmake"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "/_C" in n], names
    assert "maskspec_fast/ops/patchify_fused.py" in names
    assert "installing WITHOUT the C++ extension" in log and "CMake not found" in log
    assert not stale.exists()


def test_sdist_carries_the_cpp_sources(clean_copy, tmp_path):
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'sdist')!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=clean_copy, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (sdist,) = (tmp_path / "sdist").glob("maskspec_fast-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"CMakeLists.txt", "setup.py", "csrc/patchify.cpp", "csrc/dlpack_min.h", "csrc/half.h"} <= names, names
