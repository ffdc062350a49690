"""BLEU of a model or an ensemble: in-process decoding (evaluation/decoding.py), sacreBLEU scores.

The models already loaded decode the split with fairseq's SequenceGenerator (an ensemble is
searched jointly: the mean of its members' probabilities at every step) and the hypotheses are
detokenized as fairseq-generate's D- lines (its `--post-process`: decoding.resolve_post_process
picks the data's own scheme by default); sacreBLEU scores
them, so the result carries sacreBLEU's signature, against the raw reference file when given
(the binarized one may contain <unk>) or else fairseq's detokenized targets (T- lines).
"""

from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence

import sacrebleu

from ensdist_fairseq.errors import EnsdistError


@dataclass
class BleuResult:
    bleu: float
    signature: str
    num_sentences: int
    # per sentence, sacreBLEU's sufficient statistics (hypothesis and reference length, then
    # matching and total n-gram counts for n = 1..4): corpus BLEU of any resample of sentences
    # is a function of their sums, which is what the report's paired bootstrap needs
    sentence_stats: Optional[List[List[int]]] = field(default=None, repr=False, compare=False)

    def to_dict(self):
        d = asdict(self)
        d.pop("sentence_stats")
        return d


def corpus_bleu(hypotheses: List[str], references: List[str]) -> BleuResult:
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    stats = [
        [int(x) for x in row] for row in metric._extract_corpus_statistics(hypotheses, [references])
    ]
    return BleuResult(round(score.score, 2), str(metric.get_signature()), len(hypotheses), stats)


def read_references(reference_file: str, num_sentences: int) -> List[str]:
    """The raw references, one a line in dataset order; EnsdistError if the count differs."""
    with open(reference_file, encoding="utf-8", newline="\n") as f:
        raw = f.read().split("\n")
    if raw and raw[-1] == "":
        raw.pop()  # the final newline
    raw = [line[:-1] if line.endswith("\r") else line for line in raw]  # CRLF files
    if len(raw) != num_sentences:
        raise EnsdistError(f"{reference_file}: {len(raw)} references for {num_sentences} sentences")
    return raw


def decode_bleu(
    models: Sequence,
    task,
    dataset,
    gen_cfg,
    batches,
    device=None,
    reference_file: Optional[str] = None,
    post_process: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> BleuResult:
    """Decode the `batches` of `dataset` with `models` (already loaded) and score with sacreBLEU.

    progress(sentences done, sentences in total) is called after every sentence's hypotheses."""
    from ensdist_fairseq.evaluation import decoding  # imports fairseq

    references = read_references(reference_file, len(dataset)) if reference_file else None
    hyps, refs = [None] * len(dataset), [None] * len(dataset)
    total = sum(len(b) for b in batches)
    done = 0
    for d in decoding.decode(
        models, task, dataset, gen_cfg, batches=batches, device=device, post_process=post_process
    ):
        hyps[d.id], refs[d.id] = d.hypotheses[0].text, d.reference
        done += 1
        if progress is not None:
            progress(done, total)
    ids = [i for i, h in enumerate(hyps) if h is not None]
    if len(ids) != len(dataset):
        raise RuntimeError(f"decoded {len(ids)} of {len(dataset)} sentences")
    return corpus_bleu(hyps, references if references is not None else refs)
