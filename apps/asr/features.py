"""80-dim log-mel features (25 ms window, 10 ms hop) with ``torch.stft`` and our own Slaney mel
filterbank (librosa's default), an exact streaming version, global CMVN and SpecAugment."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .data import SAMPLE_RATE


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = 512, n_mels: int = 80, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """Triangular Slaney-normalised filters ``(n_mels, n_fft // 2 + 1)`` (float64), librosa's default."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


class LogMel(nn.Module):
    """Waveform ``(B, n)`` or ``(n,)`` at 16 kHz -> log-mel ``(B, T, n_mels)`` or ``(T, n_mels)``.

    Frames are centred (``n_fft // 2`` zeros each side, librosa's ``pad_mode='constant'``), so
    ``T = n // hop + 1``; power spectrum through the mel filters, then ``log(x + 1e-6)``.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, win_ms: float = 25.0,
                 hop_ms: float = 10.0, n_fft: int = 512, log_eps: float = 1e-6):
        super().__init__()
        self.sample_rate, self.n_mels, self.n_fft = sample_rate, n_mels, n_fft
        self.win_length = int(round(sample_rate * win_ms / 1000))
        self.hop = int(round(sample_rate * hop_ms / 1000))
        self.log_eps = log_eps
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.register_buffer("fbank", torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)).float(),
                             persistent=False)

    def frames_from_padded(self, padded: torch.Tensor) -> torch.Tensor:
        """Log-mel of every complete frame of an already padded signal ``(B, n)`` -> ``(B, T, n_mels)``."""
        if padded.shape[-1] < self.n_fft:
            return padded.new_zeros(padded.shape[0], 0, self.n_mels)
        spec = torch.stft(padded, self.n_fft, hop_length=self.hop, win_length=self.win_length,
                          window=self.window.to(padded.dtype), center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                            # (B, F, T)
        mel = torch.matmul(self.fbank.to(padded.dtype), power)             # (B, n_mels, T)
        return torch.log(mel + self.log_eps).transpose(1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        single = wav.dim() == 1
        x = wav[None] if single else wav
        pad = self.n_fft // 2
        out = self.frames_from_padded(nn.functional.pad(x, (pad, pad)))
        return out[0] if single else out

    def num_frames(self, n_samples: int) -> int:
        """Frames for ``n_samples`` samples (centred framing)."""
        return n_samples // self.hop + 1


class StreamingLogMel:
    """Chunk-by-chunk :class:`LogMel`: ``accept(samples)`` returns the frames completed so far,
    ``flush()`` the last ones; the concatenation equals ``LogMel(whole signal)``."""

    def __init__(self, logmel: LogMel):
        self.m = logmel
        self.buf = torch.zeros(logmel.n_fft // 2)     # the left centring pad
        self.done = False

    def _emit(self) -> torch.Tensor:
        n = self.buf.shape[0]
        if n < self.m.n_fft:
            return torch.zeros(0, self.m.n_mels)
        t = (n - self.m.n_fft) // self.m.hop + 1
        with torch.no_grad():
            out = self.m.frames_from_padded(self.buf[None, : (t - 1) * self.m.hop + self.m.n_fft])[0]
        self.buf = self.buf[t * self.m.hop:]
        return out

    def accept(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Float samples at 16 kHz -> new frames ``(t, n_mels)`` (t may be 0)."""
        x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        self.buf = torch.cat([self.buf, x])
        return self._emit()

    def flush(self) -> torch.Tensor:
        """The frames that needed the right centring pad (end of stream)."""
        if self.done:
            return torch.zeros(0, self.m.n_mels)
        self.done = True
        self.buf = torch.cat([self.buf, torch.zeros(self.m.n_fft // 2)])
        return self._emit()


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, num_freq_mask: int = 2, freq_mask_width: int = 27,
                 num_time_mask: int = 10, time_mask_ratio: float = 0.05,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ESPnet's SpecAugment masks on ``x (B, T, F)`` (normalised features, masked to 0): ``num_freq_mask``
    bands of width U(0, ``freq_mask_width``), ``num_time_mask`` spans of width U(0, ``time_mask_ratio`` *
    length) per utterance. Time warping is not applied. Returns a new tensor."""
    B, T, F = x.shape
    x = x.clone()
    dev = x.device
    ar_f = torch.arange(F, device=dev)
    ar_t = torch.arange(T, device=dev)
    for _ in range(num_freq_mask):
        w = torch.randint(0, freq_mask_width + 1, (B, 1), generator=generator).to(dev)
        s = (torch.rand(B, 1, generator=generator).to(dev) * (F - w).clamp(min=1)).long()
        m = (ar_f[None] >= s) & (ar_f[None] < s + w)                        # (B, F)
        x = x.masked_fill(m[:, None, :], 0.0)
    max_w = (lengths.float() * time_mask_ratio).long().to(dev)              # (B,)
    for _ in range(num_time_mask):
        w = (torch.rand(B, generator=generator).to(dev) * (max_w + 1).float()).long()[:, None]
        s = (torch.rand(B, 1, generator=generator).to(dev) * (lengths.to(dev)[:, None] - w).clamp(min=1)).long()
        m = (ar_t[None] >= s) & (ar_t[None] < s + w)                        # (B, T)
        x = x.masked_fill(m[:, :, None], 0.0)
    return x


def compute_cmvn(feats) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global mean and std ``(n_mels,)`` over all frames of an iterable of ``(T, n_mels)`` tensors
    (float64 sums, one pass)."""
    n, s, s2 = 0, None, None
    for f in feats:
        f = f.double()
        s = f.sum(0) if s is None else s + f.sum(0)
        s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
        n += f.shape[0]
    if not n:
        raise ValueError("no frames to compute CMVN")
    mean = s / n
    std = (s2 / n - mean * mean).clamp(min=1e-10).sqrt().clamp(min=1e-3)
    return mean.float(), std.float()
