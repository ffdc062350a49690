"""In-process decoding (evaluation/decoding.py) finds what fairseq-generate finds."""

import math
import os
import subprocess
import sys

import pytest

from ensdist_fairseq.evaluation import decoding
from ensdist_fairseq.teachers import teacher_forcing

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(decoding.__file__)))  # ensdist_fairseq/


def fairseq_generate(data, paths, *args):
    """{id: (T- line, [(D- score base 2, D- text)], [P- scores base 2])} from fairseq-generate."""
    p = subprocess.run(
        [
            os.path.join(BIN, "fairseq-generate"),
            data,
            "--path",
            ":".join(paths),
            "--gen-subset",
            "test",
            "--user-dir",
            USER_DIR,
            "--post-process",
            "sentencepiece",
            "--cpu",
            "--required-batch-size-multiple",
            "1",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = {}
    for line in p.stdout.splitlines():
        kind, _, rest = line.partition("-")
        if kind not in ("T", "D", "P") or not rest[:1].isdigit():
            continue
        sid, _, rest = rest.partition("\t")
        entry = out.setdefault(int(sid), [None, [], []])
        if kind == "T":
            entry[0] = rest
        elif kind == "D":
            score, _, text = rest.partition("\t")
            entry[1].append((float(score), text))
        else:
            entry[2].append([float(x) for x in rest.split()])
    return out


@pytest.mark.parametrize("members", [1, 2])
def test_same_hypotheses_and_scores_as_fairseq_generate(tiny_data, tiny_checkpoints, members):
    paths = tiny_checkpoints[:members]
    gen = dict(beam=4, nbest=2, lenpen=0.6, max_len_a=1.5, max_len_b=10)
    ref = fairseq_generate(
        tiny_data,
        paths,
        "--beam",
        4,
        "--nbest",
        2,
        "--lenpen",
        0.6,
        "--max-len-a",
        1.5,
        "--max-len-b",
        10,
        "--max-tokens",
        4000,
    )
    models, task = teacher_forcing.load_models(paths, tiny_data)
    task.load_dataset("test")
    got = {
        d.id: d
        for d in decoding.decode(
            models, task, task.dataset("test"), decoding.generation_config(**gen), max_tokens=50
        )
    }
    assert sorted(got) == sorted(ref) == list(range(len(task.dataset("test"))))
    for sid, (target, dlines, plines) in ref.items():
        d = got[sid]
        assert d.reference == target
        assert [h.text for h in d.hypotheses] == [text for _s, text in dlines]
        for h, (score2, _t), p2 in zip(d.hypotheses, dlines, plines):
            assert h.score / math.log(2) == pytest.approx(score2, abs=1e-4)
            assert (h.positional_scores / math.log(2)).tolist() == pytest.approx(p2, abs=2e-4)
            assert h.tokens[-1].item() == task.target_dictionary.eos()
            assert len(h.tokens) == len(h.positional_scores)


def test_unknown_generation_option_is_refused():
    with pytest.raises(ValueError, match="nosuch"):
        decoding.generation_config(nosuch=1)


def test_bleu_equals_fairseq_generate_bleu(tiny_data, tiny_checkpoints):
    from ensdist_fairseq.evaluation import bleu

    ref = fairseq_generate(tiny_data, tiny_checkpoints, "--beam", 3, "--max-tokens", 4000)
    ids = sorted(ref)
    expected = bleu.corpus_bleu([ref[i][1][0][1] for i in ids], [ref[i][0] for i in ids])
    models, task = teacher_forcing.load_models(tiny_checkpoints, tiny_data)
    task.load_dataset("test")
    ds = task.dataset("test")
    got = bleu.decode_bleu(
        models,
        task,
        ds,
        decoding.generation_config(beam=3),
        teacher_forcing.plan_batches(ds, max_tokens=64),
    )
    assert got == expected and got.num_sentences == len(ds)


def test_accepted_options_have_fairseq_defaults():
    import argparse

    from fairseq.dataclass.configs import GenerationConfig

    from ensdist_fairseq.cli import generation_options

    ap = argparse.ArgumentParser()
    generation_options.add_generation_options(ap)
    overrides = generation_options.generation_overrides(ap.parse_args([]))
    defaults = GenerationConfig()
    assert overrides == {k: getattr(defaults, k) for k in overrides}
