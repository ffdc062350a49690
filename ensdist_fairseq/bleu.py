"""BLEU of a model or an ensemble: fairseq-generate decodes, sacreBLEU scores.

fairseq-generate does the search (``--path a.pt:b.pt`` averages the members' probabilities at
every step) and detokenizes with ``--post-process sentencepiece``; we score the D- lines with
sacreBLEU ourselves so the result carries sacreBLEU's signature, and can score against the raw
reference file rather than the binarized one (which may contain <unk>).
"""
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import sacrebleu

from .atomic_files import write_text_atomically


@dataclass
class BleuResult:
    bleu: float
    signature: str
    num_sentences: int

    def to_dict(self):
        return asdict(self)


def fairseq_command(name: str) -> str:
    """The fairseq console script next to the running interpreter (the venv's), else PATH's."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def parse_generate_output(text: str):
    """(hypotheses, references) from fairseq-generate's D-/T- lines, ordered by sentence id."""
    hyps, refs = {}, {}
    for line in text.splitlines():
        if line.startswith("D-"):
            sid, _score, hyp = (line[2:].split("\t") + ["", ""])[:3]
            hyps[int(sid)] = hyp
        elif line.startswith("T-"):
            sid, ref = (line[2:].split("\t", 1) + [""])[:2]
            refs[int(sid)] = ref
    ids = sorted(hyps)
    if sorted(refs) != ids:
        raise ValueError("fairseq-generate output: hypotheses and references do not match up")
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def generate(data_dir: str, paths: Sequence[str], split: str = "test", beam: int = 5,
             lenpen: float = 1.0, max_tokens: int = 4000, cpu: bool = True,
             user_dir: Optional[str] = None, extra_args: Sequence[str] = ()) -> str:
    """Run fairseq-generate over `split` with the ensemble of `paths`; return its stdout."""
    if user_dir is None:
        user_dir = os.path.dirname(os.path.abspath(__file__))
    cmd = [
        fairseq_command("fairseq-generate"), data_dir, "--user-dir", user_dir,
        "--path", ":".join(paths), "--gen-subset", split, "--beam", str(beam),
        "--lenpen", str(lenpen), "--max-tokens", str(max_tokens), "--nbest", "1",
        "--post-process", "sentencepiece", "--log-format", "simple",
        # fairseq 0.12's batch_by_size drops a last batch that is not a multiple of this
        # (default 8): every test sentence must be translated, so ask for multiples of 1.
        "--required-batch-size-multiple", "1", *extra_args,
    ]
    if cpu:
        cmd.append("--cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"fairseq-generate failed on {':'.join(paths)}: {tail[0]}")
    return proc.stdout


def corpus_bleu(hypotheses: List[str], references: List[str]) -> BleuResult:
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return BleuResult(round(score.score, 2), str(metric.get_signature()), len(hypotheses))


def bleu_of(data_dir: str, paths: Sequence[str], split: str = "test",
            reference_file: Optional[str] = None, hypotheses_out: Optional[str] = None,
            **generate_kwargs) -> BleuResult:
    """Decode `split` with the ensemble of `paths` and score it with sacreBLEU.

    reference_file: raw (detokenized) references, one per line in dataset order; defaults to
    fairseq's detokenized T- lines.
    """
    hyps, refs = parse_generate_output(generate(data_dir, paths, split, **generate_kwargs))
    if reference_file is not None:
        with open(reference_file, encoding="utf-8") as f:
            raw = f.read().splitlines()
        if len(raw) != len(hyps):
            raise ValueError(f"{reference_file}: {len(raw)} references for {len(hyps)} hypotheses")
        refs = raw
    if hypotheses_out is not None:
        write_text_atomically(hypotheses_out, "\n".join(hyps) + "\n")
    return corpus_bleu(hyps, refs)
