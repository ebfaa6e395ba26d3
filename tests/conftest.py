"""Test setup: Triton kernels run in the interpreter on CPU (set before triton is imported anywhere), fresh
random inputs each run (seeded from the clock, printed so a failure can be replayed), GPU tests skipped on CPU."""
import os
import random
import time
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

_SEED = int(os.environ.get("MASKSPEC_TEST_SEED", time.time_ns() % 2**31))


def pytest_report_header(config):
    return f"maskspec_fast test seed: {_SEED} (replay with MASKSPEC_TEST_SEED={_SEED})"


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = (_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
