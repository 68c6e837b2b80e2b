"""Shared state-space-model kernels, layers and training engine."""

__version__ = "0.2.0"
