"""Per-sentence sequence-level uncertainty of a system on a split (fairseq glue).

    dataset --evaluation.decoding.decode (beam B, n-best B; in_search.MeasuringEnsemble)-->
    each sentence's B hypotheses with the token measures of every position (in_search.py)
    [--teacher-forced: hypotheses --a second pass through every member--> token measures]
    token measures + ln P(y|x) --sequence.py--> one record per sentence

Systems (SYSTEM_KINDS): "single" (one ordinary model, incl. a mean-KD student: entropy only),
"ensemble" (K >= 2 members, the mean of their probabilities decodes; measures from the members),
"dirichlet" (one Proxy-Dirichlet student: decodes with its predictive option; the measures from
α = exp(z) + 1 of its raw logits, with the expected categorical of `dirichlet_form`: by default
the predictive it decodes with, measures.DIRICHLET_FORMS).
Nothing is kept across chunks: memory is flat in the size of the split.
"""

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.uncertainty import fast_measures as F
from ensdist_fairseq.uncertainty import measures as M
from ensdist_fairseq.uncertainty import sequence as S

SYSTEM_KINDS = ("single", "ensemble", "dirichlet")
AVAILABLE = {
    "single": M.SINGLE_MEASURES,
    "ensemble": M.ENSEMBLE_MEASURES,
    "dirichlet": M.DIRICHLET_MEASURES,
}
POSITIONS_PER_CHUNK = 2048  # token positions per measure computation: bounds K x P x V buffers


def system_kind(models: Sequence[torch.nn.Module]) -> str:
    if len(models) > 1:
        return "ensemble"
    return "dirichlet" if getattr(models[0], "predicts_dirichlet", False) else "single"


def dirichlet_expected(models, form: str) -> Optional[str]:
    """The expected categorical of a Dirichlet student's measures (None for other systems)."""
    if system_kind(models) != "dirichlet":
        return None
    return M.dirichlet_expected(form, models[0].dirichlet_predictive)


def check_measures(kind: str, requested: Sequence[str]) -> List[str]:
    """The requested measures, or ValueError naming one the system cannot give."""
    for name in requested:
        if name not in M.ENSEMBLE_MEASURES:
            raise EnsdistError(
                f"--measures {name}: unknown (one of {', '.join(M.ENSEMBLE_MEASURES)})"
            )
        if name not in AVAILABLE[kind]:
            raise EnsdistError(
                f"--measures {name}: a single model (or mean-KD student) gives only total "
                "uncertainty (its entropy); knowledge uncertainty needs an ensemble "
                "(--path a.pt:b.pt) or a Proxy-Dirichlet student"
            )
    return list(requested)


def hypothesis_batch(dataset, decoded: Sequence, device):
    """(net_input, target, mask, new_order) of every hypothesis of `decoded`: each source once
    (net_input's src_*), new_order maps each hypothesis to its source, prev_output_tokens and
    target are the hypotheses (</s> moved to the front / kept at the end), mask their positions."""
    from fairseq.data import data_utils

    pad, eos = dataset.src_dict.pad(), dataset.src_dict.eos()
    sources = [dataset[d.id]["source"] for d in decoded]
    hyps = [h.tokens for d in decoded for h in d.hypotheses]
    new_order = torch.repeat_interleave(
        torch.arange(len(decoded)), torch.tensor([len(d.hypotheses) for d in decoded])
    )
    tgt_pad, tgt_eos = dataset.tgt_dict.pad(), dataset.tgt_dict.eos()
    batch = {
        "src_tokens": data_utils.collate_tokens(
            sources, pad, eos, left_pad=dataset.left_pad_source
        ),
        "src_lengths": torch.tensor([s.numel() for s in sources]),
        "prev_output_tokens": data_utils.collate_tokens(
            hyps, tgt_pad, tgt_eos, left_pad=False, move_eos_to_beginning=True
        ),
    }
    target = data_utils.collate_tokens(hyps, tgt_pad, tgt_eos, left_pad=False)
    return (
        {k: v.to(device) for k, v in batch.items()},
        target.to(device),
        target.ne(tgt_pad).to(device),
        new_order.to(device),
    )


