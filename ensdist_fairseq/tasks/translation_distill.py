"""`--task translation_distill`: translation whose training batches carry memoized teacher entries.

Without --teacher-store it is fairseq's translation task (used to train the teachers). With it,
the training split is wrapped in TeacherStoreDataset after the store's provenance has been
checked against the data (once per process, when the split is loaded); valid and test splits
are untouched. Validation (fairseq-train, fairseq-validate) also logs ECE-1 and ECE-5.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import calibration_logging
from ..data.split_fingerprint import fingerprint
from ..data.teacher_dataset import TeacherStoreDataset
from ..store.format import StoreReader
from ..store.provenance import StoreError, check_topk, file_sha256

logger = logging.getLogger(__name__)


@dataclass
class TranslationDistillConfig(TranslationConfig):
    teacher_store: Optional[str] = field(
        default=None,
        metadata={"help": "teacher store written by ensdist-memoize for the training split; "
                          "without it the task is plain translation"},
    )
    teacher_topk: Optional[int] = field(
        default=None,
        metadata={"help": "V': teacher events per token passed to the criterion, at most the "
                          "stored V' (default: the stored V')"},
    )


@register_task("translation_distill", dataclass=TranslationDistillConfig)
class TranslationDistillTask(TranslationTask):
    cfg: TranslationDistillConfig

    def _open_store(self) -> StoreReader:
        """The store, and the V' this run uses (the store's, or fewer with --teacher-topk)."""
        cfg = self.cfg
        reader = StoreReader(cfg.teacher_store)
        cfg.teacher_topk = check_topk(cfg.teacher_topk, reader.provenance.topk, "--teacher-topk",
                                      f"the store {cfg.teacher_store} holds V'={reader.provenance.topk}")
        return reader

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        # The store is opened only with the training split: a student checkpoint keeps this
        # task's config, and generating with it must not need the store.
        if self.cfg.teacher_store and split == self.cfg.train_subset:
            self.datasets[split] = self._wrap(self.datasets[split])

    def _wrap(self, dataset) -> TeacherStoreDataset:
        """The training split with its teacher entries, after the store's provenance (one
        comparison: Provenance.first_difference) and every sentence's length were checked."""
        cfg = self.cfg
        paths = utils.split_paths(cfg.data)
        if len(paths) != 1:
            raise StoreError(f"--teacher-store: one store covers one data directory, --data has {len(paths)}")
        reader = self._open_store()
        dict_path = os.path.join(paths[0], f"dict.{cfg.target_lang}.txt")
        fp = fingerprint(dataset)
        expected = dict(vocab_size=len(self.tgt_dict), dictionary_sha256=file_sha256(dict_path),
                        split=cfg.train_subset, num_sentences=len(dataset),
                        target_checksum=fp.target_checksum, source_checksum=fp.source_checksum)
        reader.check_data(expected, fp.target_lengths, f"split '{cfg.train_subset}' of {paths[0]}")
        p = reader.provenance
        logger.info(f"teacher store {cfg.teacher_store}: K={p.num_teachers}, V'={cfg.teacher_topk} of "
                    f"{p.topk}, {p.num_sentences} sentences, provenance checked")
        return TeacherStoreDataset(dataset, reader, cfg.teacher_topk, self.tgt_dict.pad())

    def valid_step(self, sample, model, criterion):
        """The criterion's validation loss, plus ECE-1/ECE-5 histograms of the model's
        predictive distribution. One extra forward pass (no grad): the criterion does not hand
        its log-probs out, and this works for any criterion (teachers use fairseq's own)."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        with torch.no_grad():
            lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
        logging_output.update(calibration_logging.calibration_logging_output(
            lprobs, sample["target"], self.target_dictionary.pad()))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        calibration_logging.reduce_calibration_metrics(logging_outputs)

    # --- fairseq-generate --scoring ece (evaluation, H3): the scorer's confidences ---------------
    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq's search; when a `--scoring ece` scorer is active, also teacher-force the
        batch's references through the same models and hand it their calibration summary
        (scorers only ever receive strings or tokens: evaluation/ece_scorer.py)."""
        hypos = super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                       constraints=constraints)
        from ..evaluation import ece_scorer  # registered with the plugin; imported lazily here

        scorer = ece_scorer.active_scorer()
        if scorer is not None and sample.get("target") is not None:
            from ..ensemble_scoring import summarize_batch

            scorer.add_calibration(summarize_batch(models, sample, self.target_dictionary.pad()))
        return hypos

