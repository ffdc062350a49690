"""The ensemble teacher's per-token distribution: what `ensdist-memoize` stores (pure torch).

Given the K members' log-probabilities over the full vocabulary at the same target positions,
compute, per position,
  - the ensemble mean q = (1/K) sum_k q_k, in log space (logsumexp) so that members that give an
    event a tiny probability do not underflow before averaging;
  - its top-V' events, sorted by descending probability, NOT renormalized (the tail mass
    1 - sum(top-V') stays recoverable);
  - the Proxy-Dirichlet precision (Ryabinin et al. 2021; DESIGN.md)
        beta0 = (V - 1) / (2 * sum_v q_v (ln q_v - (1/K) sum_k ln q_k,v)),
    over the FULL vocabulary, since the top-V' alone cannot give it.

Members are consumed one at a time (running logsumexp and running sum of log-probs), so memory
is O(positions x V) whatever K is.
"""
import math
from typing import Iterable, NamedTuple

import torch


class TeacherEntries(NamedTuple):
    indices: torch.Tensor  # (N, V') int64, by descending probability
    probs: torch.Tensor  # (N, V') float32, ensemble-mean probabilities of `indices`
    precision: torch.Tensor  # (N,) float32, beta0; +inf where the members agree exactly


class EnsembleMean:
    """Accumulates member log-probabilities (N, V) and yields the ensemble's mean statistics."""

    def __init__(self):
        self.num_members = 0
        self._log_sum_probs = None  # ln sum_k q_k
        self._sum_log_probs = None  # sum_k ln q_k

    def add(self, member_log_probs: torch.Tensor) -> None:
        lp = member_log_probs.float()
        if self._log_sum_probs is None:
            self._log_sum_probs = lp.clone()
            self._sum_log_probs = lp.clone()
        else:
            if lp.shape != self._log_sum_probs.shape:
                raise ValueError(f"member log-probs of shape {tuple(lp.shape)} do not match "
                                 f"{tuple(self._log_sum_probs.shape)}")
            torch.logaddexp(self._log_sum_probs, lp, out=self._log_sum_probs)
            self._sum_log_probs.add_(lp)
        self.num_members += 1

    def log_probs(self) -> torch.Tensor:
        """ln q, (N, V)."""
        self._require_members()
        return self._log_sum_probs - math.log(self.num_members)

    def precision(self) -> torch.Tensor:
        """beta0 per position, (N,), float32, +inf where the members agree (always for K = 1)."""
        log_q = self.log_probs()
        vocab_size = log_q.shape[-1]
        # ln q_v >= (1/K) sum_k ln q_k,v termwise (Jensen), so every term of the sum is >= 0:
        # summing non-negative terms has no cancellation in fp32; clamping only removes rounding.
        gap = torch.add(log_q, self._sum_log_probs, alpha=-1.0 / self.num_members).clamp_min_(0)
        # nansum: an event every member gives probability 0 has q_v = 0 and gap -inf + inf = nan;
        # it contributes 0.
        mean_kl = log_q.exp_().mul_(gap).nansum(-1)
        return (vocab_size - 1) / (2 * mean_kl)  # x / 0 = +inf in IEEE arithmetic

    def top_k(self, k: int):
        """(indices, probs) of the k most probable events of q, sorted descending."""
        log_q = self.log_probs()
        if not 0 < k <= log_q.shape[-1]:
            raise ValueError(f"top-k {k} is not in 1..{log_q.shape[-1]} (vocabulary size)")
        values, indices = torch.topk(log_q, k, dim=-1, largest=True, sorted=True)
        return indices, values.exp()

    def _require_members(self):
        if self.num_members == 0:
            raise ValueError("no ensemble members were added")


def teacher_entries(member_log_probs: Iterable[torch.Tensor], topk: int) -> TeacherEntries:
    """Top-`topk` ensemble-mean events and beta0 from an iterable of (N, V) member log-probs."""
    mean = EnsembleMean()
    for lp in member_log_probs:
        mean.add(lp)
    indices, probs = mean.top_k(topk)
    return TeacherEntries(indices, probs, mean.precision())
