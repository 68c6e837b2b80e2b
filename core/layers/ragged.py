"""Ragged batches for the layers: packed rows (``seq_idx`` / ``cu_seqlens``) or a padded batch (``lengths``).

Every sequence layer's ``forward`` takes, besides (batch, L, d_model) input, one of
* ``seq_idx`` (batch, L) int: packed sequences, mamba_ssm-style (each row holds several
  sequences back to back; ``seq_idx`` numbers them);
* ``cu_seqlens`` (n + 1,) int: the same for a single packed row (batch 1);
* ``lengths`` (batch,) int: a padded batch, sequence b occupies positions ``[0, lengths[b])``.
Every real position then gets exactly what running its sequence alone would give;
outputs at padded positions are zero.
"""
from __future__ import annotations

from typing import Optional

import torch

from core.ops.varlen import (check_seq_idx, gather_time, keep_mask, lengths_mask, segment_reverse_index,
                             seq_idx_from_cu_seqlens, seq_idx_from_lengths)


class Ragged:
    """Where the sequences of a (batch, L, ...) input are.

    Attributes:
        seq_idx: (batch, L) int32 for the kernels, or None for a padded batch (causal
            layers need none there: padding only ever follows the real positions).
        mask: (batch, L) bool, True on real positions (padded batch), else None.
        lengths: (batch,) int64 for a padded batch, else None.
    """

    def __init__(self, seq_idx: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                 lengths: Optional[torch.Tensor], seqlen: int):
        self.seq_idx, self.mask, self.lengths, self.seqlen = seq_idx, mask, lengths, seqlen
        self._rev = None

    @property
    def packed(self) -> bool:
        return self.seq_idx is not None

    def kwargs(self) -> dict:
        """The keyword arguments that hand this layout on to another layer."""
        return {"seq_idx": self.seq_idx} if self.packed else {"lengths": self.lengths}

    def reverse_index(self) -> torch.Tensor:
        """(batch, L) index flipping every sequence within its own span (padding stays behind)."""
        if self._rev is None:
            sq = self.seq_idx if self.packed else seq_idx_from_lengths(self.lengths, self.seqlen)
            self._rev = segment_reverse_index(sq)
        return self._rev

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, L, ...) with every sequence reversed in place (its own inverse)."""
        return gather_time(x, self.reverse_index())

    def starts(self) -> torch.Tensor:
        """(batch, L) bool: True at the first position of every sequence."""
        if self.packed:
            s = ~keep_mask(self.seq_idx)
        else:
            s = torch.zeros(self.mask.shape, dtype=torch.bool, device=self.mask.device)
        s[:, 0] = True
        return s

    def zero_padding(self, y: torch.Tensor) -> torch.Tensor:
        """y (batch, L, ...) with padded positions set to zero (unchanged when packed)."""
        if self.mask is None:
            return y
        m = self.mask.reshape(self.mask.shape + (1,) * (y.dim() - 2))
        return torch.where(m, y, torch.zeros((), dtype=y.dtype, device=y.device))


def ragged(x: torch.Tensor, seq_idx=None, cu_seqlens=None, lengths=None) -> Optional[Ragged]:
    """The :class:`Ragged` layout of ``x`` (batch, L, ...) from the forward's keywords; None for
    a plain batch. One clear error for contradictory or malformed arguments."""
    if seq_idx is None and cu_seqlens is None and lengths is None:
        return None
    batch, L = x.shape[:2]
    if lengths is not None:
        if seq_idx is not None or cu_seqlens is not None:
            raise ValueError("give either lengths (a padded batch) or seq_idx/cu_seqlens (packed rows), not both")
        lengths = torch.as_tensor(lengths, device=x.device)
        if tuple(lengths.shape) != (batch,):
            raise ValueError(f"lengths must be (batch,)=({batch},); got {tuple(lengths.shape)}")
        mask = lengths_mask(lengths, L)
        return Ragged(None, mask, lengths.long(), L)
    if seq_idx is None:
        if batch != 1:
            raise ValueError(f"cu_seqlens describes one packed row (batch 1); got batch {batch} "
                             "(use seq_idx for several packed rows)")
        seq_idx = seq_idx_from_cu_seqlens(torch.as_tensor(cu_seqlens, device=x.device), L)
    return Ragged(check_seq_idx(seq_idx.to(x.device), batch, L), None, None, L)


def streams_lengths(r: Optional[Ragged], inference_params) -> bool:
    """True for a padded batch being streamed: each row's cached state must end at its length."""
    return r is not None and inference_params is not None and not r.packed


def varlen_prefill(layer, x, inference_params, cu_seqlens):
    """mamba_ssm's varlen prefill: one packed row (1, T, d) with ``cu_seqlens`` and
    ``inference_params`` caches one state per sequence (cache batch n). Runs the sequences
    as a padded batch with ``lengths`` and packs the output back: (1, T, d)."""
    from core.ops.varlen import packed_to_padded
    padded, lens = packed_to_padded(x, cu_seqlens)
    y = layer(padded, inference_params, lengths=lens)
    return y[lengths_mask(lens, padded.shape[1])][None]
