"""Out-of-distribution input sets for OOD detection, built from files already on the machine.

    ensdist-ood-sets --data-dir runs/demo/data --out runs/demo/ood [--size 500] [--seed 1]
                     [--extra NAME=FILE ...]

DATA_DIR is a prepared corpus (scripts/prepare_raw.sh): raw/test.{SRC,TGT}, spm/spm.model,
bin/dict.SRC.txt. In-domain is the corpus's own test split (DATA_DIR/bin, split `test`); the OOD
sets mirror the four of the Proxy-Dirichlet paper's Table 4 (Malinin & Gales 2021):
  permuted  test sources with their words shuffled (seeded, per sentence)       ~ "Permuted"
  target    test sentences of the *target* language given as sources           ~ "German"
  domain    source-language text of another domain: message strings of the    ~ "Speech"
            gettext catalogs of Debian's Essential packages (English msgids, or the source
            language's translations when the source is not English)
  third     a third language (French, else Spanish) from the same catalogs      ~ "French"
Essential packages (coreutils, bash, dpkg, tar, sed, grep, findutils, diffutils, login) are on
every Debian system, so nothing is downloaded; the manifest records each catalog's package and
version, and the same packages give the same sets. Every set is deterministic: sorted, de-
duplicated lines, a seeded sample of --size; the builder fails if a set has fewer lines.

Out (OUT/): raw/NAME.SRC (text), spm/NAME.SRC (pieces, the corpus's SentencePiece model),
bin/NAME.SRC.{bin,idx} (fairseq mmap, the corpus's source dictionary), ood_sets.json (manifest,
written last). `ensdist-uncertainty --ood-dir OUT` reads the manifest.
"""

import gettext
import glob
import json
import os
import random
import re
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

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

    A line is kept when, after dropping leading option names ("-x", "--name=VAR"), it has 4..40
    words and every word is letters with at most a trailing punctuation mark."""
    out = []
    for line in text.replace("\t", " ").split("\n"):
        words = line.split()
        while words and (words[0].startswith("-") or "=" in words[0]):
            words.pop(0)
        if 4 <= len(words) <= 40 and all(_WORD.match(w) for w in words):
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


def permute_words(line: str, rng: random.Random) -> str:
    """The line's words in a random order that differs from the original when it can."""
    words = line.split()
    if len(set(words)) < 2:
        return line
    shuffled = words[:]
    while shuffled == words:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


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
    data_dir: str, size: int, seed: int, extra: Dict[str, str], locale_dir: str = LOCALE_DIR
) -> Tuple[Dict[str, List[str]], dict]:
    """{name: source lines} of every OOD set and the manifest's provenance entries."""
    src, tgt = corpus_languages(data_dir)
    test_src = read_lines(os.path.join(data_dir, "raw", f"test.{src}"))
    test_tgt = read_lines(os.path.join(data_dir, "raw", f"test.{tgt}"))
    rng = random.Random(seed)
    sets = {
        "permuted": [permute_words(s, rng) for s in sample(test_src, size, seed, "permuted")],
        "target": sample(test_tgt, size, seed, f"target ({tgt} test sentences)"),
    }
    about = {
        "permuted": f"test.{src} with words shuffled (seed {seed})",
        "target": f"test.{tgt}: {tgt} sentences given as {src} sources",
    }
    provenance = {}
    domain, provenance["domain"] = catalog_lines(src, locale_dir)
    sets["domain"] = sample(
        domain, size, seed, f"domain ({src} gettext catalogs under {locale_dir})"
    )
    about["domain"] = f"{src} message strings of Debian Essential packages' gettext catalogs"
    third = next(lang for lang in THIRD_LANGUAGES if lang not in (src, tgt))
    lines, provenance["third"] = catalog_lines(third, locale_dir)
    sets["third"] = sample(
        lines, size, seed, f"third ({third} gettext catalogs under {locale_dir})"
    )
    about["third"] = f"{third} message strings of the same catalogs (a third language)"
    for name, path in extra.items():
        if name in sets or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise EnsdistError(f"--extra {name}={path}: name must be new and [A-Za-z0-9_]")
        if not os.path.isfile(path):
            raise EnsdistError(f"--extra {name}={path}: file not found")
        sets[name] = [line for line in read_lines(path) if line.strip()]
        if not sets[name]:
            raise EnsdistError(f"--extra {name}={path}: no non-empty lines")
        about[name] = f"user file {os.path.abspath(path)}"
    return sets, {"src": src, "tgt": tgt, "about": about, "catalogs": provenance}


def encode_and_binarize(lines: Sequence[str], spm_model: str, dict_path: str, out_prefix: str):
    """Pieces (one line each) and a fairseq mmap dataset of `lines` with the corpus's own
    SentencePiece model and dictionary (as fairseq-preprocess: pieces + </s>)."""
    import sentencepiece as spm
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    dictionary = Dictionary.load(dict_path)
    pieces = [" ".join(sp.encode(line, out_type=str)) for line in lines]
    builder = indexed_dataset.make_builder(
        out_prefix + ".bin", impl="mmap", vocab_size=len(dictionary)
    )
    unknown = 0
    for p in pieces:
        ids = dictionary.encode_line(p, add_if_not_exist=False, append_eos=True).long()
        unknown += int((ids == dictionary.unk()).sum())
        builder.add_item(torch.IntTensor(ids.int()))
    builder.finalize(out_prefix + ".idx")
    return pieces, unknown


def write_sets(
    data_dir: str,
    out: str,
    size: int = 500,
    seed: int = 1,
    extra: Optional[Dict[str, str]] = None,
    locale_dir: str = LOCALE_DIR,
) -> dict:
    sets, meta = build_sets(data_dir, size, seed, extra or {}, locale_dir)
    src = meta["src"]
    spm_model = os.path.join(data_dir, "spm", "spm.model")
    dict_path = os.path.join(data_dir, "bin", f"dict.{src}.txt")
    for path in (spm_model, dict_path):
        if not os.path.isfile(path):
            raise EnsdistError(f"--data-dir {data_dir}: {path} not found")
    for sub in ("raw", "spm", "bin"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    entries = []
    for name, lines in sets.items():
        with open(os.path.join(out, "raw", f"{name}.{src}"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        pieces, unknown = encode_and_binarize(
            lines, spm_model, dict_path, os.path.join(out, "bin", f"{name}.{src}")
        )
        with open(os.path.join(out, "spm", f"{name}.{src}"), "w", encoding="utf-8") as f:
            f.writelines(p + "\n" for p in pieces)
        entries.append(
            {
                "name": name,
                "lines": len(lines),
                "unk_tokens": unknown,
                "about": meta["about"][name],
                "bin": f"bin/{name}.{src}",
                "raw": f"raw/{name}.{src}",
                "raw_sha256": file_sha256(os.path.join(out, "raw", f"{name}.{src}")),
            }
        )
    manifest = {
        "schema_version": 1,
        "data_dir": os.path.abspath(data_dir),
        "src": src,
        "tgt": meta["tgt"],
        "size": size,
        "seed": seed,
        "in_domain": "test",
        "dict_sha256": file_sha256(dict_path),
        "spm_sha256": file_sha256(spm_model),
        "sets": entries,
        "catalogs": meta["catalogs"],
    }
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out, MANIFEST))
    return manifest


def read_manifest(ood_dir: str) -> dict:
    path = os.path.join(ood_dir, MANIFEST)
    if not os.path.isfile(path):
        raise EnsdistError(f"--ood-dir {ood_dir}: no {MANIFEST} (build it with ensdist-ood-sets)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
