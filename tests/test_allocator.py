"""The allocator tuning keeps freed large blocks for reuse: without it, each training step of a
wide layer page-faults its gradient and SGD temporaries in again (a third of a full-width Digits
step's wall time went to the kernel)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Ten SGD steps (momentum, weight decay) of the DigitModel's widest layer, 6272 x 2048 (51 MB, above
# glibc's 32 MiB mmap ceiling); prints the minor page faults of the steps after two warm-up steps.
PROBE = """
import resource, sys, torch
from splitmix.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
torch.manual_seed(0)
layer = torch.nn.Linear(6272, 2048)
opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
x = torch.randn(32, 6272)
def step():
    opt.zero_grad(set_to_none=True)
    layer(x).sum().backward()
    opt.step()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_training_steps_reuse_freed_blocks_instead_of_faulting_them_in():
    gradient_pages = 6272 * 2048 * 4 // 4096
    assert _faults("default") > 10 * gradient_pages  # every step faults its 51 MB blocks in
    # tuned: the heap blocks are reused; the heap may grow a few times while it settles (up to two
    # blocks seen), never once per step (about 20 blocks untuned)
    assert _faults("tuned") < 5 * gradient_pages
