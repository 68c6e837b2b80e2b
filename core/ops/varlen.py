"""Ragged (variable-length) sequences: packing helpers in mamba_ssm's conventions.

Several sequences of lengths ``L_i`` are *packed* back to back into one row
(1, T = sum L_i, ...) and told apart by

* ``cu_seqlens`` (n + 1,) int32: cumulative lengths ``[0, L_0, L_0 + L_1, ..., T]``, and
* ``seq_idx`` (batch, T) int32: the index of the sequence each position belongs to
  (``[0]*L_0 + [1]*L_1 + ...``), what ``ssd_scan``/``selective_scan``/``causal_conv1d``
  take: states reset wherever ``seq_idx`` changes and the conv never looks across.

A *padded* batch (B, L_max, ...) plus ``lengths`` (B,) is the other layout; padding
sits at the end of each row. Everything here is plain torch (any device).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch


def _lengths_tensor(lengths, device=None) -> torch.Tensor:
    t = torch.as_tensor(lengths, device=device)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor (batch,); got {tuple(t.shape)} {t.dtype}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"lengths must be >= 0; got {t.tolist()}")
    return t.long()


def cu_seqlens_from_lengths(lengths) -> torch.Tensor:
    """(n,) lengths -> (n + 1,) int32 ``cu_seqlens`` = [0, cumsum(lengths)]."""
    t = _lengths_tensor(lengths)
    return torch.cat([t.new_zeros(1), t.cumsum(0)]).to(torch.int32)


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(n + 1,) ``cu_seqlens`` -> (n,) int64 lengths."""
    cu = check_cu_seqlens(cu_seqlens)
    return (cu[1:] - cu[:-1]).long()


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
    """Validate ``cu_seqlens`` (n + 1,) (starts at 0, non-decreasing, ends at ``total``)."""
    cu = torch.as_tensor(cu_seqlens)
    if cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point:
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor (num_sequences + 1,); "
                         f"got {tuple(cu.shape)} {cu.dtype}")
    if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must start at 0 and never decrease; got {cu.tolist()[:8]}...")
    if total is not None and int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the packed sequence has {total} positions")
    return cu


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, seqlen: Optional[int] = None) -> torch.Tensor:
    """``cu_seqlens`` (n + 1,) -> ``seq_idx`` (1, T) int32 (mamba_ssm's packed layout).

    ``seqlen`` (default ``cu_seqlens[-1]``) must equal ``cu_seqlens[-1]``.
    """
    cu = check_cu_seqlens(cu_seqlens, seqlen)
    lens = (cu[1:] - cu[:-1]).long()
    idx = torch.repeat_interleave(torch.arange(lens.numel(), device=cu.device), lens)
    return idx.to(torch.int32)[None]


def seq_idx_from_lengths(lengths, seqlen: int) -> torch.Tensor:
    """Padded batch -> ``seq_idx`` (batch, seqlen) int32: 0 on the real positions, 1 on the padding.

    With it, a padded batch runs through the packed code paths: the padding is a
    sequence of its own, so nothing flows between it and the real positions.
    """
    t = _lengths_tensor(lengths)
    if t.numel() and int(t.max()) > seqlen:
        raise ValueError(f"lengths {t.tolist()} exceed the padded length {seqlen}")
    return (torch.arange(seqlen, device=t.device)[None] >= t[:, None]).to(torch.int32)


def lengths_mask(lengths, seqlen: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, seqlen) bool, True on real positions."""
    t = _lengths_tensor(lengths)
    if t.numel() and int(t.max()) > seqlen:
        raise ValueError(f"lengths {t.tolist()} exceed the padded length {seqlen}")
    return torch.arange(seqlen, device=t.device)[None] < t[:, None]


def check_seq_idx(seq_idx: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """``seq_idx`` as a contiguous (batch, seqlen) int32 tensor, or a clear error.

    A new sequence starts wherever ``seq_idx`` changes; the ids are renumbered 0, 1, ...
    along each row, so kernels that compare ids for equality and kernels that look for
    changes agree even when an id comes back later in a row (e.g. [0, 0, 1, 0]).
    """
    if seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool or seq_idx.is_complex():
        raise ValueError(f"seq_idx must be an integer tensor (batch, L); got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, seqlen):
        raise ValueError(f"seq_idx must be (batch, L)=({batch}, {seqlen}); got {tuple(seq_idx.shape)}")
    sq = seq_idx.to(torch.int32)
    out = torch.zeros_like(sq)
    out[:, 1:] = (sq[:, 1:] != sq[:, :-1]).cumsum(1, dtype=torch.int32)
    return out


def keep_mask(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, L) bool: False where a new sequence starts (``seq_idx[t] != seq_idx[t-1]``), else True.

    Position 0 keeps the incoming (initial) state: it belongs to the first sequence.
    """
    keep = torch.ones_like(seq_idx, dtype=torch.bool)
    keep[:, 1:] = seq_idx[:, 1:] == seq_idx[:, :-1]
    return keep


