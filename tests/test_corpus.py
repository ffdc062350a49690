"""Built-in corpus extraction (Ding), deterministic split, SentencePiece + fairseq preparation."""

import os
import subprocess

import pytest
import sentencepiece as spm

from ensdist_fairseq.cli import corpus_ding
from ensdist_fairseq.cli import sentencepiece as sentencepiece_cli
from ensdist_fairseq.corpus import ding, sentencepiece_prep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DING_FILE = "/usr/share/trans/de-en"

# Hand-written lines in the Ding format (German :: English), each exercising one rule.
DING_FIXTURE = """\
# Version :: devel 2023-01-30
# License :: GPL Version 2 or later; GNU General Public License
Abart {f}; Variante {f} | Abarten {pl} | Es gibt sie in vielen Varianten. :: variation; variant | variations | They come in many variants.
Abstand {m} | Ich folgte ihm mit Abstand.; Ich folgte ihm in Entfernung. :: distance | I followed him at a distance. [Br.]
Abendessen {n} | Das Abendessen hat mir geschmeckt [ugs.]. :: supper | I enjoyed my supper [Br.] [coll.].
Unsinn {m} | Er nannte es „Unsinn“. | Es ist noch nicht vorbei. :: nonsense | He called it “nonsense”. | It’s not over yet.
Aal {m} | Aale {pl} | Der Aal ist sehr glitschig. | Der Aal schwimmt im Fluss. :: eel | Eels are very slippery. | The eel swims in the river.
Variante {f} | Es gibt sie in vielen Varianten. :: variant | They come in many variants.
Version {f} | Es gibt sie in vielen Versionen. :: version | They come in many variants.
Alarm {m} | Abstand halten! | abschreckend hoher Zoll | Es wurde Alarm ausgelöst. :: alarm | Keep a distance! | prohibitive tariff | The alarm was sounded/triggered.
gut {adj} | das ist gut so. | Das ist ein Test :: good | that is fine. | This is a test
Regen {m} | Es regnet heute sehr stark. :: rain | heavy rain today
Kaffee {m} <Kafee> | Ich trinke gern {vt} Kaffee. <Kafee> :: coffee | I like to   drink coffee.
Zeile ohne Trennzeichen
"""

EXPECTED_PAIRS = [
    ("They come in many variants.", "Es gibt sie in vielen Varianten."),
    # first alternative on the German side, [Br.] tag dropped on the English side
    ("I followed him at a distance.", "Ich folgte ihm mit Abstand."),
    # a tag before the full stop leaves no space behind
    ("I enjoyed my supper.", "Das Abendessen hat mir geschmeckt."),
    # curly quotes and apostrophes straightened
    ('He called it "nonsense".', 'Er nannte es "Unsinn".'),
    ("It's not over yet.", "Es ist noch nicht vorbei."),
    # {vt} and <Kafee> removed, runs of spaces collapsed
    ("I like to drink coffee.", "Ich trinke gern Kaffee."),
]
# Not expected: the Aal line (4 German vs 3 English sub-entries: zip would misalign them), the repeated pair, the pair
# whose English side was already taken, two-word/lower-case/unpunctuated fragments, the slash
# alternative, a pair with only one full sentence, the header and the line without " :: ".


def test_fixture_extracts_exactly_the_expected_pairs():
    assert ding.extract_pairs(DING_FIXTURE.splitlines(), min_words=3) == EXPECTED_PAIRS


def test_min_words_is_applied_to_both_sides():
    pairs = ding.extract_pairs(DING_FIXTURE.splitlines(), min_words=5)
    assert pairs == [p for p in EXPECTED_PAIRS if min(len(p[0].split()), len(p[1].split())) >= 5]
    assert ("It's not over yet.", "Es ist noch nicht vorbei.") not in pairs


def test_sentence_rules():
    assert ding.is_sentence("Keep a distance now!", 3)
    assert not ding.is_sentence("Keep a distance!", 4)
    assert not ding.is_sentence("keep a distance!", 3)
    assert not ding.is_sentence("Keep a distance", 3)
    assert not ding.is_sentence("", 1)
    assert (
        ding.clean_sub_entry(" Ich {vt} gehe [ugs.] heim . ; Ich laufe heim.") == "Ich gehe heim."
    )


