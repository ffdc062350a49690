"""Out-of-distribution input sets for OOD detection, built from files already on the machine.

    ensdist-ood-sets --data-dir runs/demo/data --out runs/demo/ood [--size 500] [--seed 1]
                     [--length-bins 10] [--extra NAME=FILE ...]

DATA_DIR is a prepared corpus (scripts/prepare_raw.sh): raw/test.{SRC,TGT}, spm/spm.model,
bin/dict.SRC.txt. In-domain is the corpus's own test split (DATA_DIR/bin, split `test`); the OOD
sets mirror the four of the Proxy-Dirichlet paper's Table 4 (Malinin & Gales 2021):
  permuted  test sources with their subword pieces shuffled, a final            ~ "Permuted"
            punctuation piece kept last (seeded, per sentence), as the paper's authors do
  target    test and valid sentences of the *target* language given as sources ~ "German"
  domain    source-language text of another domain: message strings of the    ~ "Speech"
            gettext catalogs of Debian's Essential packages (English msgids, or the source
            language's translations when the source is not English)
  third     a third language (French, else Spanish) from the same catalogs      ~ "French"
Essential packages (coreutils, bash, dpkg, tar, sed, grep, findutils, diffutils, login) are on
every Debian system, so nothing is downloaded; the manifest records each catalog's package and
version, and the same packages give the same sets. Every set is deterministic: sorted, de-
duplicated lines, a seeded sample of --size; the builder fails if a set has fewer lines.
Length matching (--length-bins K, default 10; 0 turns it off): each built set is drawn with the
in-domain test sources' length distribution in the corpus's pieces, over K quantile bins of the
in-domain lengths (per-bin counts ∝ the in-domain ones; lengths outside the in-domain range are
never drawn), so that length alone no longer tells a set from in-domain. The manifest records
the bins, each set's length statistics (mean, quartiles) and <unk> rate, and the in-domain ones.

Out (OUT/): raw/NAME.SRC (text), spm/NAME.SRC (pieces, the corpus's SentencePiece model),
bin/NAME.SRC.{bin,idx} (fairseq mmap, the corpus's source dictionary), ood_sets.json (manifest,
written last). `ensdist-uncertainty --ood-dir OUT` reads the manifest.
"""

import bisect
import gettext
import glob
import json
import os
import random
import re
import subprocess
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

from ensdist_fairseq.corpus.binarized import check_binarized
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.hashing import file_sha256

MANIFEST = "ood_sets.json"
LOCALE_DIR = "/usr/share/locale"
# Catalogs of Debian Essential packages (catalog name -> Debian package), installed everywhere.
CATALOGS = {
    "coreutils": "coreutils",
    "bash": "bash",
    "dpkg": "dpkg",
    "tar": "tar",
    "sed": "sed",
    "grep": "grep",
    "findutils": "findutils",
    "diffutils": "diffutils",
    "shadow": "login",
}
THIRD_LANGUAGES = ("fr", "es", "it")
_WORD = re.compile(
    r"^[^\W\d_]+(?:['’-][^\W\d_]+)*[.,:;!?]?$"
)  # a word of letters, maybe punctuated


def clean_message_lines(text: str) -> List[str]:
    """Prose lines of a catalog message: option columns, format strings and code dropped.

    A line is kept when, after dropping leading option names ("-x", "--name=VAR"), it has 2..40
    words and every word is letters with at most a trailing punctuation mark."""
    out = []
    for line in text.replace("\t", " ").split("\n"):
        words = line.split()
        while words and (words[0].startswith("-") or "=" in words[0]):
            words.pop(0)
        if 2 <= len(words) <= 40 and all(_WORD.match(w) for w in words):
            out.append(" ".join(words))
    return out


def catalog_lines(lang: str, locale_dir: str = LOCALE_DIR) -> Tuple[List[str], List[dict]]:
    """(sorted unique prose lines in `lang`, provenance) from the Essential packages' catalogs.

    lang "en": the msgids (gettext source strings are English) of the French catalogs;
    otherwise the translations (msgstr) of that language's catalogs."""
    catalog_lang = "fr" if lang == "en" else lang
    lines, sources = set(), []
    for name, package in sorted(CATALOGS.items()):
        path = os.path.join(locale_dir, catalog_lang, "LC_MESSAGES", f"{name}.mo")
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
        before = len(lines)
        for msgid, msgstr in catalog.items():
            if isinstance(msgid, tuple) or not msgid:  # plural forms and the header
                continue
            text = msgid if lang == "en" else msgstr
            if isinstance(text, str) and (lang == "en" or msgstr != msgid):
                lines.update(clean_message_lines(text))
        sources.append(
            {
                "catalog": path,
                "package": package,
                "version": _package_version(package),
                "sha256": file_sha256(path),
                "lines": len(lines) - before,
            }
        )
    return sorted(lines), sources


