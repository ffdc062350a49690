"""Temperature scaling (Guo et al. 2017): the calibration rival every reader asks about.

One scalar T divides the model's (or the ensemble's mean) log-probabilities before the softmax,
p_T = softmax(log p / T). T is fitted on held-out tokens by minimising their NLL; the NLL is
convex in β = 1/T (a log-sum-exp of functions linear in β, minus a linear term), so a bounded
1-D search over β finds the one minimum.
"""

from typing import Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

BETA_BOUNDS = (0.02, 50.0)  # T from 0.02 to 50: far outside any temperature a model needs


def tempered(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(log_probs / T) over the last dimension (float32 at least)."""
    return torch.log_softmax(log_probs.float() / temperature, dim=-1)


def nll(log_probs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], beta: float) -> float:
    """Mean NLL (nats) of the targets under softmax(β · log p), over every (tokens, V) chunk."""
    total, count = 0.0, 0
    for lp, t in zip(log_probs, targets):
        scaled = lp.float() * beta
        total += float((torch.logsumexp(scaled, -1) - scaled.gather(-1, t[:, None])[:, 0]).sum())
        count += t.numel()
    return total / count


def fit_temperature(log_probs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> float:
    """The T minimising the mean NLL of `targets` (chunks of (tokens,)) under the (tokens, V)
    `log_probs`; raises ValueError without tokens."""
    if sum(t.numel() for t in targets) == 0:
        raise ValueError("temperature scaling needs at least one token to fit on")
    res = minimize_scalar(
        lambda b: nll(log_probs, targets, b),
        bounds=BETA_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(1.0 / res.x) if np.isfinite(res.x) else 1.0
