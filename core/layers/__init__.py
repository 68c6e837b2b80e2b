"""Sequence layers on (batch, L, d_model) with mamba_ssm's names, layouts and streaming API.

* ``Mamba``, ``Mamba2``: load mamba_ssm / Hugging Face ``MambaMixer`` / ``Mamba2Mixer`` weights.
* ``S4D``: diagonal SSM with FFT convolution and a recurrent step.
* ``BiMamba`` (Vim-style), ``Hydra`` (quasiseparable): bidirectional, no streaming.
* ``Block``, ``GatedMLP``, ``SSMBackbone``, ``make_mixer``: residual stacks of any mixer.
* ``flatten_scans``, ``merge_scans``, ``scan_permutations``, ``MultiScanMamba``: N-d scan orders.
* ``CompanionSSM``, ``ClosedLoopCompanionSSM``: SpaceTime's companion-matrix SSMs (FFT kernel, closed loop).
* ``InferenceParams``: streaming state (``forward(x, inference_params)`` / ``step``).

Ragged batches: every sequence layer's ``forward`` also takes ``seq_idx=`` / ``cu_seqlens=``
(packed sequences, mamba_ssm-style) or ``lengths=`` (padded batch); see ``core.layers.ragged``.

Every layer has a ``backend`` attribute passed to ``core.ops`` ("auto", "reference", ...);
``set_backend(model, "reference")`` sets it everywhere.
"""
from .bidirectional import BiMamba, Hydra
from .block import MIXERS, Block, GatedMLP, SSMBackbone, make_mixer, mixer_class
from .companion import ClosedLoopCompanionSSM, CompanionSSM, companion_kernel, companion_matrix
from .inference import InferenceParams, set_backend
from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNorm, RMSNormGated
from .s4d import S4D, S4DKernel
from .scan_orders import MultiScanMamba, expand_orders, flatten_scans, merge_scans, scan_permutations

__all__ = [
    "BiMamba", "Hydra", "MIXERS", "Block", "GatedMLP", "SSMBackbone", "make_mixer", "mixer_class",
    "InferenceParams", "set_backend", "Mamba", "Mamba2", "RMSNorm", "RMSNormGated", "S4D",
    "S4DKernel", "MultiScanMamba", "expand_orders", "flatten_scans", "merge_scans",
    "scan_permutations", "CompanionSSM", "ClosedLoopCompanionSSM", "companion_kernel",
    "companion_matrix",
]