def segment_reverse_index(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, L) int64 index that reverses every run of equal ``seq_idx`` in place.

    ``x.gather(1, idx)`` flips each packed sequence within its own span (an
    involution: applying it twice gives ``x`` back). With a padded batch's
    ``seq_idx_from_lengths`` it flips the real part and leaves the padding at the end.
    """
    batch, L = seq_idx.shape
    pos = torch.arange(L, device=seq_idx.device).expand(batch, L)
    start = ~keep_mask(seq_idx)
    start[:, 0] = True
    end = torch.zeros_like(start)
    end[:, :-1] = start[:, 1:]
    end[:, -1] = True
    # first/last position of each position's run, by running max/min over the markers
    first = torch.where(start, pos, torch.zeros_like(pos)).cummax(1).values
    last_rev = torch.where(end.flip(1), pos, torch.zeros_like(pos)).cummax(1).values.flip(1)
    last = L - 1 - last_rev
    return first + last - pos


def gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, L, ...) reordered along time by ``idx`` (batch, L)."""
    shape = idx.shape + (1,) * (x.dim() - 2)
    return x.gather(1, idx.reshape(shape).expand(x.shape))


def pack_sequences(seqs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A list of (L_i, ...) tensors -> (packed (1, sum L_i, ...), cu_seqlens (n + 1,) int32).

    ``seq_idx_from_cu_seqlens(cu_seqlens)`` gives the matching ``seq_idx``.
    """
    if len(seqs) == 0:
        raise ValueError("pack_sequences: no sequences given")
    tail = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.shape[1:] != tail:
            raise ValueError(f"pack_sequences: sequence {i} has shape {tuple(s.shape)}, "
                             f"expected (L, {', '.join(map(str, tail))})")
    lens = torch.tensor([s.shape[0] for s in seqs], device=seqs[0].device)
    return torch.cat(list(seqs), dim=0)[None], cu_seqlens_from_lengths(lens)


def unpack_sequences(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> List[torch.Tensor]:
    """(1, T, ...) packed + cu_seqlens -> list of (L_i, ...) views."""
    if packed.shape[0] != 1:
        raise ValueError(f"unpack_sequences: packed tensors have batch 1; got {tuple(packed.shape)}")
    cu = check_cu_seqlens(cu_seqlens, packed.shape[1]).tolist()
    return [packed[0, a:b] for a, b in zip(cu[:-1], cu[1:])]


def padded_to_packed(x: torch.Tensor, lengths) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded batch (B, L_max, ...) + lengths (B,) -> (packed (1, sum lengths, ...), cu_seqlens)."""
    mask = lengths_mask(torch.as_tensor(lengths, device=x.device), x.shape[1])
    return x[mask][None], cu_seqlens_from_lengths(mask.sum(1))


def packed_to_padded(packed: torch.Tensor, cu_seqlens: torch.Tensor, max_len: Optional[int] = None,
                     pad_value: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1, T, ...) packed + cu_seqlens -> (padded (n, max_len, ...), lengths (n,) int64).

    ``max_len`` defaults to the longest sequence; padding is ``pad_value``.
    """
    if packed.shape[0] != 1:
        raise ValueError(f"packed_to_padded: packed tensors have batch 1; got {tuple(packed.shape)}")
    cu = check_cu_seqlens(cu_seqlens, packed.shape[1]).to(packed.device)
    lens = (cu[1:] - cu[:-1]).long()
    Lm = int(lens.max()) if max_len is None else int(max_len)
    if lens.numel() and int(lens.max()) > Lm:
        raise ValueError(f"packed_to_padded: a sequence of length {int(lens.max())} exceeds max_len {Lm}")
    mask = torch.arange(Lm, device=packed.device)[None] < lens[:, None]
    out = packed.new_full((lens.numel(), Lm) + tuple(packed.shape[2:]), pad_value)
    out[mask] = packed[0]
    return out, lens


def segments(seq_idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The runs of equal ``seq_idx`` (batch, L): (row, start, length), each (n_runs,) int64."""
    start = ~keep_mask(seq_idx)
    start[:, 0] = True
    row, st = start.nonzero(as_tuple=True)
    L = seq_idx.shape[1]
    flat = row * L + st
    nxt = torch.cat([flat[1:], flat.new_tensor([seq_idx.numel()])])
    # a run ends where the next one starts, or at the end of its row
    end = torch.minimum(nxt, (row + 1) * L) - row * L
    return row, st, end - st


def seq_idx_to_padded(x: torch.Tensor, seq_idx: torch.Tensor):
    """Packed rows (batch, L, ...) with ``seq_idx`` -> (padded (n_runs, L_max, ...), lengths, index).

    ``index`` (n_runs, L_max) holds each padded position's flat position ``b*L + t``
    (-1 on padding), for :func:`padded_to_seq_idx`.
    """
    batch, L = seq_idx.shape
    row, st, ln = segments(seq_idx)
    Lm = int(ln.max())
    t = torch.arange(Lm, device=x.device)[None]
    mask = t < ln[:, None]
    index = torch.where(mask, row[:, None] * L + st[:, None] + t, torch.full_like(t, -1))
    flat = x.reshape((batch * L,) + tuple(x.shape[2:]))
    out = x.new_zeros((ln.numel(), Lm) + tuple(x.shape[2:]))
    out[mask] = flat[index[mask]]
    return out, ln, index


def padded_to_seq_idx(y: torch.Tensor, index: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`seq_idx_to_padded`: padded (n_runs, L_max, ...) -> (batch, seqlen, ...)."""
    mask = index >= 0
    out = y.new_zeros((batch * seqlen,) + tuple(y.shape[2:]))
    out = out.index_copy(0, index[mask], y[mask])
    return out.reshape((batch, seqlen) + tuple(y.shape[2:]))
