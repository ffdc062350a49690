"""Distillation losses as plain torch functions (no fairseq import), one concept per module."""

from ensdist_fairseq.losses.dirichlet_special import GammaWorkspace, gamma_functions_1p
from ensdist_fairseq.losses.ensemble_mean_kd import (
    TRUNCATION_POLICIES,
    ensemble_mean_kd,
    teacher_distribution,
)
from ensdist_fairseq.losses.intra_distillation import (
    adaptive_alpha,
    check_adaptive_schedule,
    x_divergence,
)
from ensdist_fairseq.losses.proxy_dirichlet import (
    DEFAULT_PRECISION_FLOOR,
    DEFAULT_PRECISION_LIMIT,
    MAX_PRECISION_LIMIT,
    bound_precision,
    check_precision_bounds,
    dirichlet_log_predictive,
    proxy_dirichlet_rkl,
)

__all__ = [
    "DEFAULT_PRECISION_FLOOR",
    "GammaWorkspace",
    "DEFAULT_PRECISION_LIMIT",
    "MAX_PRECISION_LIMIT",
    "TRUNCATION_POLICIES",
    "adaptive_alpha",
    "bound_precision",
    "check_adaptive_schedule",
    "check_precision_bounds",
    "dirichlet_log_predictive",
    "ensemble_mean_kd",
    "gamma_functions_1p",
    "proxy_dirichlet_rkl",
    "teacher_distribution",
    "x_divergence",
]
