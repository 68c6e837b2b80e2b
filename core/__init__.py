"""Shared state-space-model kernels, layers and training engine."""

__version__ = "0.1.0"