def _synthetic_pairs(n):
    return [(f"English sentence {i}.", f"Deutscher Satz {i}.") for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    pairs = _synthetic_pairs(200)
    a = ding.split_pairs(pairs, valid_size=20, test_size=30, seed=1)
    b = ding.split_pairs(list(pairs), valid_size=20, test_size=30, seed=1)
    c = ding.split_pairs(pairs, valid_size=20, test_size=30, seed=2)
    assert a == b
    assert a["test"] != c["test"]
    assert [len(a[s]) for s in ("train", "valid", "test")] == [150, 20, 30]
    sets = [set(a[s]) for s in ("train", "valid", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(pairs)
    # each split keeps the input order
    assert a["train"] == [p for p in pairs if p in sets[0]]


def test_split_does_not_depend_on_the_other_pairs():
    # Hash ranking: adding pairs can only push others out of the test set, never pull old ones in.
    pairs = _synthetic_pairs(300)
    small = set(ding.split_pairs(pairs[:200], 10, 30, seed=1)["test"])
    large = set(ding.split_pairs(pairs, 10, 30, seed=1)["test"])
    assert {p for p in large if p in set(pairs[:200])} <= small


def test_heldout_sizes_scale_down_for_small_samples():
    assert ding.heldout_sizes(20000, 500, 1000, 0.2) == (500, 1000)
    # budget 0.2 * 100 = 20 pairs, shared 1:2 -> 6.67 and 13.3, floored
    assert ding.heldout_sizes(100, 500, 1000, 0.2) == (6, 13)


def test_cli_writes_aligned_splits(tmp_path, capsys):
    src = tmp_path / "de-en"
    src.write_text(DING_FIXTURE, encoding="utf-8")
    out = tmp_path / "raw"
    rc = corpus_ding.main(
        [
            "--source",
            str(src),
            "--out",
            str(out),
            "--valid-size",
            "1",
            "--test-size",
            "2",
            "--max-heldout-fraction",
            "0.5",
        ]
    )
    assert rc == 0
    assert "extracted 6 pairs" in capsys.readouterr().out
    got = []
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        en = (out / f"{split}.en").read_text(encoding="utf-8").splitlines()
        de = (out / f"{split}.de").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(de) == n
        got += list(zip(en, de))
    assert sorted(got) == sorted(EXPECTED_PAIRS)
    assert sorted(os.listdir(out)) == sorted(
        f"{s}.{lang}" for s in ding.SPLITS for lang in ("en", "de")
    )


def test_cli_bad_input(tmp_path, capsys):
    assert corpus_ding.main(["--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --source") and "nope" in err
    src = tmp_path / "de-en"
    src.write_text(DING_FIXTURE, encoding="utf-8")
    assert (
        corpus_ding.main(["--source", str(src), "--out", str(tmp_path / "o"), "--test-size", "0"])
        == 2
    )
    assert "--test-size" in capsys.readouterr().err
    # 6 pairs and a 1% held-out share: no room for valid and test
    assert (
        corpus_ding.main(
            ["--source", str(src), "--out", str(tmp_path / "o"), "--max-heldout-fraction", "0.01"]
        )
        == 1
    )
    assert "too few" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- SentencePiece + fairseq-preprocess on the user's own data ------------------------------

EN_WORDS = "the a red green small big cat dog bird house tree river sees likes finds near over under".split()
DE_WORDS = "der ein rote grüne kleine große Katze Hund Vogel Haus Baum Fluss sieht mag findet nahe über unter".split()


def _write_tiny_raw(raw, n=(300, 40, 40)):
    """Short sentence pairs from a fixed word list (a word-by-word 'translation')."""
    raw.mkdir()
    k = 0
    for split, count in zip(("train", "valid", "test"), n):
        en_lines, de_lines = [], []
        for _ in range(count):
            idx = [(k * 7 + j * 5) % len(EN_WORDS) for j in range(3 + k % 4)]
            k += 1
            en_lines.append(" ".join(EN_WORDS[i] for i in idx) + ".")
            de_lines.append(" ".join(DE_WORDS[i] for i in idx) + ".")
        (raw / f"{split}.en").write_text("\n".join(en_lines) + "\n", encoding="utf-8")
        (raw / f"{split}.de").write_text("\n".join(de_lines) + "\n", encoding="utf-8")


def _prepare_raw(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "prepare_raw.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_prepare_raw_end_to_end_and_skip(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_tiny_raw(raw)
    p = _prepare_raw("--src", "en", "--tgt", "de", "--raw", raw, "--out", out, "--vocab-size", "60")
    assert p.returncode == 0, p.stderr
    bin_dir = out / "bin"
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            for ext in ("bin", "idx"):
                assert (bin_dir / f"{split}.en-de.{lang}.{ext}").stat().st_size > 0
    dict_en = (bin_dir / "dict.en.txt").read_text(encoding="utf-8")
    assert dict_en == (bin_dir / "dict.de.txt").read_text(encoding="utf-8")
    # the joined dictionary holds SentencePiece pieces (plus fairseq's padding words)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm" / "spm.model"))
    assert sp.get_piece_size() == 60
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    symbols = [line.split()[0] for line in dict_en.splitlines()]
    assert all(s in pieces or s.startswith("madeupword") for s in symbols)
    assert any(s.startswith("▁") for s in symbols)
    # encoded files decode back to the raw text, line for line
    for split in ("train", "test"):
        encoded = (out / "spm" / f"{split}.de").read_text(encoding="utf-8").splitlines()
        original = (raw / f"{split}.de").read_text(encoding="utf-8").splitlines()
        assert [sp.decode(line.split()) for line in encoded] == original
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # temp dir removed

    stamp = (bin_dir / "train.en-de.en.bin").stat().st_mtime_ns
    again = _prepare_raw(
        "--src", "en", "--tgt", "de", "--raw", raw, "--out", out, "--vocab-size", "60"
    )
    assert again.returncode == 0 and "skipping" in again.stdout
    assert (bin_dir / "train.en-de.en.bin").stat().st_mtime_ns == stamp
    # same output directory, other settings: refuses instead of mixing two preparations
    other = _prepare_raw(
        "--src", "en", "--tgt", "de", "--raw", raw, "--out", out, "--vocab-size", "70"
    )
    assert other.returncode != 0 and "error:" in other.stderr


@pytest.mark.slow
def test_prepare_raw_bad_inputs(tmp_path):
    raw = tmp_path / "raw"
    _write_tiny_raw(raw)
    base = ["--src", "en", "--tgt", "de", "--raw", raw]

    (raw / "valid.de").rename(tmp_path / "valid.de.bak")
    p = _prepare_raw(*base, "--out", tmp_path / "o1")
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [
        f"error: missing raw file {raw}/valid.de"
    ]  # prepare_raw.sh
    assert not (tmp_path / "o1").exists()
    (tmp_path / "valid.de.bak").rename(raw / "valid.de")

    p = _prepare_raw(*base, "--out", tmp_path / "o2", "--vocab-size", "0")
    assert p.returncode != 0 and p.stderr.startswith("error: --vocab-size")

    p = _prepare_raw(*base, "--out", tmp_path / "o3", "--vocab-size", "100000")
    assert p.returncode != 0
    assert p.stderr.startswith("error: --vocab-size 100000") and "Traceback" not in p.stderr
    assert not (tmp_path / "o3" / "bin").exists() and not (tmp_path / "o3" / "spm").exists()

    with open(raw / "test.en", "a", encoding="utf-8") as f:
        f.write("one line too many.\n")
    p = _prepare_raw(*base, "--out", tmp_path / "o4")
    assert p.returncode != 0 and "test.en" in p.stderr and "test.de" in p.stderr


def test_sentencepiece_model_is_reproducible(tmp_path):
    raw = tmp_path / "raw"
    _write_tiny_raw(raw)
    for out in ("a", "b"):
        args = [
            "--raw",
            str(raw),
            "--src",
            "en",
            "--tgt",
            "de",
            "--vocab-size",
            "60",
            "--out",
            str(tmp_path / out),
        ]
        assert sentencepiece_cli.main(args) == 0
    for name in ("spm.model", "spm.vocab", "train.en", "test.de"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cleaning_drops_long_and_unbalanced_pairs():
    assert sentencepiece_prep.keep_pair(["a"] * 3, ["b"] * 4, max_len=None, max_ratio=1.5)
    assert not sentencepiece_prep.keep_pair(["a"] * 2, ["b"] * 4, max_len=None, max_ratio=1.5)
    assert not sentencepiece_prep.keep_pair(["a"] * 6, ["b"] * 5, max_len=5, max_ratio=None)
    assert not sentencepiece_prep.keep_pair([], ["b"], max_len=None, max_ratio=None)


# ---- the real dictionary -----------------------------------------------------------------

needs_ding = pytest.mark.skipif(not os.path.isfile(DING_FILE), reason="trans-de-en not installed")


@needs_ding
@pytest.mark.slow
def test_real_ding_extraction():
    with open(DING_FILE, encoding="utf-8") as f:
        pairs = ding.extract_pairs(f, min_words=3)
    assert 12000 <= len(pairs) <= 20000
    for en, de in pairs:
        for s in (en, de):
            assert s[0].isupper() and s.endswith((".", "!", "?")) and len(s.split()) >= 3, s
            assert not any(c in s for c in "{}/“”„’"), s
    assert len({en for en, _ in pairs}) == len({de for _, de in pairs}) == len(pairs)
    mean_en = sum(len(en.split()) for en, _ in pairs) / len(pairs)
    assert 6 <= mean_en <= 10
    split = ding.split_pairs(pairs, 500, 1000, seed=1)
    train_en = {en for en, _ in split["train"]}
    train_de = {de for _, de in split["train"]}
    assert len(split["test"]) == 1000 and len(split["valid"]) == 500
    assert not any(en in train_en or de in train_de for en, de in split["test"])


@needs_ding
@pytest.mark.slow
def test_prepare_builtin_small_sample(tmp_path):
    config = tmp_path / "cfg.sh"
    config.write_text("SRC=en\nTGT=de\nSPM_VOCAB_SIZE=300\n")
    cmd = [
        "bash",
        os.path.join(ROOT, "scripts", "prepare_builtin.sh"),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "b"),
        "--max-pairs",
        "400",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "stage 1/2" in p.stdout and "stage 2/2" in p.stdout
    counts = [
        sum(1 for _ in open(tmp_path / "b" / "raw" / f"{s}.en", encoding="utf-8"))
        for s in ("train", "valid", "test")
    ]
    assert counts == [321, 26, 53]  # 400 pairs, held-out capped at 20%: 500:1000 -> 26:53
    assert (tmp_path / "b" / "bin" / "train.en-de.de.bin").exists()
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "missing.sh")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: --config")


# ---- lines end at "\n" only; pairs end together; bytes are UTF-8 ----------------------------


def test_lone_carriage_return_does_not_shift_pairs(tmp_path):
    """Text mode would end a line at the lone \r: every later pair shifted, the last dropped."""
    from ensdist_fairseq.corpus.text_lines import read_lines, read_pairs

    (tmp_path / "a.en").write_bytes(b"one\rtwo.\nthree.\r\nfour.\n")
    (tmp_path / "a.de").write_bytes(b"eins zwei.\ndrei.\nvier.\n")
    assert list(read_lines(str(tmp_path / "a.en"))) == ["one two.", "three.", "four."]
    assert list(read_pairs(str(tmp_path / "a.en"), str(tmp_path / "a.de"))) == [
        ("one two.", "eins zwei."),
        ("three.", "drei."),
        ("four.", "vier."),
    ]


def test_sentencepiece_prep_keeps_pairs_aligned_across_a_carriage_return(tmp_path):
    raw = tmp_path / "raw"
    _write_tiny_raw(raw)
    lines = (raw / "train.en").read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b" ", b"\r", 1)
    (raw / "train.en").write_bytes(b"\n".join(lines))
    out = tmp_path / "spm"
    assert (
        sentencepiece_cli.main(
            [
                "--raw",
                str(raw),
                "--src",
                "en",
                "--tgt",
                "de",
                "--vocab-size",
                "60",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    en = (out / "train.en").read_text(encoding="utf-8").split("\n")
    de = (out / "train.de").read_text(encoding="utf-8").split("\n")
    assert len(en) == len(de) == 301  # 300 pairs and the final newline
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    n_words = [len(sp.decode(x.split()).split()) for x in en[:-1]]
    assert n_words == [len(sp.decode(x.split()).split()) for x in de[:-1]]  # word-by-word corpus


def test_invalid_utf8_and_uneven_files_are_named(tmp_path, capsys):
    from ensdist_fairseq.corpus.text_lines import read_pairs
    from ensdist_fairseq.errors import EnsdistError

    (tmp_path / "a.en").write_bytes(b"ok.\nbad \xff byte.\n")
    (tmp_path / "a.de").write_bytes(b"gut.\nschlecht.\n")
    with pytest.raises(
        EnsdistError, match=r"a.en: line 2: invalid UTF-8 \(byte 0xff at column 5\)$"
    ):
        list(read_pairs(str(tmp_path / "a.en"), str(tmp_path / "a.de")))
    (tmp_path / "b.de").write_bytes(b"gut.\n")
    (tmp_path / "b.en").write_bytes(b"ok.\nmore.\n")
    with pytest.raises(EnsdistError, match=r"b.de: ends after line 1, .*b.en goes on$"):
        list(read_pairs(str(tmp_path / "b.en"), str(tmp_path / "b.de")))
