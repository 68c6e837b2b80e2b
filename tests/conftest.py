"""Suite-wide settings."""
import os

import torch

# Under pytest-xdist each worker already owns a core: more torch threads per
# worker oversubscribe the CPU and slow every test several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
