"""S4D: diagonal state-space layer (Gu et al. 2022) with FFT convolution and a recurrent step."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from core.ops.varlen import padded_to_seq_idx, seq_idx_to_padded

from .inference import InferenceParams, get_states_from_cache
from .ragged import ragged


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class S4DKernel(nn.Module):
    """Diagonal SSM kernel with M = d_state // 2 conjugate-pair modes (S4's ``S4DKernel`` names).

    ``A = -exp(log_A_real) + i A_imag`` (H, M), ``C`` stored as real view (H, M, 2), step
    ``exp(log_dt)`` (H,). Zero-order hold: ``dA = exp(dt A)``, ``dB = (dA - 1) / A``, so
    ``K[l] = 2 Re(sum_m C_m dB_m dA_m^l)``. Inits: "lin" (A = -1/2 + i pi n), "inv"
    (A = -1/2 + i N/pi (N/(2n+1) - 1)), "real" (A = -(n+1), imaginary part fixed at 0).
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "lin", dt_min: float = 0.001,
                 dt_max: float = 0.1, lr: float | None = None, device=None, dtype=None):
        super().__init__()
        if init not in ("lin", "inv", "real"):
            raise ValueError(f"S4D: init must be 'lin', 'inv' or 'real', got {init!r}")
        H, N = d_model, d_state
        M = max(N // 2, 1)
        self.init = init
        fdtype = dtype or torch.get_default_dtype()
        log_dt = torch.rand(H, device=device, dtype=fdtype) * (math.log(dt_max) - math.log(dt_min)) \
            + math.log(dt_min)
        C = torch.randn(H, M, dtype=_complex_dtype(fdtype), device=device)
        n = torch.arange(M, device=device, dtype=fdtype).expand(H, M)
        if init == "lin":
            real, imag = torch.full((H, M), 0.5, device=device, dtype=fdtype), math.pi * n
        elif init == "inv":
            real, imag = torch.full((H, M), 0.5, device=device, dtype=fdtype), N / math.pi * (N / (2 * n + 1) - 1)
        else:
            real, imag = n + 1, torch.zeros(H, M, device=device, dtype=fdtype)
        self.C = nn.Parameter(torch.view_as_real(C).clone())
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.log(real).contiguous())
        if init == "real":
            self.register_buffer("A_imag", imag.contiguous())
        else:
            self.A_imag = nn.Parameter(imag.contiguous())
        for p in (self.log_dt, self.log_A_real, self.A_imag):
            p._no_weight_decay = True
            p._optim = {"weight_decay": 0.0, **({"lr": lr} if lr is not None else {})}

    def discrete(self):
        """(dA, dB, C): complex (H, M) each."""
        dt = torch.exp(self.log_dt)
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag.to(self.log_A_real.dtype))
        dtA = A * dt[:, None]
        dA = torch.exp(dtA)
        return dA, (dA - 1) / A, torch.view_as_complex(self.C.contiguous())

    def forward(self, L: int) -> torch.Tensor:
        """The convolution kernel K (H, L)."""
        dt = torch.exp(self.log_dt)
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag.to(self.log_A_real.dtype))
        dtA = A * dt[:, None]                                                  # (H, M)
        C = torch.view_as_complex(self.C.contiguous()) * (torch.exp(dtA) - 1) / A
        ell = torch.arange(L, device=dtA.device, dtype=self.log_dt.dtype)
        return 2 * torch.einsum("hm,hml->hl", C, torch.exp(dtA[..., None] * ell)).real


