"""Decoding: greedy CTC, joint attention/CTC beam search with CTC prefix scores (ESPnet's joint
decoding, Watanabe et al. 2017), CTC forced alignment and word timestamps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

NEG = -1e30


def ctc_greedy(logp: torch.Tensor, blank: int = 0) -> Tuple[List[int], List[Tuple[int, int]]]:
    """Best path of ``logp (T, V)``: collapse repeats, drop blanks. Returns (tokens, [(first, last)
    frame of each token's run])."""
    best = logp.argmax(-1).tolist()
    toks, spans = [], []
    prev = blank
    for t, k in enumerate(best):
        if k != blank and k != prev:
            toks.append(k)
            spans.append((t, t))
        elif k != blank and k == prev and spans:
            spans[-1] = (spans[-1][0], t)
        prev = k
    return toks, spans


class CTCGreedyStream:
    """Greedy CTC over frames arriving chunk by chunk (same tokens as :func:`ctc_greedy` on all)."""

    def __init__(self, blank: int = 0):
        self.blank, self.prev, self.t = blank, blank, 0
        self.tokens: List[int] = []
        self.spans: List[Tuple[int, int]] = []

    def __call__(self, logp: torch.Tensor) -> None:
        for k in logp.argmax(-1).tolist():
            if k != self.blank and k != self.prev:
                self.tokens.append(k)
                self.spans.append((self.t, self.t))
            elif k != self.blank and k == self.prev and self.spans:
                self.spans[-1] = (self.spans[-1][0], self.t)
            self.prev = k
            self.t += 1


def ctc_align(logp: torch.Tensor, tokens: Sequence[int], blank: int = 0) -> List[Tuple[int, int]]:
    """Viterbi forced alignment of ``tokens`` to ``logp (T, V)``: (first, last) frame of each token.
    Falls back to an even split when the tokens cannot fit in T frames."""
    T, U = logp.shape[0], len(tokens)
    if U == 0:
        return []
    S = 2 * U + 1
    labels = torch.full((S,), blank, dtype=torch.long)
    labels[1::2] = torch.as_tensor(list(tokens))
    lp = logp.double()[:, labels]                                            # (T, S)
    skip = torch.zeros(S, dtype=torch.bool)
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    alpha = torch.full((S,), NEG, dtype=torch.float64)
    alpha[0], alpha[1] = lp[0, 0], lp[0, 1]
    back = torch.zeros(T, S, dtype=torch.long)
    ar = torch.arange(S)
    for t in range(1, T):
        a1 = torch.cat([torch.tensor([NEG], dtype=torch.float64), alpha[:-1]])
        a2 = torch.cat([torch.tensor([NEG, NEG], dtype=torch.float64), alpha[:-2]])
        a2 = torch.where(skip, a2, torch.full_like(a2, NEG))
        stacked = torch.stack([alpha, a1, a2])
        best, arg = stacked.max(0)
        back[t] = ar - arg
        alpha = best + lp[t]
    end = S - 1 if alpha[S - 1] >= alpha[S - 2] else S - 2
    if alpha[end] <= NEG / 2:
        step = T / U
        return [(int(i * step), max(int(i * step), int((i + 1) * step) - 1)) for i in range(U)]
    states = [0] * T
    s = end
    for t in range(T - 1, -1, -1):
        states[t] = s
        s = int(back[t, s]) if t > 0 else s
    spans: List[Optional[Tuple[int, int]]] = [None] * U
    for t, s in enumerate(states):
        if s % 2 == 1:
            u = s // 2
            spans[u] = (t, t) if spans[u] is None else (spans[u][0], t)
    return [sp if sp is not None else (0, 0) for sp in spans]


def word_times(pieces: Sequence[str], spans: Sequence[Tuple[int, int]], frame_s: float) -> List[dict]:
    """Words from SentencePiece pieces ("▁" starts a word) with start/end seconds from token frames."""
    words: List[dict] = []
    for piece, (a, b) in zip(pieces, spans):
        starts = piece.startswith("▁")
        text = piece.lstrip("▁")
        if starts or not words:
            if not text and starts:       # a lone "▁": the next piece carries the word
                words.append({"word": "", "start": a * frame_s, "end": (b + 1) * frame_s})
                continue
            words.append({"word": text, "start": a * frame_s, "end": (b + 1) * frame_s})
        else:
            words[-1]["word"] += text
            words[-1]["end"] = (b + 1) * frame_s
    return [{"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3)}
            for w in words if w["word"]]


# ------------------------------------------------------------------------------- CTC prefix scoring
class CTCPrefixScorer:
    """Prefix probabilities of the CTC posteriors ``logp (T, V)`` for label sequences, vectorised over
    hypotheses and candidate tokens (no loop over time: the recursions are cumulative log-sum-exps).

    A hypothesis state is ``(r_n, r_b)`` (T,) each: log-prob of the prefix ending at frame t in a
    non-blank / blank frame. :meth:`extend` scores candidates; :meth:`final` the end of sentence.
    """

    def __init__(self, logp: torch.Tensor, blank: int = 0):
        self.x = logp.double()                                       # (T, V)
        self.T = logp.shape[0]
        self.blank = blank
        self.B = torch.cumsum(self.x[:, blank], 0)                   # cumulative blank log-probs

    def initial(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """State of the empty prefix: all-blank so far."""
        return torch.full((self.T,), NEG, dtype=torch.float64), self.B.clone()

    def extend(self, r_n: torch.Tensor, r_b: torch.Tensor, last: torch.Tensor, cands: torch.Tensor,
               empty: torch.Tensor):
        """Hypotheses ``(n,)`` with states ``r_n, r_b (n, T)``, last tokens ``last (n,)`` and flags
        ``empty (n,)`` (prefix is just <sos>); candidates ``cands (n, k)``.
        Returns (psi (n, k) prefix log-probs, new r_n (n, k, T), new r_b (n, k, T))."""
        n, k = cands.shape
        T = self.T
        xc = self.x[:, cands].permute(1, 2, 0)                       # (n, k, T)
        X = torch.cumsum(xc, -1)
        tot = torch.logaddexp(r_n, r_b)[:, None, :].expand(n, k, T)
        phi = torch.where((cands == last[:, None])[..., None], r_b[:, None, :].expand(n, k, T), tot)
        r0 = torch.where(empty[:, None], xc[..., 0], torch.full_like(xc[..., 0], NEG))   # (n, k)
        # r_n[t] = X[t] + logcumsumexp(a)[t]; a[0] = r0 - X[0], a[s] = phi[s-1] - X[s-1]
        a = torch.cat([(r0 - X[..., 0])[..., None], phi[..., :-1] - X[..., :-1]], -1)
        new_n = X + torch.logcumsumexp(a, -1)
        # r_b[t] = B[t] + logcumsumexp(b)[t]; b[0] = -inf, b[s] = r_n[s-1] - B[s-1]
        Bc = self.B[None, None].expand(n, k, T)
        b = torch.cat([torch.full_like(new_n[..., :1], NEG), new_n[..., :-1] - Bc[..., :-1]], -1)
        new_b = Bc + torch.logcumsumexp(b, -1)
        psi = torch.logsumexp(torch.cat([r0[..., None], phi[..., :-1] + xc[..., 1:]], -1), -1)
        return psi, new_n, new_b

    @staticmethod
    def final(r_n: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        """Log-prob of the whole label sequence ``(n,)`` (ending the sentence)."""
        return torch.logaddexp(r_n[..., -1], r_b[..., -1])


@dataclass
class Hyp:
    tokens: List[int]
    score: float
    ctc: float = 0.0
    att: float = 0.0
    state_idx: int = 0
    r: Tuple[torch.Tensor, torch.Tensor] = field(default=None, repr=False)


# CTC weight in joint decoding: ESPnet2's asr_inference default. The training loss keeps 0.3; at
# 0.3 in decoding an under-trained decoder's early <eos> outweighs the CTC evidence (deletions).
DECODE_CTC_WEIGHT = 0.5


@torch.no_grad()
def joint_beam_search(decoder, enc: torch.Tensor, ctc_logp: torch.Tensor, sos_eos: int, beam: int = 10,
                      ctc_weight: float = DECODE_CTC_WEIGHT, maxlen_ratio: float = 1.0, blank: int = 0,
                      pre_beam_ratio: float = 1.5) -> Tuple[List[int], float]:
    """ESPnet-style joint decoding of one utterance: score = (1 - w) * attention + w * CTC prefix.

    ``enc (1, T, d)``, ``ctc_logp (T, V)`` log-softmax. Candidates are pre-pruned to
    ``pre_beam_ratio * beam`` by the attention score, plus <eos> and the tokens whose CTC
    posterior passes 5 % in some frame. The search ends when every running hypothesis
    scores below the best ended one (scores only fall as tokens are added) or at
    ``maxlen = min(maxlen_ratio * T, 1.5 * len(CTC best path) + 10)`` tokens. Returns (tokens without sos/eos, score).
    """
    T = ctc_logp.shape[0]
    # ESPnet's bound is T tokens; the CTC best path's length bounds it much tighter (an unsure
    # decoder that never says <eos> would otherwise run T steps)
    best = ctc_logp.argmax(-1)
    n_ctc = int(((best != blank) & torch.cat([torch.tensor([True]), best[1:] != best[:-1]])).sum())
    maxlen = max(1, min(int(maxlen_ratio * T), int(1.5 * n_ctc) + 10))
    scorer = CTCPrefixScorer(ctc_logp, blank)
    state = decoder.init_state(enc)
    state = decoder.reorder(state, torch.zeros(1, dtype=torch.long, device=enc.device))
    rn, rb = scorer.initial()
    running = [Hyp([], 0.0, 0.0, 0.0, 0, (rn, rb))]
    ended: List[Hyp] = []
    V = ctc_logp.shape[1]
    pre_beam = min(V - 1, max(beam, int(pre_beam_ratio * beam)))
    # Candidates: the decoder's top tokens (ESPnet's pre-beam) plus <eos> and the tokens the CTC
    # posteriors clearly show somewhere, so an unsure decoder cannot hide what the audio says.
    peak = ctc_logp.max(0).values.clone()
    peak[blank] = NEG
    shown = torch.nonzero(peak >= -3.0).flatten()
    shown = shown[torch.argsort(peak[shown], descending=True)][: 2 * pre_beam]
    extra_static = torch.unique(torch.cat([shown, torch.tensor([sos_eos])]))[None]
    for i in range(maxlen):
        last = torch.tensor([h.tokens[-1] if h.tokens else sos_eos for h in running], device=enc.device)
        att, state = decoder.step(state, last)                                   # (n, V)
        att = att.cpu().double()
        att[:, blank] = NEG                                                      # blank is CTC-only
        n = len(running)
        top = torch.topk(att, pre_beam, -1).indices                              # (n, k1)
        extra = extra_static.expand(n, -1)
        cands = torch.cat([top, extra], 1)                                       # (n, k1 + k2)
        dup = torch.cat([torch.zeros_like(top, dtype=torch.bool),
                         (extra[:, :, None] == top[:, None, :]).any(-1)], 1)
        r_n = torch.stack([h.r[0] for h in running])
        r_b = torch.stack([h.r[1] for h in running])
        last_c = torch.tensor([h.tokens[-1] if h.tokens else -1 for h in running])
        empty = torch.tensor([not h.tokens for h in running])
        psi, new_n, new_b = scorer.extend(r_n, r_b, last_c, cands, empty)
        # end of sentence: the whole prefix's CTC probability
        is_eos = cands == sos_eos
        psi = torch.where(is_eos, CTCPrefixScorer.final(r_n, r_b)[:, None].expand_as(psi), psi)
        prev_ctc = torch.tensor([h.ctc for h in running], dtype=torch.float64)
        prev_att = torch.tensor([h.att for h in running], dtype=torch.float64)
        att_c = prev_att[:, None] + att.gather(1, cands)
        total = (1 - ctc_weight) * att_c + ctc_weight * psi
        total = total.masked_fill(dup, NEG)
        flat = total.flatten()
        order = torch.argsort(flat, descending=True)[: beam]
        new_running: List[Hyp] = []
        parents = []
        for j in order.tolist():
            hi, ci = divmod(j, cands.shape[1])
            tok = int(cands[hi, ci])
            h = running[hi]
            sc = float(flat[j])
            if sc <= NEG / 2:
                continue
            if tok == sos_eos or i == maxlen - 1:
                if tok == sos_eos:
                    ended.append(Hyp(h.tokens, sc, float(psi[hi, ci]), float(att_c[hi, ci])))
                continue
            parents.append(hi)
            new_running.append(Hyp(h.tokens + [tok], sc, float(psi[hi, ci]), float(att_c[hi, ci]),
                                   len(parents) - 1, (new_n[hi, ci], new_b[hi, ci])))
        if not new_running:
            break
        best_end = max((h.score for h in ended), default=NEG)
        if best_end > max(h.score for h in new_running):
            break
        state = decoder.reorder(state, torch.tensor(parents, dtype=torch.long, device=enc.device))
        running = new_running
    if not ended:  # nothing reached <eos>: take the best running hypothesis
        ended = running
    best = max(ended, key=lambda h: h.score)
    return best.tokens, best.score