def _package_version(package: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or None
    except OSError:  # not a Debian system
        return None


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def sample(lines: Sequence[str], size: int, seed: int, what: str) -> List[str]:
    """`size` lines drawn without replacement by a seeded generator, in their original order."""
    if len(lines) < size:
        raise EnsdistError(f"{what}: only {len(lines)} usable lines, --size asks for {size}")
    keep = sorted(random.Random(seed).sample(range(len(lines)), size))
    return [lines[i] for i in keep]


def _is_punctuation(piece: str) -> bool:
    text = piece.replace("\u2581", "")
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def permute_pieces(pieces: Sequence[str], rng: random.Random) -> List[str]:
    """The subword pieces in a random order (differing from the original when it can), a final
    punctuation piece kept last, as the Proxy-Dirichlet paper builds its permuted set."""
    pieces = list(pieces)
    keep = pieces[-1:] if pieces and _is_punctuation(pieces[-1]) else []
    body = pieces[: len(pieces) - len(keep)]
    if len(set(body)) < 2:
        return pieces
    shuffled = body[:]
    while shuffled == body:
        rng.shuffle(shuffled)
    return shuffled + keep


def length_bins(lengths: Sequence[int], n_bins: int) -> List[int]:
    """Bin edges e_0 < … < e_k (k <= n_bins) at the quantiles of `lengths`: bin i holds lengths in
    (e_i, e_{i+1}]; e_0 = min - 1 and e_k = max, so lengths outside the reference's range fall in
    no bin and are never drawn."""
    ordered = sorted(lengths)
    inner = {ordered[min(len(ordered) - 1, (len(ordered) * k) // n_bins)] for k in range(1, n_bins)}
    return [ordered[0] - 1] + sorted(e for e in inner if e < ordered[-1]) + [ordered[-1]]


def bin_of(length: int, edges: Sequence[int]) -> Optional[int]:
    i = bisect.bisect_left(edges, length) - 1
    return i if 0 <= i < len(edges) - 1 else None


def bin_targets(reference: Sequence[int], edges: Sequence[int], size: int) -> List[int]:
    """Lines to draw per bin so that `size` lines have the reference's bin proportions (largest
    remainder rounding: the counts add up to `size`)."""
    counts = [0] * (len(edges) - 1)
    for n in reference:
        counts[bin_of(n, edges)] += 1
    exact = [size * c / len(reference) for c in counts]
    out = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda b: (out[b] - exact[b], b))
    for b in by_remainder[: size - sum(out)]:
        out[b] += 1
    return out


def sample_matched(
    lines: Sequence[str],
    lengths: Sequence[int],
    edges: Sequence[int],
    targets: Sequence[int],
    seed: int,
    what: str,
) -> List[str]:
    """A seeded sample with `targets[b]` lines from each length bin b, in the lines' order."""
    by_bin: List[List[int]] = [[] for _ in edges[1:]]
    for i, n in enumerate(lengths):
        b = bin_of(n, edges)
        if b is not None:
            by_bin[b].append(i)
    rng, keep = random.Random(seed), []
    for b, (pool, want) in enumerate(zip(by_bin, targets)):
        if len(pool) < want:
            raise EnsdistError(
                f"{what}: {len(pool)} lines of {edges[b] + 1}..{edges[b + 1]} pieces, the length"
                f" match needs {want} (fewer --size or --length-bins, or --length-bins 0)"
            )
        keep += rng.sample(pool, want)
    return [lines[i] for i in sorted(keep)]


def length_stats(lengths: Sequence[int]) -> dict:
    """Mean and quartiles (nearest rank) of per-line lengths in pieces."""
    ordered = sorted(lengths)
    q = {f"q{k}": ordered[min(len(ordered) - 1, (len(ordered) * k) // 4)] for k in (1, 2, 3)}
    return {
        "mean": round(sum(ordered) / len(ordered), 3),
        "min": ordered[0],
        **q,
        "max": ordered[-1],
    }


def corpus_languages(data_dir: str) -> Tuple[str, str]:
    """(SRC, TGT) of a prepared corpus, from bin/test.SRC-TGT.SRC.idx."""
    found = sorted(glob.glob(os.path.join(data_dir, "bin", "test.*-*.*.idx")))
    for path in found:
        pair, lang = os.path.basename(path).split(".")[1:3]
        src, tgt = pair.split("-")
        if lang == src:
            return src, tgt
    raise EnsdistError(
        f"--data-dir {data_dir}: no bin/test.SRC-TGT.SRC.idx (run scripts/prepare_raw.sh)"
    )


def build_sets(
    data_dir: str,
    size: int,
    seed: int,
    extra: Dict[str, str],
    locale_dir: str = LOCALE_DIR,
    n_bins: int = 10,
) -> Tuple[Dict[str, Tuple[List[str], List[List[str]]]], dict]:
    """{name: (raw lines, pieces of each line)} of every OOD set, and the manifest's entries.

    With n_bins > 0 each built set is drawn so that its source lengths (in the corpus's pieces)
    have the in-domain test sources' distribution over n_bins quantile bins; 0 draws uniformly."""
    import sentencepiece as spm

    src, tgt = corpus_languages(data_dir)
    spm_model = os.path.join(data_dir, "spm", "spm.model")
    if not os.path.isfile(spm_model):
        raise EnsdistError(f"--data-dir {data_dir}: {spm_model} not found")
    sp = spm.SentencePieceProcessor(model_file=spm_model)

    def encode(lines):
        return [sp.encode(line, out_type=str) for line in lines]

    test_src = read_lines(os.path.join(data_dir, "raw", f"test.{src}"))
    # Target-language sources: the held-out test and valid targets (neither is trained on), so
    # that a length-matched draw has more than the test's own lengths to choose from.
    test_tgt = read_lines(os.path.join(data_dir, "raw", f"test.{tgt}"))
    valid_tgt = os.path.join(data_dir, "raw", f"valid.{tgt}")
    if os.path.isfile(valid_tgt):
        test_tgt += read_lines(valid_tgt)
    if not test_src:
        raise EnsdistError(f"--data-dir {data_dir}: raw/test.{src} is empty")
    test_pieces = encode(test_src)
    in_lengths = [len(p) for p in test_pieces]
    edges = length_bins(in_lengths, n_bins) if n_bins else [min(in_lengths) - 1, max(in_lengths)]
    targets = bin_targets(in_lengths, edges, size)

    def draw(lines, what):
        lines = list(lines)
        if not n_bins:
            return sample(lines, size, seed, what)
        if len(lines) < size:
            raise EnsdistError(f"{what}: only {len(lines)} usable lines, --size asks for {size}")
        return sample_matched(lines, [len(p) for p in encode(lines)], edges, targets, seed, what)

    rng = random.Random(seed)
    permuted = [permute_pieces(p, rng) for p in encode(draw(test_src, "permuted"))]
    sets = {
        "permuted": ([sp.decode_pieces(p) for p in permuted], permuted),
        "target": draw(test_tgt, f"target ({tgt} test sentences)"),
    }
    about = {
        "permuted": f"test.{src} with subword pieces shuffled, final punctuation kept (seed {seed})",
        "target": f"test.{tgt} and valid.{tgt}: {tgt} sentences given as {src} sources",
    }
    provenance = {}
    domain, provenance["domain"] = catalog_lines(src, locale_dir)
    sets["domain"] = draw(domain, f"domain ({src} gettext catalogs under {locale_dir})")
    about["domain"] = f"{src} message strings of Debian Essential packages' gettext catalogs"
    third = next(lang for lang in THIRD_LANGUAGES if lang not in (src, tgt))
    lines, provenance["third"] = catalog_lines(third, locale_dir)
    sets["third"] = draw(lines, f"third ({third} gettext catalogs under {locale_dir})")
    about["third"] = f"{third} message strings of the same catalogs (a third language)"
    for name, path in extra.items():
        if name in sets or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise EnsdistError(f"--extra {name}={path}: name must be new and [A-Za-z0-9_]")
        if not os.path.isfile(path):
            raise EnsdistError(f"--extra {name}={path}: file not found")
        sets[name] = [line for line in read_lines(path) if line.strip()]
        if not sets[name]:
            raise EnsdistError(f"--extra {name}={path}: no non-empty lines")
        about[name] = f"user file {os.path.abspath(path)} (not length-matched)"
    for name, value in sets.items():
        if name != "permuted":
            sets[name] = (value, encode(value))
    length_match = {
        "bins": n_bins,
        "edges": edges if n_bins else None,
        "in_domain_per_bin": bin_targets(in_lengths, edges, len(in_lengths)),
        "per_bin": targets,
        "in_domain_lengths": length_stats(in_lengths),
    }
    meta = {"src": src, "tgt": tgt, "about": about, "catalogs": provenance}
    return sets, dict(meta, length_match=length_match, spm_model=spm_model, in_domain=test_pieces)


def binarize(pieces: Sequence[Sequence[str]], dict_path: str, out_prefix: str) -> int:
    """A fairseq mmap dataset of the pieces with the corpus's source dictionary (as
    fairseq-preprocess: pieces + </s>); returns the number of <unk> tokens."""
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    dictionary = Dictionary.load(dict_path)
    builder = indexed_dataset.make_builder(
        out_prefix + ".bin", impl="mmap", vocab_size=len(dictionary)
    )
    unknown = 0
    for p in pieces:
        ids = dictionary.encode_line(" ".join(p), add_if_not_exist=False, append_eos=True).long()
        unknown += int((ids == dictionary.unk()).sum())
        builder.add_item(torch.IntTensor(ids.int()))
    builder.finalize(out_prefix + ".idx")
    return unknown


def write_sets(
    data_dir: str,
    out: str,
    size: int = 500,
    seed: int = 1,
    extra: Optional[Dict[str, str]] = None,
    locale_dir: str = LOCALE_DIR,
    length_bins: int = 10,
) -> dict:
    src, _ = corpus_languages(data_dir)
    dict_path = os.path.join(data_dir, "bin", f"dict.{src}.txt")
    if not os.path.isfile(dict_path):
        raise EnsdistError(f"--data-dir {data_dir}: {dict_path} not found")
    sets, meta = build_sets(data_dir, size, seed, extra or {}, locale_dir, length_bins)
    spm_model = meta["spm_model"]
    for sub in ("raw", "spm", "bin"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    entries = []
    for name, (lines, pieces) in sets.items():
        with open(os.path.join(out, "raw", f"{name}.{src}"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        unknown = binarize(pieces, dict_path, os.path.join(out, "bin", f"{name}.{src}"))
        with open(os.path.join(out, "spm", f"{name}.{src}"), "w", encoding="utf-8") as f:
            f.writelines(" ".join(p) + "\n" for p in pieces)
        n_pieces = sum(len(p) for p in pieces)
        entries.append(
            {
                "name": name,
                "lines": len(lines),
                "unk_tokens": unknown,
                "unk_rate": unknown / max(n_pieces, 1),
                "lengths": length_stats([len(p) for p in pieces]),
                "about": meta["about"][name],
                "bin": f"bin/{name}.{src}",
                "raw": f"raw/{name}.{src}",
                "raw_sha256": file_sha256(os.path.join(out, "raw", f"{name}.{src}")),
            }
        )
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(dict_path)
    in_pieces = [p for line in meta["in_domain"] for p in line]
    in_unknown = sum(dictionary.index(p) == dictionary.unk() for p in in_pieces)
    meta["length_match"]["in_domain_unk_rate"] = in_unknown / max(len(in_pieces), 1)
    manifest = {
        "schema_version": 1,
        "data_dir": os.path.abspath(data_dir),
        "src": src,
        "tgt": meta["tgt"],
        "size": size,
        "seed": seed,
        "in_domain": "test",
        "length_match": meta["length_match"],
        "dict_sha256": file_sha256(dict_path),
        "spm_sha256": file_sha256(spm_model),
        "sets": entries,
        "catalogs": meta["catalogs"],
    }
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, allow_nan=False)
    os.replace(tmp, os.path.join(out, MANIFEST))
    return manifest


MANIFEST_KEYS = ("src", "dict_sha256", "sets")
SET_KEYS = ("name", "lines", "bin")


def read_manifest(ood_dir: str) -> dict:
    """The manifest of an OOD directory, checked: EnsdistError naming the file (and what is
    missing or which set's binarized files are absent or of another length)."""
    path = os.path.join(ood_dir, MANIFEST)
    if not os.path.isfile(path):
        raise EnsdistError(f"--ood-dir {ood_dir}: no {MANIFEST} (build it with ensdist-ood-sets)")
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise EnsdistError(f"{path}: invalid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise EnsdistError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(manifest, dict):
        raise EnsdistError(f"{path}: not an ensdist-ood-sets manifest (not a JSON object)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise EnsdistError(
            f"{path}: not an ensdist-ood-sets manifest (missing {', '.join(missing)})"
        )
    if not isinstance(manifest["sets"], list) or not manifest["sets"]:
        raise EnsdistError(f"{path}: 'sets' is not a non-empty list")
    for i, entry in enumerate(manifest["sets"]):
        lacks = [k for k in SET_KEYS if not isinstance(entry, dict) or k not in entry]
        if lacks:
            raise EnsdistError(f"{path}: set {i + 1} lacks {', '.join(lacks)}")
        prefix = os.path.join(ood_dir, entry["bin"])
        count = check_binarized(prefix)  # its .idx and .bin complete and of one another
        if count != entry["lines"]:  # a file of another set, or cut
            raise EnsdistError(
                f"{prefix}.idx: {count} sentences, but {path} says set {entry['name']!r} "
                f"has {entry['lines']}"
            )
    return manifest