def _chunked(fn, *position_tensors) -> Dict[str, torch.Tensor]:
    """fn over slices of the position dimension (dim -2), concatenated: bounded memory."""
    n = position_tensors[0].size(-2)
    parts = [
        fn(*(t[..., i : i + POSITIONS_PER_CHUNK, :] for t in position_tensors))
        for i in range(0, n, POSITIONS_PER_CHUNK)
    ]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _member_output(model, net_input: dict, new_order: torch.Tensor, mask: torch.Tensor):
    """(raw logits, ln predictive) at the hypotheses' positions only, (P, V) each.

    Each source is encoded once and its encoder output repeated for its hypotheses (fairseq's
    reorder_encoder_out, as beam search does); the output projection runs on the P real
    positions only, not on padding. Models without this encoder/decoder split run whole."""
    decoder = getattr(model, "decoder", None)
    if (
        hasattr(model, "encoder")
        and hasattr(decoder, "extract_features")
        and hasattr(decoder, "output_layer")
    ):
        enc = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        enc = model.encoder.reorder_encoder_out(enc, new_order)
        features, extra = decoder.extract_features(net_input["prev_output_tokens"], encoder_out=enc)
        net_output = (decoder.output_layer(features[mask]), extra)
    else:
        full = model(
            src_tokens=net_input["src_tokens"].index_select(0, new_order),
            src_lengths=net_input["src_lengths"].index_select(0, new_order),
            prev_output_tokens=net_input["prev_output_tokens"],
        )
        net_output = (full[0][mask], full[1])
    return net_output[0], model.get_normalized_probs(net_output, log_probs=True).float()


@torch.no_grad()
def token_measures(
    models,
    kind: str,
    net_input: dict,
    target: torch.Tensor,
    mask: torch.Tensor,
    new_order: torch.Tensor,
    dirichlet_expected: Optional[str] = None,
    ensemble_combination: str = M.ENSEMBLE_COMBINATIONS[0],
):
    """({measure: (N, T) values, 0 at pads}, (N,) ln P(y|x) under the system's predictive)."""
    outputs = [_member_output(m, net_input, new_order, mask) for m in models]
    if kind == "ensemble" and ensemble_combination == "expectation-of-products":
        stacked = torch.stack([lp for _, lp in outputs])  # (K, P, V)
        k = stacked.size(0)
        tokens = target[mask].view(1, -1, 1).expand(k, -1, 1)
        picked = torch.zeros((k, *mask.shape), dtype=torch.float64, device=mask.device)
        picked[:, mask] = stacked.gather(-1, tokens).squeeze(-1).double()
        log_w = M.member_log_weights(S.prefix_log_probs(picked, mask)[:, mask])  # (K, P)
        flat = _chunked(
            lambda lp, lw: F.ensemble_measures(lp, lw.squeeze(-1)), stacked, log_w.unsqueeze(-1)
        )
        hyp_lp = S.expectation_of_products_log_probs(picked.sum(-1))
        return _unflatten(flat, mask), hyp_lp
    if kind == "ensemble":
        stacked = torch.stack([lp for _, lp in outputs])  # (K, P, V)
        log_pred = M.ensemble_log_mean(stacked)
        flat = _chunked(F.ensemble_measures, stacked)
    elif kind == "dirichlet":
        log_pred = outputs[0][1]
        flat = _chunked(lambda z: F.dirichlet_measures(z, dirichlet_expected), outputs[0][0])
    else:
        log_pred = outputs[0][1]
        flat = _chunked(F.single_measures, log_pred)
    values = _unflatten(flat, mask)
    picked = log_pred.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1).double()
    rows = mask.nonzero(as_tuple=True)[0]
    hyp_lp = torch.zeros(mask.size(0), dtype=torch.float64, device=mask.device).index_add(
        0, rows, picked
    )
    return values, hyp_lp