class S4D(nn.Module):
    """S4D layer: per-channel diagonal SSM (FFT convolution) + D skip, GELU, dropout, GLU output.

    ``forward(u) -> y``: (batch, L, d_model) by default, (batch, d_model, L) with
    ``transposed=True`` (like the original S4 code). ``init``: "lin", "inv" or "real".
    Parameters: ``D`` (d_model,), ``kernel.*`` (see :class:`S4DKernel`), ``output_linear.0``
    (Conv1d d_model -> 2 d_model, width 1) followed by GLU over channels.
    Streaming: ``allocate_inference_cache`` -> (state,) with state complex (batch, d_model, M);
    ``step(u (batch, 1, d_model), state) -> (y, state)``; or ``forward(u, inference_params)``.
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "lin", dropout: float = 0.0,
                 transposed: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 lr: float | None = None, layer_idx=None, device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.transposed, self.layer_idx = d_model, d_state, transposed, layer_idx
        self.backend = backend  # the FFT path uses no core.ops kernel; kept for a uniform API
        self.D = nn.Parameter(torch.randn(d_model, **factory))
        self.kernel = S4DKernel(d_model, d_state, init=init, dt_min=dt_min, dt_max=dt_max, lr=lr, **factory)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else nn.Identity()  # tied over L
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1, **factory),
                                           nn.GLU(dim=-2))

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        # y (B, H, L) -> (B, H, L)
        return self.output_linear(self.dropout(self.activation(y)))

    def forward(self, u: torch.Tensor, inference_params: InferenceParams | None = None, *,
                seq_idx=None, cu_seqlens=None, lengths=None, **kwargs) -> torch.Tensor:
        """(batch, L, d_model) -> same (or (batch, d_model, L) with ``transposed``).

        Ragged input as the other layers (core.layers.ragged): with ``lengths`` the causal
        convolution never sees the padding (which is zeroed in the output); packed rows
        (``seq_idx``/``cu_seqlens``) run as a padded batch of their sequences.
        """
        if seq_idx is not None or cu_seqlens is not None or lengths is not None:
            return self._ragged_forward(u, inference_params, seq_idx, cu_seqlens, lengths)
        if not self.transposed:
            u = u.transpose(-1, -2)
        L = u.shape[-1]
        k = self.kernel(L)                                                    # (H, L)
        n = 2 * L  # zero padding: linear, not circular, convolution
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        y = y + u * self.D[:, None]
        if inference_params is not None:
            (state,) = get_states_from_cache(self, inference_params, u.shape[0])
            dA, dB, C = self.kernel.discrete()
            if inference_params.seqlen_offset > 0:
                # Contribution of the carried state: y_t += 2 Re(sum_m C dA^(t+1) s0).
                pw = torch.exp(torch.log(dA)[..., None] * torch.arange(1, L + 1, device=u.device))  # (H, M, L)
                y = y + 2 * torch.einsum("hm,hml,bhm->bhl", C, pw, state.to(C.dtype)).real
                s = state * dA ** L
            else:
                s = torch.zeros_like(state)
            pw = torch.exp(torch.log(dA)[..., None] * torch.arange(L - 1, -1, -1, device=u.device))
            s = s + torch.einsum("hml,bhl->bhm", pw * dB[..., None], u.to(C.dtype))
            state.copy_(s.detach())
        y = self._output(y)
        return y if self.transposed else y.transpose(-1, -2)

    def _ragged_forward(self, u, inference_params, seq_idx, cu_seqlens, lengths):
        if inference_params is not None:
            raise NotImplementedError("S4D: streaming (inference_params) with ragged input is not supported")
        x = u.transpose(1, 2) if self.transposed else u               # (batch, L, d_model)
        r = ragged(x, seq_idx, cu_seqlens, lengths)
        if r.packed:  # the FFT convolution runs on whole rows: unpack, run padded, repack
            padded, lens, index = seq_idx_to_padded(x, r.seq_idx)
            y = padded_to_seq_idx(self._plain(padded), index, x.shape[0], x.shape[1])
        else:
            y = r.zero_padding(self._plain(x))
        return y.transpose(1, 2) if self.transposed else y

    def _plain(self, x):
        """forward on (batch, L, d_model) whatever ``transposed`` says."""
        y = self.forward(x.transpose(1, 2) if self.transposed else x)
        return y.transpose(1, 2) if self.transposed else y

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """One step: u (batch, 1, d_model) (or (batch, d_model, 1) if transposed), state complex
        (batch, d_model, M) updated in place. Returns (y like u, state)."""
        u_ = u[..., 0] if self.transposed else u[:, 0]                       # (B, H)
        dA, dB, C = self.kernel.discrete()
        state.copy_(state * dA + dB * u_[..., None].to(state.dtype))
        y = 2 * (state * C).sum(-1).real.to(u.dtype) + u_ * self.D
        y = self._output(y[..., None])                                       # (B, H, 1)
        return (y if self.transposed else y.transpose(-1, -2)), state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """(state,): zeros, complex (batch, d_model, M)."""
        fdtype = self.D.dtype if dtype is None else dtype
        M = self.kernel.log_A_real.shape[1]
        return (torch.zeros(batch_size, self.d_model, M, dtype=_complex_dtype(fdtype), device=self.D.device),)
