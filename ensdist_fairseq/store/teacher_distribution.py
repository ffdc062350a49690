"""The ensemble teacher's per-token distribution: what `ensdist-memoize` stores (pure torch).

Given the K members' log-probabilities over the full vocabulary at the same target positions,
compute, per position,
  - the ensemble mean q = (1/K) sum_k q_k, in log space (logsumexp) so that members that give an
    event a tiny probability do not underflow before averaging;
  - its top-V' events, sorted by descending probability, NOT renormalized (the tail mass
    1 - sum(top-V') stays recoverable);
  - the Proxy-Dirichlet precision (Ryabinin et al. 2021)
        beta0 = (V - 1) / (2 * sum_v q_v (ln q_v - (1/K) sum_k ln q_k,v)),
    over the FULL vocabulary, since the top-V' alone cannot give it.

Members are consumed one at a time (running logsumexp and running sum of log-probs), so memory
is O(positions x V) whatever K is.
"""

import math
from typing import Optional

import torch

from ensdist_fairseq.store.validate import PRECISION_MAX

# ln of the smallest normal float32: a member's probability that is exactly 0 (ln = -inf) counts
# as this in β̂₀'s sum of member log-probabilities, so β̂₀ stays finite and > 0 where a member
# rules out an event another member allows (the raw formula gives β̂₀ = 0 there).
LOG_PROB_FLOOR = math.log(torch.finfo(torch.float32).tiny)


def nucleus_lengths(probs: torch.Tensor, top_p: float, min_k: int) -> torch.Tensor:
    """Per row of descending top-V' probabilities (N, V'): the length of the smallest prefix whose
    mass reaches top_p, at least min_k and at most V' (a row whose V' entries hold less than
    top_p keeps them all). top_p = 1 keeps every entry."""
    k = probs.shape[-1]
    if top_p >= 1.0:
        return torch.full(probs.shape[:-1], k, dtype=torch.long, device=probs.device)
    # entries before j hold less than top_p  <=>  entry j is still needed
    before = probs.double().cumsum(-1) - probs.double()
    needed = (before < top_p).sum(-1)
    return needed.clamp(min=min(min_k, k), max=k)


def truncate_to_nucleus(indices: torch.Tensor, probs: torch.Tensor, lengths: torch.Tensor):
    """Entries past each row's length become (index 0, probability 0): what store rows pad with."""
    past = torch.arange(probs.shape[-1], device=probs.device) >= lengths.unsqueeze(-1)
    return indices.masked_fill(past, 0), probs.masked_fill(past, 0.0)


class NonFiniteMemberOutput(ValueError):
    """A member's log-probabilities hold NaN or +inf; `row` is the first bad position."""

    def __init__(self, row: int, value: float):
        super().__init__(f"position {row}: log-probability {value}")
        self.row, self.value = row, value


def first_non_finite_row(log_probs: torch.Tensor) -> Optional[int]:
    """The first row (position) of (N, V) log-probabilities holding NaN or +inf, or None.
    -inf is a valid log-probability (probability 0)."""
    bad = torch.isnan(log_probs) | torch.isposinf(log_probs)
    if not bool(bad.any()):
        return None
    return int(bad.any(-1).nonzero()[0, 0])


class EnsembleMean:
    """Accumulates member log-probabilities (N, V) and yields the ensemble's mean statistics."""

    def __init__(self):
        self.num_members = 0
        self._log_sum_probs = None  # ln sum_k q_k
        self._sum_log_probs = None  # sum_k max(ln q_k, LOG_PROB_FLOOR if ln q_k = -inf)

    def add(self, member_log_probs: torch.Tensor) -> None:
        """Raises NonFiniteMemberOutput on NaN/+inf: a broken teacher must not become a store
        whose NaN would read as 'the members agree'."""
        lp = member_log_probs.float()
        row = first_non_finite_row(lp)
        if row is not None:
            raise NonFiniteMemberOutput(
                row, float(lp[row][torch.isnan(lp[row]) | torch.isposinf(lp[row])][0])
            )
        floored = torch.where(torch.isneginf(lp), torch.full_like(lp, LOG_PROB_FLOOR), lp)
        if self._log_sum_probs is None:
            self._log_sum_probs = lp.clone()
            self._sum_log_probs = floored
        else:
            if lp.shape != self._log_sum_probs.shape:
                raise ValueError(
                    f"member log-probs of shape {tuple(lp.shape)} do not match "
                    f"{tuple(self._log_sum_probs.shape)}"
                )
            torch.logaddexp(self._log_sum_probs, lp, out=self._log_sum_probs)
            self._sum_log_probs.add_(floored)
        self.num_members += 1

    def log_probs(self) -> torch.Tensor:
        """ln q, (N, V)."""
        self._require_members()
        return self._log_sum_probs - math.log(self.num_members)

    def precision(self) -> torch.Tensor:
        """beta0 per position, (N,), float32, finite and > 0: capped at PRECISION_MAX (the largest
        float32), which it reaches where the members agree (always for K = 1)."""
        log_q = self.log_probs()
        vocab_size = log_q.shape[-1]
        # ln q_v >= (1/K) sum_k ln q_k,v termwise (Jensen), so every term of the sum is >= 0:
        # summing non-negative terms has no cancellation in fp32; clamping only removes rounding.
        # An event every member gives probability 0 has ln q_v = -inf and a finite floored sum:
        # gap -inf, clamped to 0, times q_v = 0: it contributes 0 (no NaN can arise: inputs are
        # checked in add()).
        gap = torch.add(log_q, self._sum_log_probs, alpha=-1.0 / self.num_members).clamp_min_(0)
        mean_kl = log_q.exp_().mul_(gap).sum(-1)
        return ((vocab_size - 1) / (2 * mean_kl)).clamp_(max=PRECISION_MAX)  # x / 0 = +inf -> cap

    def top_k(self, k: int):
        """(indices, probs) of the k most probable events of q, sorted descending
        (k is checked by the caller: store.provenance.check_topk)."""
        values, indices = torch.topk(self.log_probs(), k, dim=-1, largest=True, sorted=True)
        return indices, values.exp()

    def _require_members(self):
        if self.num_members == 0:
            raise ValueError("no ensemble members were added")
