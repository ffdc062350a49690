"""Building the OOD sets: authors' permutation, length-matched sampling, the manifest's length
statistics and <unk> rates, on a hand-made corpus and gettext catalogs (no fairseq training)."""

import filecmp
import json
import random
import struct
import unicodedata
from collections import Counter

import pytest

from ensdist_fairseq.cli import ood_sets as ood_sets_cli
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.metrics import detection
from ensdist_fairseq.uncertainty import ood_sets

WORDS = "the a cat dog sees runs under over big small red green house tree and then".split()
FRENCH = "le la chat chien voit court sous sur grand petit rouge vert maison arbre et puis".split()


def write_mo(path, messages):
    """A GNU .mo catalog (format 0) of {msgid: msgstr}, written by hand so the test needs no
    gettext tools."""
    items = sorted(messages.items())
    ids = b"".join(k.encode() + b"\0" for k, _ in items)
    strs = b"".join(v.encode() + b"\0" for _, v in items)
    n = len(items)
    ids_start = 28 + 16 * n
    strs_start = ids_start + len(ids)
    table_ids, table_strs, off_i, off_s = [], [], 0, 0
    for k, v in items:
        table_ids += [len(k.encode()), ids_start + off_i]
        table_strs += [len(v.encode()), strs_start + off_s]
        off_i, off_s = off_i + len(k.encode()) + 1, off_s + len(v.encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    with open(path, "wb") as f:
        f.write(header + struct.pack(f"<{4 * n}I", *table_ids, *table_strs) + ids + strs)


def sentence(rng, words, n):
    return " ".join(rng.choice(words) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("ood")
    rng = random.Random(0)
    data = root / "data"
    for sub in ("raw", "spm", "bin"):
        (data / sub).mkdir(parents=True)
    test = [
        sentence(rng, WORDS, rng.randint(3, 12)) + rng.choice([" .", " ?", ""]) for _ in range(40)
    ]
    (data / "raw" / "test.en").write_text("\n".join(test) + "\n")
    (data / "raw" / "test.de").write_text(
        "\n".join(sentence(rng, WORDS, rng.randint(3, 12)) for _ in range(40)) + "\n"
    )
    (data / "raw" / "valid.de").write_text(
        "\n".join(sentence(rng, WORDS, rng.randint(2, 14)) for _ in range(100)) + "\n"
    )
    train = test + [sentence(rng, WORDS + FRENCH, 10) for _ in range(200)]
    (root / "train.txt").write_text("\n".join(train) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(root / "train.txt"),
        model_prefix=str(data / "spm" / "spm"),
        vocab_size=50,
        model_type="unigram",
        bos_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(data / "spm" / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i)]
    pieces = [p for p in pieces if p not in ("<unk>", "▁the")]  # "▁the" becomes <unk>
    (data / "bin" / "dict.en.txt").write_text("".join(f"{p} 1\n" for p in pieces))
    (data / "bin" / "test.en-de.en.idx").write_bytes(b"")
    messages = {}
    for _ in range(600):  # catalog lines of 4..14 words, msgids English, msgstrs "French"
        n = rng.randint(4, 14)
        messages[sentence(rng, WORDS, n) + "."] = sentence(rng, FRENCH, n) + "."
    locale = root / "locale"
    (locale / "fr" / "LC_MESSAGES").mkdir(parents=True)
    write_mo(locale / "fr" / "LC_MESSAGES" / "coreutils.mo", messages)
    return root, sp


def build(root, out, *extra):
    argv = ["--data-dir", str(root / "data"), "--out", str(out), "--locale-dir"]
    return ood_sets_cli.main(argv + [str(root / "locale"), *extra])


def is_punct(piece):
    text = piece.replace("▁", "")
    return bool(text) and all(unicodedata.category(c)[0] == "P" for c in text)


def test_permute_pieces_keeps_final_punctuation_and_the_multiset():
    rng = random.Random(3)
    for _ in range(300):
        pieces = [rng.choice(["▁a", "b", "▁c", "d", "▁e", ","]) for _ in range(rng.randint(0, 8))]
        pieces += rng.choice([[], ["."], ["▁?"], ["▁!"]])
        out = ood_sets.permute_pieces(pieces, rng)
        assert Counter(out) == Counter(pieces)
        if pieces and is_punct(pieces[-1]):
            assert out[-1] == pieces[-1]
        body = pieces[:-1] if pieces and is_punct(pieces[-1]) else pieces
        if len(set(body)) > 1:
            assert out != pieces


def test_bin_targets_add_up_and_follow_the_proportions():
    rng = random.Random(1)
    for _ in range(100):
        ref = [rng.randint(1, 30) for _ in range(rng.randint(1, 50))]
        edges = ood_sets.length_bins(ref, rng.randint(1, 8))
        size = rng.randint(1, 80)
        targets = ood_sets.bin_targets(ref, edges, size)
        assert sum(targets) == size
        assert edges[0] == min(ref) - 1 and edges[-1] == max(ref) and len(edges) >= 2
        counts = [sum(1 for n in ref if lo < n <= hi) for lo, hi in zip(edges, edges[1:])]
        assert sum(counts) == len(ref)
        for t, c in zip(targets, counts):
            assert abs(t - size * c / len(ref)) < 1  # rounding moves each count by less than 1


def test_sets_are_deterministic_and_length_matched(corpus, tmp_path):
    root, sp = corpus
    assert build(root, tmp_path / "a", "--size", "40", "--length-bins", "4") == 0
    assert build(root, tmp_path / "b", "--size", "40", "--length-bins", "4") == 0
    manifest = json.loads((tmp_path / "a" / "ood_sets.json").read_text())
    assert manifest == json.loads((tmp_path / "b" / "ood_sets.json").read_text())
    assert [s["name"] for s in manifest["sets"]] == ["permuted", "target", "domain", "third"]
    test = (root / "data" / "raw" / "test.en").read_text().splitlines()
    in_len = [len(sp.encode(t, out_type=str)) for t in test]
    match = manifest["length_match"]
    edges = match["edges"]
    assert 3 <= len(edges) <= 5 and edges == sorted(set(edges))
    assert edges[0] == min(in_len) - 1 and edges[-1] == max(in_len)

    def per_bin(lengths):
        return [sum(1 for n in lengths if lo < n <= hi) for lo, hi in zip(edges, edges[1:])]

    assert match["per_bin"] == match["in_domain_per_bin"] == per_bin(in_len)  # --size = test size
    in_unk = sum(sp.encode(t, out_type=str).count("▁the") for t in test)
    assert in_unk > 0 and match["in_domain_unk_rate"] == pytest.approx(in_unk / sum(in_len))
    for s in manifest["sets"]:
        for rel in (s["raw"], s["bin"] + ".bin", s["bin"] + ".idx"):
            assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
        pieces = [p.split() for p in (tmp_path / "a" / "spm" / f"{s['name']}.en").open()]
        lengths = [len(p) for p in pieces]
        assert min(lengths) > edges[0] and max(lengths) <= edges[-1], s["name"]
        assert per_bin(lengths) == match["per_bin"], s["name"]
        assert s["lengths"]["mean"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-3)
        assert s["lengths"]["q2"] == sorted(lengths)[len(lengths) // 2]
        unk = sum(p.count("▁the") for p in pieces)
        assert unk > 0 or s["name"] == "third"
        assert s["unk_tokens"] == unk and s["unk_rate"] == pytest.approx(unk / sum(lengths))
    # Permuted: a permutation of one test source's pieces, final punctuation in place.
    originals = {}
    for t in test:
        p = sp.encode(t, out_type=str)
        originals.setdefault(tuple(sorted(p)), []).append(p)
    for line in (tmp_path / "a" / "spm" / "permuted.en").open():
        p = line.split()
        candidates = originals[tuple(sorted(p))]
        assert any(not is_punct(o[-1]) or o[-1] == p[-1] for o in candidates)
    third = (tmp_path / "a" / "raw" / "third.en").read_text().split()
    assert set(third) <= set(FRENCH) | {w + "." for w in FRENCH}


def test_smaller_sets_keep_the_proportions(corpus, tmp_path):
    root, _ = corpus
    assert build(root, tmp_path, "--size", "20", "--length-bins", "3") == 0
    match = json.loads((tmp_path / "ood_sets.json").read_text())["length_match"]
    assert sum(match["per_bin"]) == 20
    for t, c in zip(match["per_bin"], match["in_domain_per_bin"]):
        assert abs(t - 20 * c / 40) < 1


def test_a_bin_that_cannot_be_filled_is_an_error(corpus, tmp_path, capsys):
    root, _ = corpus
    # Every catalog line is at most 15 words; a length-matched draw of all 40 test lengths from
    # the catalogs fails only if some bin lacks lines: build a corpus whose sources are long.
    data = tmp_path / "data"
    for sub in ("raw", "spm", "bin"):
        (data / sub).mkdir(parents=True)
        for f in (root / "data" / sub).iterdir():
            (data / sub / f.name).write_bytes(f.read_bytes())
    rng = random.Random(5)
    (data / "raw" / "test.en").write_text(
        "\n".join(sentence(rng, WORDS, 40) for _ in range(40)) + "\n"
    )
    argv = ["--data-dir", str(data), "--out", str(tmp_path / "o"), "--size", "10"]
    assert ood_sets_cli.main(argv + ["--locale-dir", str(root / "locale")]) == 1
    assert "the length match needs" in capsys.readouterr().err
    with pytest.raises(EnsdistError, match="only 40 usable lines"):
        ood_sets.build_sets(str(data), 50, 1, {}, str(root / "locale"))
    # Without length matching the same corpus builds.
    assert (
        ood_sets_cli.main(argv + ["--locale-dir", str(root / "locale"), "--length-bins", "0"]) == 0
    )


def brute_force_matched_auc(a, b, la, lb, edges):
    def bin_of(n):
        return next((i for i in range(len(edges) - 1) if edges[i] < n <= edges[i + 1]), None)

    wins = pairs = 0.0
    for x, nx in zip(a, la):
        for y, ny in zip(b, lb):
            if bin_of(nx) is not None and bin_of(nx) == bin_of(ny):
                wins += 1.0 if y > x else 0.5 if y == x else 0.0
                pairs += 1
    return 100.0 * wins / pairs


def test_length_matched_auc_against_brute_force():
    rng = random.Random(7)
    for _ in range(40):
        na, nb = rng.randint(1, 25), rng.randint(1, 25)
        a = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(na)]
        b = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(nb)]
        la = [rng.randint(3, 15) for _ in range(na)]
        lb = [rng.randint(1, 20) for _ in range(nb)]
        n_bins = rng.randint(1, 6)
        ordered = sorted(la)
        inner = [ordered[min(na - 1, na * k // n_bins)] for k in range(1, n_bins)]
        edges = sorted({ordered[0] - 1, *inner, ordered[-1]})
        try:
            want = brute_force_matched_auc(a, b, la, lb, edges)
        except ZeroDivisionError:
            with pytest.raises(ValueError, match="share a length bin"):
                detection.length_matched_auc(a, b, la, lb, n_bins)
            continue
        assert detection.length_matched_auc(a, b, la, lb, n_bins) == pytest.approx(want)
        assert detection.length_matched_auc(a, b, la, lb, edges=edges) == pytest.approx(want)


def test_a_length_only_score_is_chance_when_length_matched():
    rng = random.Random(2)
    la = [rng.randint(5, 20) for _ in range(300)]
    lb = [rng.randint(10, 30) for _ in range(300)]  # longer OOD sources
    score = [float(n) for n in la], [float(n) for n in lb]  # "uncertainty" = length
    assert detection.roc_auc(*score) > 70
    edges = list(range(min(la) - 1, max(la) + 1))  # one bin per length
    assert detection.length_matched_auc(*score, la, lb, edges=edges) == pytest.approx(50.0)