def _unflatten(flat: Dict[str, torch.Tensor], mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """(P,) values at the mask's positions -> (N, T), 0 at pads, float64."""
    values = {}
    for name, v in flat.items():
        full = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        full[mask] = v.double()
        values[name] = full
    return values


def _in_search_values(chunk: Sequence, measures: Sequence[str], posterior: bool = False):
    """({measure: (N, T)}, mask, (N,) ln P) from the measures the search carried (in_search.py).

    posterior (expectation-of-products): after the measures come each member's ln P_k(y_<l) and
    ln P_k(</s>) (K rows each); ln P_k(y|x) is their sum at the last position (</s>)."""
    hyps = [h for d in chunk for h in d.hypotheses]
    longest = max(h.extra.size(1) for h in hyps)
    mask = torch.zeros(len(hyps), longest, dtype=torch.bool)
    rows = hyps[0].extra.size(0)
    stacked = torch.zeros(rows, len(hyps), longest, dtype=torch.float64)
    for i, h in enumerate(hyps):
        mask[i, : h.extra.size(1)] = True
        stacked[:, i, : h.extra.size(1)] = h.extra.double()
    if posterior:
        k = (rows - len(measures)) // 2
        last = mask.sum(-1) - 1
        at_end = stacked[len(measures) :, torch.arange(len(hyps)), last]  # (2K, N)
        hyp_lp = S.expectation_of_products_log_probs(at_end[:k] + at_end[k:])
    else:
        hyp_lp = torch.tensor(
            [float(h.positional_scores.double().sum()) for h in hyps], dtype=torch.float64
        )
    return {m: stacked[j] for j, m in enumerate(measures)}, mask, hyp_lp


def score_split(
    models,
    task,
    dataset,
    set_name: str,
    gen_cfg,
    measures: Sequence[str],
    max_tokens: int,
    sentences_per_chunk: int = 64,
    temperature: float = 1.0,
    chrf: bool = True,
    limit: Optional[int] = None,
    teacher_forced: bool = False,
    post_process: Optional[str] = None,
    dirichlet_form: str = M.DIRICHLET_FORMS[0],
    ensemble_combination: str = M.ENSEMBLE_COMBINATIONS[0],
) -> Iterator[dict]:
    """Yield one record per sentence of `dataset`: its output and sequence-level measures.

    Token measures come from inside the beam search (in_search.py, default) or, with
    teacher_forced, from a second pass over the hypotheses (the same values, twice the cost).
    post_process: fairseq's symbol for the text of outputs, sources and references (None: pieces).
    """
    from ensdist_fairseq.evaluation.decoding import decode
    from ensdist_fairseq.uncertainty.in_search import MeasuringEnsemble

    kind = system_kind(models)
    expected = dirichlet_expected(models, dirichlet_form)
    device = next(iter(models[0].parameters())).device
    measures = list(measures)
    src_dict = dataset.src_dict
    chunk: List = []

    def flush():
        if teacher_forced:
            net_input, target, mask, new_order = hypothesis_batch(dataset, chunk, device)
            values, hyp_lp = token_measures(
                models, kind, net_input, target, mask, new_order, expected, ensemble_combination
            )
        else:
            values, mask, hyp_lp = _in_search_values(chunk, measures, search_model.posterior)
        start = 0
        for d in chunk:
            b = len(d.hypotheses)
            rows = slice(start, start + b)
            start += b
            seq = S.sequence_measures(
                {m: values[m][rows] for m in measures}, mask[rows], hyp_lp[rows], temperature
            )
            best = d.hypotheses[0]
            src = dataset[d.id]["source"]
            record = {
                "set": set_name,
                "id": d.id,
                "output": best.text,
                "source": d.source,
                "reference": d.reference,
                "score": best.score,
                "num_hypotheses": b,
                "log_prob": float(hyp_lp[rows][0]),
                "length": int(mask[rows][0].sum()),
                "uncertainty": seq,
                # in the source dictionary's pieces, </s> excluded: the OOD manifest's unit
                "source_length": int(src.ne(src_dict.eos()).sum()),
                "source_unk": int(src.eq(src_dict.unk()).sum()),
            }
            if chrf and d.reference is not None:
                record["chrf"] = sentence_chrf(best.text, d.reference)
            yield record

    search_model = (
        None
        if teacher_forced
        else MeasuringEnsemble(models, kind, measures, expected, ensemble_combination)
    )
    ids = None if limit is None else np.arange(min(limit, len(dataset)), dtype=np.int64)
    for d in decode(
        models,
        task,
        dataset,
        gen_cfg,
        max_tokens=max_tokens,
        ids=ids,
        where=set_name,
        search_model=search_model,
        post_process=post_process,
    ):
        if not d.hypotheses:  # fairseq found nothing (cannot happen with min_len 1): skip it
            continue
        chunk.append(d)
        if len(chunk) == sentences_per_chunk:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


def sentence_chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score)


def ood_dataset(task, bin_prefix: str):
    """A source-only inference dataset of a binarized OOD set (task's source dictionary)."""
    from fairseq.data import data_utils

    src = data_utils.load_indexed_dataset(bin_prefix, task.source_dictionary, dataset_impl="mmap")
    if src is None:
        raise EnsdistError(f"{bin_prefix}.bin/.idx: not found")
    return task.build_dataset_for_inference(src, src.sizes)
