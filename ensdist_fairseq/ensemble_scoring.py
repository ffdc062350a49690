"""Teacher-forced scoring of a data split by one model or an ensemble (fairseq glue).

Every sentence of the split is fed with its reference prefix; the predictive distribution at
each target position goes to a ``CalibrationAccumulator`` batch by batch, so nothing of size
V outlives its batch. An ensemble predicts the mean of its members' probabilities (Reich et al.
2020 §3), computed in log space as logsumexp_k ln p_k − ln K: not a mean of logits or of
log-probabilities. Each member's distribution comes from model.get_normalized_probs, so a
student with its own predictive distribution (e.g. a Dirichlet's α/α₀) is scored by it.
"""
import math
from typing import Callable, List, Optional, Sequence

import torch
from fairseq import checkpoint_utils, utils

from . import register_with_fairseq
from .calibration import CalibrationAccumulator

# Called after each batch with (batches done, batches in total, target tokens so far).
ProgressCallback = Callable[[int, int, int], None]


def load_models(paths: Sequence[str], data_dir: str, cuda: bool = False):
    """(models in eval mode, task) for the checkpoints `paths` on `data_dir`."""
    register_with_fairseq()  # the checkpoints may name our task or model
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        list(paths), arg_overrides={"data": data_dir})
    for model in models:
        model.eval()  # dropout off: the test-time predictive distribution
        if cuda:
            model.cuda()
    return models, task


def ensemble_log_probs(models: List[torch.nn.Module], net_input: dict) -> torch.Tensor:
    """ln((1/K) Σ_k p_k) over the vocabulary, (batch, tgt_len, V), float32."""
    total = None
    for model in models:
        lp = model.get_normalized_probs(model(**net_input), log_probs=True).float()
        # Running logaddexp: memory of one member's output, whatever K is.
        total = lp if total is None else torch.logaddexp(total, lp)
    if len(models) > 1:
        total.sub_(math.log(len(models)))  # in place: no second (tokens × V) buffer
    return total


def score_split(models: List[torch.nn.Module], task, split: str,
                accumulator: CalibrationAccumulator, max_tokens: int, cuda: bool = False,
                progress: Optional[ProgressCallback] = None) -> int:
    """Feed every target token of `split` to `accumulator`; return the number of sentences."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(),
                                                  *[m.max_positions() for m in models]),
        # An over-long sentence is an error, not something to skip silently.
        ignore_invalid_inputs=False,
        # fairseq 0.12 drops a last batch whose size is not a multiple of this (default 8).
        required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    num_batches, seen = len(batches), 0
    with torch.no_grad():
        for i, sample in enumerate(batches, 1):
            if not sample:  # fairseq yields {} for an empty batch
                continue
            if cuda:
                sample = utils.move_to_cuda(sample)
            target = sample["target"]
            accumulator.update(ensemble_log_probs(models, sample["net_input"]), target,
                               target.eq(pad), log_probs=True)
            seen += int(sample["nsentences"])
            if progress is not None:
                progress(i, num_batches, accumulator.num_tokens)
    if seen != len(dataset):
        raise RuntimeError(f"split {split}: scored {seen} of {len(dataset)} sentences")
    return seen
