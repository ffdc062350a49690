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
from ..checkpoint_checks import sha256_of_file
from ..data.split_fingerprint import fingerprint
from ..data.teacher_dataset import TeacherStoreDataset, store_lengths_match
from ..store.format import StoreReader
from ..store.provenance import StoreError

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
        cfg = self.cfg
        reader = StoreReader(cfg.teacher_store)
        p = reader.provenance
        paths = utils.split_paths(cfg.data)
        if len(paths) != 1:
            raise StoreError(f"--teacher-store: one store covers one data directory, --data has {len(paths)}")
        dict_path = os.path.join(paths[0], f"dict.{cfg.target_lang}.txt")
        if sha256_of_file(dict_path) != p.dictionary_sha256 or len(self.tgt_dict) != p.vocab_size:
            raise StoreError(f"{cfg.teacher_store}: made with another dictionary than {dict_path}")
        if p.split != cfg.train_subset:
            raise StoreError(f"{cfg.teacher_store}: memoizes split '{p.split}', training uses '{cfg.train_subset}'")
        if reader.first_sentence != 0 or p.num_sentences != reader.num_sentences:
            raise StoreError(f"{cfg.teacher_store}: holds sentences {reader.first_sentence}.. of a split: "
                             "a chunk, not a whole store")
        if cfg.teacher_topk is None:
            cfg.teacher_topk = p.topk
        if not 1 <= cfg.teacher_topk <= p.topk:
            raise StoreError(f"--teacher-topk {cfg.teacher_topk}: the store {cfg.teacher_store} holds V'={p.topk}")
        return reader

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        # The store is opened only with the training split: a student checkpoint keeps this
        # task's config, and generating with it must not need the store.
        if self.cfg.teacher_store and split == self.cfg.train_subset:
            self.datasets[split] = self._wrap(self.datasets[split])

    def _wrap(self, dataset) -> TeacherStoreDataset:
        reader, path = self._open_store(), self.cfg.teacher_store
        p = reader.provenance
        if len(dataset) != p.num_sentences:
            raise StoreError(f"{path}: {p.num_sentences} sentences, split '{p.split}' has {len(dataset)}")
        fp = fingerprint(dataset)
        bad = store_lengths_match(reader, fp.target_lengths)
        if bad is not None:
            raise StoreError(f"{path}: sentence {bad} has {reader.num_rows(bad)} rows, "
                             f"its target has {fp.target_lengths[bad]} tokens")
        if fp.target_checksum != p.target_checksum:
            raise StoreError(f"{path}: target token checksum differs from split '{p.split}' of the data")
        if fp.source_checksum != p.source_checksum:
            raise StoreError(f"{path}: source token checksum differs from split '{p.split}' of the data")
        logger.info(f"teacher store {path}: K={p.num_teachers}, V'={self.cfg.teacher_topk} of {p.topk}, "
                    f"{p.num_sentences} sentences, provenance checked")
        return TeacherStoreDataset(dataset, reader, self.cfg.teacher_topk, self.tgt_dict.pad())

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

