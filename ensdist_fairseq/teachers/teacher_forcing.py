"""The one teacher-forced pass over a data split (fairseq glue), shared by every reader of models.

    checkpoints --load_models--> models --plan_batches--> id batches --samples--> fairseq samples
    sample --member_log_probs--> each member's ln p_k (B, T, V) --ensemble_log_probs--> ln((1/K) Σ p_k)

`ensdist-memoize` (the ensemble's top-V' and precision, from the members one at a time),
`ensdist-evaluate` (calibration of the ensemble mean) and the uncertainty measures (each member
on the model's own hypotheses) all go through these functions, so batching, device placement,
eval mode and the ensemble's mean are decided here once.

Batching: sentences sorted by length (stable), then fairseq's batch_by_size with
required_batch_size_multiple=1 (fairseq 0.12 drops a last batch that is not a multiple of it),
then a check that every requested sentence is in exactly one batch.
"""

import math
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ensdist_fairseq.errors import EnsdistError

HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def load_models(
    paths: Sequence[str],
    data_dir: str,
    device: torch.device = torch.device("cpu"),
    overrides: Optional[dict] = None,
    dtype: Optional[torch.dtype] = None,
):
    """(models in eval mode on `device`, task) for the checkpoints `paths` on `data_dir`.

    overrides: model options set at load time, like fairseq's --model-overrides (e.g.
    {"dirichlet_predictive": "mean"} for a Proxy-Dirichlet student). dtype: torch.float16 or
    torch.bfloat16 for a GPU pass in half precision (None: as stored, float32).

    Each checkpoint is loaded on its own, so a weight that does not fit the architecture in its
    cfg is reported naming that file (fairseq's message names no file)."""
    from fairseq import checkpoint_utils

    from ensdist_fairseq import register_with_fairseq
    from ensdist_fairseq.errors import state_dict_mismatch

    register_with_fairseq()  # the checkpoints may name our task or model
    models, task = [], None
    for path in paths:
        try:
            loaded, _cfg, path_task = checkpoint_utils.load_model_ensemble_and_task(
                [path], arg_overrides={**(overrides or {}), "data": data_dir}
            )
        except RuntimeError as e:
            if "loading state_dict" not in str(e):
                raise
            raise EnsdistError(f"{path}: {state_dict_mismatch(e)}") from None
        models.extend(loaded)
        task = task or path_task  # fairseq's ensemble loader, too, keeps the first one's task
    # eval(): dropout off, the test-time predictive distribution
    models = [m.to(device).eval() for m in models]
    if dtype is not None:
        models = [m.to(dtype) for m in models]
    return models, task


def max_positions(task, models):
    """(source, target) positions every model and the task accept (None = unbounded)."""
    from fairseq import utils

    limit = utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])
    return limit if isinstance(limit, tuple) else (limit, limit)


def check_sizes(dataset, positions, max_tokens: Optional[int], where: str) -> None:
    """EnsdistError naming the first sentence that no batch could hold or no model could read."""
    n = len(dataset)
    if n == 0:
        return
    num_tokens = dataset.num_tokens_vec(np.arange(n))
    if max_tokens is not None and num_tokens.max() > max_tokens:
        i = int(num_tokens.argmax())
        raise EnsdistError(
            f"--max-tokens {max_tokens}: sentence {i} of {where} has {num_tokens[i]} tokens"
        )
    for sizes, limit, side in (
        (dataset.src_sizes, positions[0], "source"),
        (dataset.tgt_sizes, positions[1], "target"),
    ):
        if sizes is not None and limit is not None and sizes.max() > limit:
            i = int(sizes.argmax())
            raise EnsdistError(
                f"{where}: {side} of sentence {i} has {sizes[i]} tokens, "
                f"more than the models' {limit} positions"
            )


def plan_batches(
    dataset,
    ids: Optional[np.ndarray] = None,
    max_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
) -> List[np.ndarray]:
    """Batches (arrays of dataset indices) covering `ids` (default: every sentence) exactly once."""
    from fairseq.data import data_utils

    ids = (
        np.arange(len(dataset), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    )
    if len(ids) == 0:
        return []
    num_tokens = dataset.num_tokens_vec(ids).astype(np.int64)  # the Cython batcher wants int64
    order = np.argsort(num_tokens, kind="mergesort")  # similar lengths together: little padding
    batches = data_utils.batch_by_size(
        ids[order],
        dataset.num_tokens,
        num_tokens_vec=num_tokens[order],
        max_tokens=max_tokens,
        max_sentences=batch_size,
        required_batch_size_multiple=1,
    )
    covered = np.sort(np.concatenate(batches)) if batches else np.array([], dtype=np.int64)
    if not np.array_equal(covered, np.sort(ids)):
        raise RuntimeError(f"batching covered {len(covered)} of {len(ids)} sentences")
    return batches


def samples(dataset, batches: Sequence[np.ndarray], device: torch.device) -> Iterator[dict]:
    """The collated fairseq sample of each batch, on `device`."""
    from fairseq import utils

    for batch in batches:
        sample = dataset.collater([dataset[int(i)] for i in batch])
        if device.type == "cuda":
            sample = utils.move_to_cuda(sample, device=device)
        yield sample


def member_log_probs(models: Sequence[torch.nn.Module], net_input: dict) -> Iterator[torch.Tensor]:
    """Each member's ln p_k over the vocabulary, (B, T, V) float32, one at a time (memory of one).

    model.get_normalized_probs is the model's own predictive distribution (a Dirichlet student's
    choice included), so every consumer scores what fairseq-generate decodes with."""
    for model in models:
        yield model.get_normalized_probs(model(**net_input), log_probs=True).float()


def ensemble_log_probs(models: Sequence[torch.nn.Module], net_input: dict) -> torch.Tensor:
    """ln((1/K) Σ_k p_k), (B, T, V) float32: the mean of the members' probabilities (Reich et al.
    2020 §3), in log space; not a mean of logits or of log-probabilities."""
    total = None
    for lp in member_log_probs(models, net_input):
        # Running logaddexp: memory of one member's output, whatever K is.
        total = lp if total is None else torch.logaddexp(total, lp, out=total)
    if len(models) > 1:
        total.sub_(math.log(len(models)))  # in place: no second (tokens × V) buffer
    return total


class Accuracy(NamedTuple):
    accuracy: float  # argmax of the ensemble mean == target, over non-pad target tokens
    unigram: float  # always guessing the most frequent target token of the same tokens
    tokens: int
    finite: bool = True  # False: some output was NaN or +inf (no accuracy to speak of)


def accuracy(models: Sequence[torch.nn.Module], batches: Iterable[dict], pad: int) -> Accuracy:
    """The ensemble's teacher-forced accuracy over `batches`, and a constant guess's."""
    correct, total, counts = 0, 0, None
    for sample in batches:
        target = sample["target"]
        mask = target.ne(pad)
        log_probs = ensemble_log_probs(models, sample["net_input"])
        if bool((torch.isnan(log_probs) | torch.isposinf(log_probs)).any()):
            return Accuracy(0.0, 0.0, 0, finite=False)  # the caller names the member
        guess = log_probs.argmax(-1)
        correct += int((guess.eq(target) & mask).sum())
        total += int(mask.sum())
        c = torch.bincount(target[mask].flatten().cpu())
        counts = c if counts is None else _add_counts(counts, c)
    if total == 0:
        return Accuracy(0.0, 0.0, 0)
    return Accuracy(correct / total, int(counts.max()) / total, total)


def _add_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(len(a), len(b))
    out = torch.zeros(n, dtype=torch.int64)
    out[: len(a)] += a
    out[: len(b)] += b
    return out
