"""A worker refuses to start in an environment that would let checkpoints unpickle code."""

from __future__ import annotations

import pytest

from tests.support.processes import wait_until

pytestmark = [pytest.mark.stack]


def test_a_worker_refuses_to_start_with_unsafe_torch_loading(workers):
    worker = workers("unsafe", wait=False, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")

    wait_until(lambda: not worker.alive(), timeout=60, message="the worker to exit")
    assert worker.popen.returncode != 0
    assert "refusing to start: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set" in worker.log()
    assert " ready." not in worker.log()
