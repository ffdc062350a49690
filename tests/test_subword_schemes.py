"""Any subword scheme: SentencePiece, subword-nmt BPE and word-level data each decode to the text
fairseq-generate prints (its D- lines) and score the BLEU sacreBLEU gives those lines, with the
post-processing read off the data's dictionary (`--post-process auto`, the default)."""

import json
import os
import subprocess
import sys

import pytest
import sacrebleu
import tiny_fairseq

import ensdist_fairseq
from ensdist_fairseq.cli import evaluate

pytestmark = pytest.mark.slow  # trains tiny models and runs fairseq-generate

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.abspath(ensdist_fairseq.__file__))


def _bpe_split(line: str) -> str:
    """subword-nmt's output format: a word cut into pieces, every piece but the last ending '@@'."""
    out = []
    for word in line.split():
        out += [word[:2] + "@@", word[2:]] if len(word) > 2 else [word]
    return " ".join(out)


def _write_bpe_copy(raw: str, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(raw):
        with open(os.path.join(raw, name)) as f, open(os.path.join(out, name), "w") as g:
            g.writelines(_bpe_split(line) + "\n" for line in f)
    return out


@pytest.fixture(scope="module")
def schemes(tiny_data, tiny_checkpoints, tmp_path_factory):
    """{scheme: (bin dir, checkpoint, the post-process fairseq-generate needs)}."""
    from ensdist_fairseq.cli import sentencepiece as spm_cli
    from ensdist_fairseq.corpus import sentencepiece_prep

    root = tmp_path_factory.mktemp("schemes")
    raw = str(root / "raw")
    tiny_fairseq.write_synthetic_raw(raw)
    bpe_bin = tiny_fairseq.binarize(_write_bpe_copy(raw, str(root / "bpe")), str(root / "bpe_bin"))
    sentencepiece_prep.run(
        spm_cli.build_parser().parse_args(
            [
                "--raw",
                raw,
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "48",
                "--out",
                str(root / "spm"),
            ]
        )
    )
    spm_bin = tiny_fairseq.binarize(str(root / "spm"), str(root / "spm_bin"))
    return {
        "words": (tiny_data, tiny_checkpoints[0], "none"),
        "subword_nmt": (
            bpe_bin,
            tiny_fairseq.train_tiny(bpe_bin, str(root / "m_bpe"), 1, 60),
            "subword_nmt",
        ),
        "sentencepiece": (
            spm_bin,
            tiny_fairseq.train_tiny(spm_bin, str(root / "m_spm"), 1, 60),
            "sentencepiece",
        ),
    }


def _fairseq_generate(data, ckpt, post):
    p = subprocess.run(
        [
            os.path.join(BIN, "fairseq-generate"),
            data,
            "--path",
            ckpt,
            "--gen-subset",
            "test",
            "--user-dir",
            USER_DIR,
            "--post-process",
            post,
            "--beam",
            "3",
            "--cpu",
            "--required-batch-size-multiple",
            "1",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    hyps, refs = {}, {}
    for line in p.stdout.splitlines():
        tag, _, rest = line.partition("\t")
        if tag.startswith("D-"):
            hyps[int(tag[2:])] = rest.split("\t", 1)[1]
        elif tag.startswith("T-"):
            refs[int(tag[2:])] = rest
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


@pytest.mark.parametrize("scheme", ["words", "subword_nmt", "sentencepiece"])
def test_bleu_equals_fairseq_generate_and_sacrebleu(schemes, scheme, tmp_path, capsys):
    from ensdist_fairseq.evaluation import decoding
    from ensdist_fairseq.teachers import teacher_forcing

    data, ckpt, post = schemes[scheme]
    hyps, refs = _fairseq_generate(data, ckpt, post)
    assert len(hyps) == 40
    if scheme != "words":  # the scheme is really there: undoing it changes the text
        assert any("@@" in h or "\u2581" in h for h in _fairseq_generate(data, ckpt, "none")[0])

    models, task = teacher_forcing.load_models([ckpt], data)
    assert decoding.resolve_post_process("auto", task.target_dictionary) == (
        None if post == "none" else post
    )
    task.load_dataset("test")
    got = {
        d.id: d.hypotheses[0].text
        for d in decoding.decode(
            models,
            task,
            task.dataset("test"),
            decoding.generation_config(beam=3),
            max_tokens=4096,
            post_process=decoding.resolve_post_process("auto", task.target_dictionary),
        )
    }
    assert [got[i] for i in range(40)] == hyps

    out = tmp_path / "r.json"
    assert (
        evaluate.main(
            [data, "--path", ckpt, "--name", scheme, "--cpu", "--beam", "3", "--output", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["post_process"] == post
    assert result["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
