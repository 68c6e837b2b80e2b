"""bench/gpu_check.sh on a machine without CUDA: says so and exits 0 (the GPU path runs on GPU machines)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check instead")
def test_gpu_check_without_cuda_exits_0(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_NVIDIA_SMI=str(tmp_path / "no-nvidia-smi"),
               CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no CUDA GPU on this machine" in r.stdout and "nothing to check" in r.stdout
    assert "install" not in r.stdout                    # stopped before installing anything
