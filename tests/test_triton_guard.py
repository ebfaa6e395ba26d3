"""Device guards around the Triton launches: a launch runs on the current CUDA device, so every launcher must
make its tensors' device current first (:func:`maskspec_fast.ops._triton_utils.on_device`).

On CPU the CUDA device switch is mocked: ``torch.cuda._exchange_device`` (what ``torch.cuda.device`` calls) is
replaced by a recorder, and each launch is recorded (not run) with the guard state at that moment.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from maskspec_fast.ops import _triton_utils
from maskspec_fast.ops._triton_utils import on_device

pytestmark = pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="triton not installed")


class _FakeCuda:
    """Current-device bookkeeping standing in for the CUDA runtime."""

    def __init__(self, current: int = 0):
        self.current, self.calls = current, []

    def exchange(self, idx: int) -> int:
        self.calls.append(idx)
        prev, self.current = self.current, (idx if idx >= 0 else self.current)
        return prev


def test_on_device_makes_the_tensors_gpu_current_and_restores(monkeypatch):
    fake = _FakeCuda(current=0)
    monkeypatch.setattr(torch.cuda, "_exchange_device", fake.exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", fake.exchange)
    t = SimpleNamespace(device=torch.device("cuda", 1))  # a tensor on the second GPU
    with on_device(t):
        assert fake.current == 1
    assert fake.current == 0
    assert fake.calls == [1, 0]


def test_on_device_is_a_no_op_for_cpu_tensors(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "_exchange_device", fake.exchange)
    with on_device(torch.zeros(1)):
        pass
    assert fake.calls == []


def test_every_launch_runs_inside_a_guard_on_one_of_its_tensors(monkeypatch):
    """All launchers (every kernel, every constexpr branch the model uses): at the moment of each launch a guard
    is open, and it was opened on a tensor the kernel is given (so its device is the launch's)."""
    from maskspec_fast.ops import triton_aot, triton_gather, triton_masked_mse, triton_patchify

    open_guards: list[torch.Tensor] = []

    @contextlib.contextmanager
    def spy(t):
        open_guards.append(t)
        try:
            yield
        finally:
            open_guards.pop()

    for mod in (triton_gather, triton_masked_mse, triton_patchify):
        monkeypatch.setattr(mod, "on_device", spy)
    seen = []

    def at_launch(launch):
        assert open_guards, f"{launch.kernel} ({launch.case}) launched outside a device guard"
        guard = open_guards[-1]
        assert any(a is guard for a in launch.args), f"{launch.kernel}: guard on a tensor the kernel is not given"
        seen.append(launch.kernel)

    launches = triton_aot.model_launches("tiny", batch=2, dtypes=["fp32"], frames=64, on_launch=at_launch)
    kernels = {n for names in triton_aot.jit_functions().values() for n in names if n.endswith("_kernel")}
    assert len(launches) == len(seen) > 0
    assert set(seen) == kernels


@pytest.mark.gpu
def test_launch_on_second_gpu_while_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from maskspec_fast.ops.gather import gather_visible_ref
    from maskspec_fast.ops.triton_gather import gather_visible

    dev = torch.device("cuda", 1)
    x = torch.randn(2, 31, 40, device=dev)
    ids = torch.argsort(torch.rand(2, 31, device=dev), dim=1)[:, :7]
    torch.cuda.set_device(0)
    torch.testing.assert_close(gather_visible(x, ids), gather_visible_ref(x, ids), atol=0, rtol=0)


def test_one_dispatch_rule_for_every_fast_op(monkeypatch):
    """backend_for is the rule: CUDA -> triton, CPU -> C++ for ops that have it (reference when not built),
    the interpreter for the others under TRITON_INTERPRET=1, else the reference."""
    from maskspec_fast.ops import _triton_utils as tu

    cpu = torch.empty(1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tu.backend_for(cpu, cpp=True) == "cpp" and tu.backend_for(cpu, cpp=False) == "reference"
    assert tu.backend_for(cpu) == ("triton" if tu.HAS_TRITON else "reference") and tu.use_triton(cpu) == tu.HAS_TRITON
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert tu.backend_for(cpu) == "reference" and not tu.use_triton(cpu)
    assert tu.backend_for(torch.empty(1, device="meta")) == "reference"
