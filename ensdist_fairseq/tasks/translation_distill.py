"""`--task translation_distill`: translation whose training batches carry memoized teacher entries.

Without --teacher-store it is fairseq's translation task (used to train the teachers). With it,
the training split is wrapped in TeacherStoreDataset after the store's provenance has been
checked against the data (once per process, when the split is loaded); valid and test splits
are untouched. With --eval-calibration, validation (fairseq-train, fairseq-validate) also logs
ECE-1 and ECE-5. train_step hands the update number to the criterion (set_num_updates).
"""

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ensdist_fairseq.checkpoints.checks import DICTIONARY_SHA256_KEY
from ensdist_fairseq.data import background_loaders
from ensdist_fairseq.data.split_fingerprint import fingerprint
from ensdist_fairseq.data.teacher_dataset import TeacherStoreDataset
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.evaluation import calibration_logging
from ensdist_fairseq.hashing import file_sha256
from ensdist_fairseq.numeric import Integer, check_fields
from ensdist_fairseq.store.format import StoreReader
from ensdist_fairseq.store.provenance import StoreError, check_topk

logger = logging.getLogger(__name__)


@dataclass
class TranslationDistillConfig(TranslationConfig):
    teacher_store: Optional[str] = field(
        default=None,
        metadata={
            "help": "teacher store written by ensdist-memoize for the training split; "
            "without it the task is plain translation"
        },
    )
    teacher_topk: Optional[int] = field(
        default=None,
        metadata={
            "help": "V': teacher events per token passed to the criterion, at most the "
            "stored V' (default: the stored V')"
        },
    )
    eval_calibration: bool = field(
        default=False,
        metadata={
            "help": "validation also logs ECE-1/ECE-5 (percent) of the model's predictive "
            "distribution: one extra no-grad forward pass per batch (like --eval-bleu)"
        },
    )


# every numeric field of the config, by the package's one rule (ensdist_fairseq/numeric.py)
NUMERIC_FIELDS = {
    "teacher_topk": Integer(1, optional=True),
    "max_source_positions": Integer(1),
    "max_target_positions": Integer(1),
    "num_batch_buckets": Integer(0),
}


