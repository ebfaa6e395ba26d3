"""Packaging entry point. Metadata lives in pyproject.toml; this file only adds the optional C++ build.

``maskspec_fast._C`` (csrc/, CMakeLists.txt) is built with CMake during ``pip install .`` and
``pip install -e .`` (editable installs get the ``.so`` copied next to the sources, where
``import maskspec_fast._C`` finds it). The extension is optional: without CMake or a C++ compiler, or when the
build fails, the package installs WITHOUT it and prints why (pip shows it with ``-v``); the fused ops then use
the PyTorch references and say so once when first asked.

Environment:
  MAX_JOBS=N                parallel compile jobs (default: number of CPUs)
  MASKSPEC_NO_EXT=1         do not build the extension
  MASKSPEC_EXT_REQUIRED=1   fail the install when the extension cannot be built (CI of the extension itself)
  MASKSPEC_CMAKE=/path      the cmake executable (default: ``cmake`` on PATH)
  MASKSPEC_CMAKE_ARGS="..." extra configure arguments, e.g. ``-DMASKSPEC_NATIVE=ON`` or ``-DMASKSPEC_OPENMP=OFF``
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    # stderr, so it is not mixed into anything a build frontend parses from stdout
    print(f"maskspec_fast setup: {msg}", file=sys.stderr, flush=True)


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles; ``optional`` so setuptools tolerates its absence."""

    def __init__(self, name: str, source_dir: str = ROOT):
        # `depends` (relative to the project root) also puts the C++ sources and CMakeLists.txt into the sdist
        depends = ["CMakeLists.txt"] + sorted(
            os.path.relpath(p, source_dir) for p in glob.glob(os.path.join(source_dir, "csrc", "*.[ch]*"))
        )
        super().__init__(name, sources=[], depends=depends, optional=True)
        self.source_dir = source_dir


class SkipExtension(Exception):
    """Why the extension is not built (a missing tool, a failed step)."""


class CMakeBuild(build_ext):
    def build_extensions(self) -> None:
        built = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
                built.append(ext)
            except (SkipExtension, OSError, subprocess.SubprocessError) as e:
                if _flag("MASKSPEC_EXT_REQUIRED"):
                    raise
                _say(f"installing WITHOUT the C++ extension {ext.name}: {e}")
                stale = self.get_ext_fullpath(ext.name)
                if os.path.exists(stale):  # never ship a binary left over from an earlier build in build/
                    os.remove(stale)
                _say("the fused ops will fall back to the PyTorch reference; see maskspec_fast.backends")
        # later steps (copy into the source tree for editable installs, wheel contents) see only what was built
        self.extensions = built

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        if _flag("MASKSPEC_NO_EXT"):
            raise SkipExtension("MASKSPEC_NO_EXT is set")
        cmake = os.environ.get("MASKSPEC_CMAKE") or shutil.which("cmake")
        if not cmake or not (os.path.isfile(cmake) or shutil.which(cmake)):
            raise SkipExtension(f"CMake not found ({cmake or 'no cmake on PATH'}); install cmake >= 3.18")
        if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++", "cl")):
            raise SkipExtension("no C++ compiler found (set CXX, or install g++ / clang++)")

        target = os.path.abspath(self.get_ext_fullpath(ext.name))  # e.g. build/lib.../maskspec_fast/_C.cpython-*.so
        out_dir = os.path.dirname(target)
        build_dir = os.path.join(os.path.abspath(self.build_temp), "cmake")
        os.makedirs(out_dir, exist_ok=True)
        os.makedirs(build_dir, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        configure = [
            cmake,
            "-S", ext.source_dir,
            "-B", build_dir,
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir}/out",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{cfg.upper()}={build_dir}/out",
        ]
        try:
            import pybind11

            configure.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass  # CMakeLists.txt tries `python -m pybind11 --cmakedir`, then CMake's own search
        configure += shlex.split(os.environ.get("MASKSPEC_CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        compile_ = [cmake, "--build", build_dir, "--config", cfg, "--parallel", jobs]

        for step, cmd in (("configure", configure), ("build", compile_)):
            _say(f"{step}: {' '.join(shlex.quote(c) for c in cmd)}")
            proc = subprocess.run(cmd, cwd=ext.source_dir, capture_output=True, text=True)
            sys.stderr.write(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
                raise SkipExtension(f"CMake {step} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))

        name = ext.name.rsplit(".", 1)[-1]
        found = sorted(glob.glob(os.path.join(build_dir, "out", f"{name}.*")))
        found = [f for f in found if f.endswith((".so", ".pyd", ".dylib"))]
        if not found:
            raise SkipExtension(f"CMake built nothing named {name}.* in {build_dir}/out")
        shutil.copyfile(found[0], target)
        _say(f"built {ext.name} -> {target}")


setup(ext_modules=[CMakeExtension("maskspec_fast._C")], cmdclass={"build_ext": CMakeBuild})
