"""A LanguagePairDataset wrapper that attaches the memoized teacher entries to each sample.

Samples are looked up by their fairseq dataset index (the store's sentence index) and the
collated tensors are filled through the collated target's non-pad mask, so the entries follow
the target through fairseq's shuffling, length sorting, bucketing and left or right padding
without assuming any of them. Everything else is delegated to the wrapped dataset.
"""

import torch
from fairseq.data import BaseWrapperDataset

from ensdist_fairseq.store.format import StoreReader
from ensdist_fairseq.store.provenance import StoreError


class TeacherStoreDataset(BaseWrapperDataset):
    """sample["teacher"] = {"indices": (B, T, V') long, "probs": (B, T, V') float16,
    "precision": (B, T) float64}, aligned to sample["target"], zeros at pads."""

    def __init__(self, dataset, reader: StoreReader, topk: int, pad_idx: int):
        super().__init__(
            dataset
        )  # the task checked the store against the dataset (StoreReader.check_data)
        self.reader, self.topk, self.pad_idx = reader, topk, pad_idx

    def __getitem__(self, index):
        item = self.dataset[index]
        indices, probs, precision = self.reader.read(int(index), self.topk)
        # the store holds unpadded tokens; --num-batch-buckets may have padded the target
        num_tokens = int(item["target"].ne(self.pad_idx).sum())
        if len(indices) != num_tokens:
            raise StoreError(
                f"{self.reader.path}: sentence {index} has {len(indices)} rows, "
                f"its target has {num_tokens} tokens"
            )
        item["teacher"] = (
            torch.from_numpy(indices),
            torch.from_numpy(probs),
            torch.from_numpy(precision),
        )
        return item

    def collater(self, samples, pad_to_length=None):
        batch = self.dataset.collater(samples, pad_to_length=pad_to_length)
        if not batch:
            return batch
        by_id = {s["id"]: s["teacher"] for s in samples}
        entries = [by_id[i] for i in batch["id"].tolist()]  # the collater reorders samples
        target = batch["target"]
        mask = target.ne(self.pad_idx)
        B, T = target.shape
        indices = torch.zeros(B, T, self.topk, dtype=torch.long)
        # float16 probabilities (the store's dtype, so lossless) and float64 precisions: fairseq's
        # --fp16/--bf16 sample conversion narrows float32 tensors only, and beta0_hat goes beyond
        # half's 65504. The criterion computes in float32 (docs/criterion.md, mixed precision).
        probs = torch.zeros(B, T, self.topk, dtype=torch.float16)
        precision = torch.zeros(B, T, dtype=torch.float64)
        # boolean-mask assignment walks the batch row-major: sentence b's tokens in order
        indices[mask] = torch.cat([e[0] for e in entries])
        probs[mask] = torch.cat([e[1] for e in entries]).to(probs.dtype)  # stored: float16
        precision[mask] = torch.cat([e[2] for e in entries]).to(precision.dtype)  # stored: float32
        batch["teacher"] = {"indices": indices, "probs": probs, "precision": precision}
        return batch

    # BaseWrapperDataset does not forward these; fairseq's batching and the collater need them.
    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(indices)

    @property
    def src_sizes(self):
        return self.dataset.src_sizes

    @property
    def tgt_sizes(self):
        return self.dataset.tgt_sizes

    @property
    def buckets(self):
        return self.dataset.buckets
