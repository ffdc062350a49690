"""Token-level KD towards the ensemble-mean distribution stored as top-V' events (Reich et al. 2020).

The store keeps, per target position, the V' most probable events of the teacher mean q and their
probabilities *as they are* (not renormalized), so 1 - sum(top-V') is the known tail mass. How that
truncation enters the loss is a policy, chosen explicitly:

- ``none``:        weights = stored probabilities (sum <= 1). Only defined for T = 1.
- ``renormalize``: weights = softmax(log q / T) over the V' stored events (sum = 1).
- ``tail``:        append a tail event with mass 1 - sum(top-V'), softmax(log q / T) over the V'+1
                   events, then drop the tail (the authors' recipe; sum <= 1). Equals ``none`` at T = 1.
- ``tail_kl``:     the same V'+1 teacher events, tail kept, against the student's V'+1 events (its
                   tempered probabilities of the stored classes and the mass of all the others):
                   an exact KL between two (V'+1)-category distributions, so never negative and,
                   at T = 1, a lower bound of the full-vocabulary KL (merging classes cannot
                   increase a KL). The other policies drop the student's tail and can go below 0.

No fairseq import here: the criterion is the thin glue.
"""

import math

import torch
import torch.nn.functional as F

TRUNCATION_POLICIES = ("none", "renormalize", "tail", "tail_kl")


def teacher_distribution(probs, temperature=1.0, truncation="tail", dtype=torch.float32):
    """Weights and log-weights of the V' stored events under a truncation policy.

    probs: (..., V') stored teacher probabilities (0 where nothing is stored, e.g. pads), any
    float dtype (the store's float16 is exact in float32). Returns (weights, log_weights) in
    `dtype`; log_weights is -inf where weights are 0. For ``tail_kl`` they have V'+1 entries, the
    last one the tail event; rows without stored mass (pads) are all 0 there too.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = probs.to(dtype)
    log_probs = torch.log(probs)
    if truncation == "none":
        if temperature != 1:
            raise ValueError(
                "truncation 'none' is only defined for temperature 1 (use 'tail' or 'renormalize')"
            )
        return probs, log_probs
    has_mass = probs.sum(-1, keepdim=True) > 0
    if truncation == "renormalize":
        # Rows without stored mass (pads) would give 0/0: keep them at weight 0 instead.
        log_w = torch.where(has_mass, F.log_softmax(log_probs / temperature, dim=-1), log_probs)
        return log_w.exp(), log_w
    # Rounding can make the stored mass exceed 1 by an ulp: the tail is then empty, not negative.
    tail = (1.0 - probs.sum(-1, keepdim=True)).clamp(min=0.0)
    events = torch.cat([log_probs, torch.log(tail)], dim=-1) / temperature
    # Never all -inf: either some stored mass or a non-empty tail.
    log_w = F.log_softmax(events, dim=-1)
    if truncation == "tail":
        log_w = log_w[..., :-1]
    else:
        # A pad row is all tail: as in the other policies it weighs nothing.
        log_w = torch.where(has_mass, log_w, torch.full_like(log_w, -float("inf")))
    return log_w.exp(), log_w


# Below this student tail mass, log(1 - sum of the stored probabilities) has lost more than
# ~1e-5 of its relative precision in float32: such rows take the logsumexp over the tail itself.
EXACT_TAIL_BELOW = 1e-2


def _masked_tail_log_prob(lprobs, indices):
    """logsumexp over the unstored classes. The stored ones are masked with the most negative
    finite value, not -inf, so that a row with no unstored class keeps a finite gradient
    (logsumexp's backward is 0/0 over all -inf)."""
    masked = lprobs.scatter(-1, indices, torch.finfo(lprobs.dtype).min)
    return masked.logsumexp(-1, keepdim=True)


def student_tail_log_prob(lprobs, indices):
    """log of the student's mass outside the stored events, sum over v not in indices of p(v).

    log(1 - sum of the stored probabilities) costs only the V' gathered log-probabilities, but
    loses everything once the student puts almost all its mass on them: rows whose tail is below
    EXACT_TAIL_BELOW (and pad rows, whose repeated index counts one class V' times) are recomputed
    as a logsumexp over the unstored classes.
    """
    log_stored = lprobs.gather(-1, indices).logsumexp(-1, keepdim=True)
    limit = math.log1p(-EXACT_TAIL_BELOW)
    # clamped rows are the recomputed ones: the clamp only keeps their discarded value finite
    tail = torch.log(-torch.expm1(log_stored.clamp(max=limit)))
    rows = (log_stored.squeeze(-1) > limit).nonzero().squeeze(-1)
    if rows.numel():
        tail = tail.index_put((rows,), _masked_tail_log_prob(lprobs[rows], indices[rows]))
    return tail


def ensemble_mean_kd(
    student_lprobs, teacher_indices, teacher_probs, temperature=1.0, truncation="tail"
):
    """Per-position T^2 * sum_{v in top-V'} q~_v (log q~_v - log p_T(v)).

    student_lprobs: (..., V) log-probabilities of the student's predictive distribution.
    teacher_indices / teacher_probs: (..., V') stored events and their probabilities.
    p_T is the student distribution tempered by T (log_softmax(log p / T), which equals
    log_softmax(z / T) for a softmax model). With ``tail_kl`` the sum also runs over the tail
    event, q~_tail (log q~_tail - log p_T(tail)). The q~ log q~ term has no gradient; it is kept so
    the value is a divergence (0 when the student matches) and readable in the logs.
    Returns (...) per-position losses in float32 (float64 for float64 student log-probs); the
    caller masks pads and reduces.
    """
    dtype = torch.float64 if student_lprobs.dtype == torch.float64 else torch.float32
    if truncation == "tail_kl" and teacher_indices.size(-1) >= student_lprobs.size(-1):
        # Every class is stored: there is no tail event, whatever rounding left of 1 - sum.
        truncation = "renormalize"
    weights, log_weights = teacher_distribution(teacher_probs, temperature, truncation, dtype)
    lprobs = student_lprobs.to(dtype)
    if temperature != 1:
        lprobs = F.log_softmax(lprobs / temperature, dim=-1)
    student_at_events = lprobs.gather(-1, teacher_indices)
    if truncation == "tail_kl":
        student_tail = student_tail_log_prob(lprobs, teacher_indices)
        student_at_events = torch.cat([student_at_events, student_tail], dim=-1)
    # 0 * log 0 = 0 for events with no weight (pads, underflow); the student term never meets a -inf.
    neg_entropy = torch.where(weights > 0, weights * log_weights, torch.zeros_like(weights))
    return temperature**2 * (neg_entropy - weights * student_at_events).sum(-1)