@register_task("translation_distill", dataclass=TranslationDistillConfig)
class TranslationDistillTask(TranslationTask):
    cfg: TranslationDistillConfig

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        check_fields(cfg, NUMERIC_FIELDS, EnsdistError)
        task = super().setup_task(cfg, **kwargs)
        task.dictionary_path = os.path.join(
            utils.split_paths(cfg.data)[0], f"dict.{cfg.target_lang}.txt"
        )
        task.dictionary_sha256 = file_sha256(task.dictionary_path)
        return task

    # The target dictionary's sha256 travels in the checkpoint's "task_state" (fairseq's Trainer
    # saves task.state_dict(); every checkpoint load, fairseq-generate's included, and a resumed
    # training call task.load_state_dict). A model meeting another dictionary is refused there:
    # the one sound check (a saved data path may be relative to an unknown directory, and a
    # reordered dictionary has the same size). checkpoint_checks reads the same record.
    def state_dict(self):
        sha = getattr(self, "dictionary_sha256", None)  # None: built without setup_task
        return {**super().state_dict(), **({DICTIONARY_SHA256_KEY: sha} if sha else {})}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict or {})
        recorded = state_dict.pop(DICTIONARY_SHA256_KEY, None)
        if (
            recorded
            and getattr(self, "dictionary_sha256", None)
            and recorded != self.dictionary_sha256
        ):
            raise EnsdistError(
                f"{self.dictionary_path}: not the dictionary the model was trained with "
                f"(sha256 {self.dictionary_sha256[:12]}…, its checkpoint records {recorded[:12]}…)"
            )
        super().load_state_dict(state_dict)

    def get_batch_iterator(self, dataset, *args, epoch=1, **kwargs):
        """fairseq's iterator, with the batches an uninterrupted run has in every epoch.

        fairseq sorts the examples by length, breaking ties at random under seed + the epoch the
        iterator is built in, and then reuses those batches (reshuffled per epoch) for every
        later epoch. An uninterrupted run builds its iterator in epoch 1; a run resumed from an
        epoch-N checkpoint would build it in epoch N and train on other batches from there on.
        So a reusable iterator is always built as in epoch 1, then set to start at `epoch`
        (a resumed run then reads its position from the checkpoint, as before). Batch-loading
        threads are stopped before the process exits (data/background_loaders.py)."""
        # its prefetching thread must not be caught loading by the interpreter's shutdown
        background_loaders.stop_at_exit()
        if args:  # positional call (none in fairseq's own code): fairseq's behaviour
            return super().get_batch_iterator(dataset, *args, epoch=epoch, **kwargs)
        built_once = (
            not kwargs.get("disable_iterator_cache", False)
            and not kwargs.get("update_epoch_batch_itr", False)
            and self.can_reuse_epoch_itr(dataset)
            and dataset not in self.dataset_to_epoch_iter
            and not getattr(self.cfg, "rebuild_batches", False)
        )
        itr = super().get_batch_iterator(dataset, epoch=1 if built_once else epoch, **kwargs)
        if built_once and epoch > 1:
            itr.epoch = epoch
            dataset.set_epoch(epoch)
        return itr

    def _open_store(self) -> StoreReader:
        """The store, and the V' this run uses (the store's, or fewer with --teacher-topk)."""
        cfg = self.cfg
        reader = StoreReader(cfg.teacher_store)
        cfg.teacher_topk = check_topk(
            cfg.teacher_topk,
            reader.provenance.topk,
            "--teacher-topk",
            f"the store {cfg.teacher_store} holds V'={reader.provenance.topk}",
        )
        return reader

    def build_model(self, cfg, from_checkpoint=False):
        """fairseq's model; what it predicts is recorded for the criterion, built next, to
        refuse --kd-loss proxy_dirichlet with a softmax student before any data is read."""
        model = super().build_model(cfg, from_checkpoint)
        self.model_predicts_dirichlet = bool(getattr(model, "predicts_dirichlet", False))
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        # The store is opened only with the training split, and only to train: a student
        # checkpoint keeps this task's config (its --teacher-store maybe relative to another
        # directory), and fairseq-generate / fairseq-validate, which load a split for a saved
        # model (they pass its task_cfg), need no teacher: the criterion's validation loss is
        # the label-smoothed NLL.
        loaded_for_a_checkpoint = kwargs.get("task_cfg") is not None
        if (
            self.cfg.teacher_store
            and split == self.cfg.train_subset
            and not loaded_for_a_checkpoint
        ):
            self.datasets[split] = self._wrap(self.datasets[split])

    def _wrap(self, dataset) -> TeacherStoreDataset:
        """The training split with its teacher entries, after the store's provenance (one
        comparison: Provenance.first_difference) and every sentence's length were checked."""
        cfg = self.cfg
        paths = utils.split_paths(cfg.data)
        if len(paths) != 1:
            raise StoreError(
                f"--teacher-store: one store covers one data directory, --data has {len(paths)}"
            )
        reader = self._open_store()
        dict_path = os.path.join(paths[0], f"dict.{cfg.target_lang}.txt")
        fp = fingerprint(dataset)
        expected = dict(
            vocab_size=len(self.tgt_dict),
            dictionary_sha256=file_sha256(dict_path),
            split=cfg.train_subset,
            num_sentences=len(dataset),
            target_checksum=fp.target_checksum,
            source_checksum=fp.source_checksum,
        )
        reader.check_data(expected, fp.target_lengths, f"split '{cfg.train_subset}' of {paths[0]}")
        p = reader.provenance
        logger.info(
            f"teacher store {cfg.teacher_store}: K={p.num_teachers}, V'={cfg.teacher_topk} of "
            f"{p.topk}, {p.num_sentences} sentences, provenance checked"
        )
        return TeacherStoreDataset(dataset, reader, cfg.teacher_topk, self.tgt_dict.pad())

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's train step; the criterion is told the update number first (token_kd's
        adaptive intra-distillation weight), as fairseq tells the model."""
        if hasattr(criterion, "set_num_updates"):
            criterion.set_num_updates(update_num)
        # fairseq's Trainer passes ignore_grad for its stand-in batch only (a rank out of
        # batches in a multi-process epoch): token_kd then needs no teacher (stand_in_batch)
        stand_in = getattr(criterion, "stand_in_batch", None) if ignore_grad else None
        with stand_in() if stand_in else contextlib.nullcontext():
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        """The criterion's validation loss; with --eval-calibration also ECE-1/ECE-5 histograms of
        the model's predictive distribution. That costs one extra forward pass (no grad): the
        criterion does not hand its log-probs out, and this works for any criterion (teachers
        use fairseq's own)."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if getattr(self.cfg, "eval_calibration", False):  # absent from older checkpoints
            with torch.no_grad():
                lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
            logging_output.update(
                calibration_logging.calibration_logging_output(
                    lprobs, sample["target"], self.target_dictionary.pad()
                )
            )
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        calibration_logging.reduce_calibration_metrics(logging_outputs)

    # --- fairseq-generate --scoring ece (evaluation): the scorer's confidences ---------------
    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq's search; when a `--scoring ece` scorer is active, first teacher-force the
        batch's references through the same models and hand it their calibration summary
        (scorers only ever receive strings or tokens: evaluation/ece_scorer.py). First, so a
        model with non-finite output gets our one-line error, not an assertion in the search."""
        from ensdist_fairseq.evaluation import (
            ece_scorer,
        )  # registered with the plugin; imported lazily here

        scorer = ece_scorer.active_scorer()
        if scorer is not None and sample.get("target") is not None:
            from ensdist_fairseq.evaluation.ensemble_scoring import summarize_batch

            scorer.add_calibration(
                summarize_batch(
                    models, sample, self.target_dictionary.pad(), where="the generated split"
                )
            )
        return super().inference_step(
            generator, models, sample, prefix_tokens=prefix_tokens, constraints=constraints
        )
