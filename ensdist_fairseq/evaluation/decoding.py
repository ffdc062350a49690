"""In-process decoding with fairseq's SequenceGenerator on models already loaded (fairseq glue).

    models, task --generation_config/build_generator--> generator
    dataset --teacher_forcing.plan_batches/samples--> samples --task.inference_step--> n-best
    n-best --tgt_dict.string(post_process)--> the strings fairseq-generate prints as D- lines

This is what `fairseq-generate --path a.pt:b.pt --post-process sentencepiece` does, without the
subprocess, the stdout parsing or a second load of the models: an ensemble is searched by
fairseq's EnsembleModel (mean of the members' probabilities at every step), hypotheses are
post-processed exactly as fairseq-generate does (utils.post_process_prediction minus its
encode_line, which only adds the hypothesis' words to the dictionary), and the reference is
the detokenized target with <unk> escaped, as in fairseq-generate's T- lines.

Batching is teacher_forcing.plan_batches (one batching path for every reader of models), so
sentences come out in length order, not id order: key results by `Decoded.id`. Nothing is kept
between batches (a generator of results), so memory stays flat over the split.

Scores are fairseq's: natural logarithms (fairseq-generate prints them divided by ln 2);
`score` is the sum of the positional scores divided by len(tokens) ** lenpen (unless
--unnormalized).
"""

from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ensdist_fairseq.teachers import teacher_forcing


@dataclass
class Hypothesis:
    tokens: torch.Tensor  # (L,) int64 on the CPU, ends with EOS
    positional_scores: torch.Tensor  # (L,) float32 on the CPU: ln p(token_t | prefix, source)
    score: float  # fairseq's hypothesis score (length-normalized, natural log)
    # (M, L) float32 per-position values a search_model returned in fairseq's attention slot
    # (uncertainty/in_search.py: token measures carried along the beam); None otherwise
    extra: Optional[torch.Tensor] = None
    # the detokenizer of `text`: callers mostly read only the best hypothesis's text, and
    # building every n-best string costs as much as the uncertainty measures themselves
    render: Optional[Callable[[torch.Tensor], str]] = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """Detokenized, as fairseq-generate's D- line (built on first use)."""
        if not hasattr(self, "_text"):
            self._text = self.render(self.tokens)
        return self._text


@dataclass
class Decoded:
    id: int  # the sentence's index in the split
    source: str  # detokenized source (S- line)
    reference: Optional[str]  # detokenized reference (T- line), None without targets
    hypotheses: List[Hypothesis]  # n-best, best first


def generation_config(**overrides):
    """fairseq's GenerationConfig (beam, nbest, lenpen, max_len_a, max_len_b, ...) with overrides;
    unknown names raise ValueError."""
    from fairseq.dataclass.configs import GenerationConfig

    cfg = GenerationConfig()
    for name, value in overrides.items():
        if not hasattr(cfg, name):
            raise ValueError(f"unknown generation option {name!r}")
        setattr(cfg, name, value)
    return cfg


def resolve_post_process(symbol: Optional[str], dictionary) -> Optional[str]:
    """fairseq's post-process symbol for `dictionary`'s text (None keeps the pieces as they are).

    "auto": what the data was made with, from its symbols: SentencePiece pieces carry U+2581
    (word start), subword-nmt BPE marks continued words with a trailing "@@"; neither means
    whole words (or a scheme fairseq cannot undo), which are kept as they are."""
    if symbol == "auto":
        symbols = dictionary.symbols[dictionary.nspecial :]
        if any("\u2581" in s for s in symbols):
            return "sentencepiece"
        if any(s.endswith("@@") for s in symbols):
            return "subword_nmt"
        return None
    return None if symbol in (None, "none") else symbol


def symbols_to_strip(generator) -> set:
    """What fairseq-generate leaves out of printed strings (get_symbols_to_strip_from_output)."""
    return getattr(generator, "symbols_to_strip_from_output", None) or {generator.eos}


class _Cfg:  # prepare_for_inference_ reads cfg.generation only
    def __init__(self, generation):
        self.generation = generation


def decode(
    models: Sequence[torch.nn.Module],
    task,
    dataset,
    gen_cfg=None,
    max_tokens: Optional[int] = None,
    batch_size: Optional[int] = None,
    ids: Optional[np.ndarray] = None,
    device: Optional[torch.device] = None,
    post_process: Optional[str] = "sentencepiece",
    where: str = "split",
    batches: Optional[Sequence[np.ndarray]] = None,
    search_model=None,
) -> Iterator[Decoded]:
    """Yield each sentence's n-best (gen_cfg.nbest, best first) as fairseq-generate finds them.

    models: loaded and on `device` (teacher_forcing.load_models); an ensemble is searched jointly.
    gen_cfg: generation_config(...) (default: fairseq's defaults, beam 5).
    post_process: fairseq's --post-process/--remove-bpe symbol ("sentencepiece", "subword_nmt",
        "@@ ", ...; None keeps the pieces).
    batches: precomputed plan_batches(...) (default: planned here from ids/max_tokens/batch_size).
    """
    gen_cfg = gen_cfg if gen_cfg is not None else generation_config()
    if device is None:
        device = next(iter(models[0].parameters())).device
    if batches is None:
        teacher_forcing.check_sizes(
            dataset, teacher_forcing.max_positions(task, models), max_tokens, where
        )
        batches = teacher_forcing.plan_batches(dataset, ids, max_tokens, batch_size)
    for model in models:
        # What fairseq-generate does before decoding (beamable matmul; no-op if done before).
        model.prepare_for_inference_(_Cfg(gen_cfg))
    # search_model: an EnsembleModel (subclass) over `models` to search with instead of fairseq's
    # own, e.g. one that returns per-step values in the attention slot (Hypothesis.extra).
    generator = task.build_generator(
        list(models) if search_model is None else search_model, gen_cfg
    )
    tgt_dict, src_dict = task.target_dictionary, getattr(task, "source_dictionary", None)
    strip = symbols_to_strip(generator)
    nbest = gen_cfg.nbest

    def render(tokens):
        return tgt_dict.string(tokens.int(), post_process, extra_symbols_to_ignore=strip)

    with torch.no_grad():
        for sample in teacher_forcing.samples(dataset, batches, device):
            prefix = sample["target"][:, : gen_cfg.prefix_size] if gen_cfg.prefix_size > 0 else None
            hypos = task.inference_step(
                generator,
                list(models),
                sample,
                prefix_tokens=prefix,
                constraints=sample.get("constraints"),
            )
            target = sample.get("target")
            for i, sid in enumerate(sample["id"].tolist()):
                source = ""
                if src_dict is not None:
                    src = sample["net_input"]["src_tokens"][i]
                    source = src_dict.string(src[src.ne(src_dict.pad())], post_process)
                reference = None
                if target is not None:
                    ref = target[i][target[i].ne(tgt_dict.pad())].int().cpu()
                    reference = tgt_dict.string(
                        ref, post_process, escape_unk=True, extra_symbols_to_ignore=strip
                    )
                best = []
                for h in hypos[i][:nbest]:
                    tokens = h["tokens"].cpu()
                    best.append(
                        Hypothesis(
                            tokens=tokens,
                            positional_scores=h["positional_scores"].float().cpu(),
                            score=float(h["score"]),
                            render=render,
                            extra=None if search_model is None else h["attention"].float().cpu(),
                        )
                    )
                yield Decoded(id=sid, source=source, reference=reference, hypotheses=best)
