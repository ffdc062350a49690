"""Extract clean English-German example-sentence pairs from the Ding dictionary and split them.

The Ding dictionary (Frank Richter, GPL-2+; Debian package ``trans-de-en``, one UTF-8 file
``/usr/share/trans/de-en``) is a word list, but many entries carry aligned example sentences:

    Abart {f}; Variante {f} | Abarten {pl} | Es gibt sie in vielen Varianten. :: variation; variant | variations | They come in all shapes and sizes.

A line is ``German :: English``; `` | `` separates sub-entries that are aligned by position,
``;`` separates alternatives, ``{..}`` ``[..]`` ``<..>`` are grammar/usage/search tags. The
sub-entries that are whole sentences on both sides are real, human-translated parallel text.

The command is `ensdist-corpus-ding` (cli/corpus_ding.py).
"""

import hashlib
import os
import re
from typing import Dict, Iterable, List, Tuple

Pair = Tuple[str, str]  # (english, german)
SPLITS = ("train", "valid", "test")

# Tags are annotations, not text: {f} {vt} (grammar), [ugs.] [Br.] (register, region, domain),
# <Aalmolch> (alternative spellings kept only for search). They never nest in the Ding file.
_TAG = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>")
# Removing a tag can leave "word ." or "word  word": re-attach punctuation, collapse spaces.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_SPACES = re.compile(r"\s+")
# Curly quotes are straightened so that the same sentence typed with straight quotes elsewhere
# is the same string (dedup) and the subword model does not spend pieces on quote variants.
_QUOTES = str.maketrans(
    {
        "’": "'",
        "‘": "'",
        "‚": "'",
        "′": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "″": '"',
        "«": '"',
        "»": '"',
    }
)
# A sentence ends like a sentence; headwords and phrases ("to keep the distance") do not.
_TERMINAL = (".", "!", "?")


def clean_sub_entry(text: str) -> str:
    """One sub-entry (between `` | ``) -> the text of its first alternative, tags removed."""
    # Tags first: some contain ";" ("{shrove; shriven}") that is not an alternative separator.
    text = _TAG.sub(" ", text)
    # Alternatives are translations of the same thing ("Keine Bange!; Keine Sorge!"); keeping
    # one per side keeps the pair aligned; the first is the dictionary's main form.
    text = text.split(";", 1)[0]
    text = text.translate(_QUOTES)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


def is_sentence(text: str, min_words: int) -> bool:
    """A full sentence: starts with a capital letter, ends in . ! or ?, has >= min_words words.

    The capital excludes infinitive phrases and lower-case fragments ("to adopt an amendment",
    "abschreckend hoher Zoll"); the word count excludes capitalised headwords and short
    interjections ("Ach ja!", "Abstand halten!") that carry no sentence structure.
    """
    return (
        len(text) > 0
        and text[0].isupper()
        and text.endswith(_TERMINAL)
        and len(text.split()) >= min_words
    )


def _may_end_a_sentence(raw: str) -> bool:
    return any(mark in raw for mark in _TERMINAL)


def has_inline_alternatives(text: str) -> bool:
    """Ding marks alternatives inside a sentence with a slash ("sounded/triggered",
    "He / It is"): such a line is an editor's shorthand for several sentences, not one."""
    return "/" in text


def pairs_from_line(line: str, min_words: int) -> List[Pair]:
    """All (english, german) sentence pairs of one dictionary line, in line order."""
    line = line.strip()
    # "#" lines are the file header (version, copyright, licence).
    if not line or line.startswith("#"):
        return []
    sides = line.split(" :: ")
    if len(sides) != 2:
        return []  # no (or an ambiguous) language separator: nothing is aligned
    german, english = (side.split(" | ") for side in sides)
    # Sub-entries are aligned by position only; if the counts differ, an editor left one side
    # incomplete and any position could be misaligned, so the whole line is dropped.
    if len(german) != len(english):
        return []
    pairs = []
    for de_sub, en_sub in zip(german, english):
        # Shortcut with the same result: a sentence ends in . ! or ?, and cleaning adds no
        # characters, so a sub-entry without any of them is skipped before the regexes
        # (9 in 10 sub-entries: the extraction becomes several times faster).
        if not (_may_end_a_sentence(de_sub) and _may_end_a_sentence(en_sub)):
            continue
        de, en = clean_sub_entry(de_sub), clean_sub_entry(en_sub)
        if not (is_sentence(en, min_words) and is_sentence(de, min_words)):
            continue
        if has_inline_alternatives(en) or has_inline_alternatives(de):
            continue
        pairs.append((en, de))
    return pairs


def extract_pairs(lines: Iterable[str], min_words: int) -> List[Pair]:
    """Sentence pairs of the whole file, each English and each German sentence at most once.

    The same example is often listed under several headwords, sometimes with a different
    translation. A pair is dropped if its English OR its German sentence was already taken
    (the first occurrence in file order wins), so no sentence of the test set occurs anywhere
    in train on either side, not just no identical pair.
    """
    seen_en, seen_de = set(), set()
    out = []
    for line in lines:
        for en, de in pairs_from_line(line, min_words):
            if en in seen_en or de in seen_de:
                continue
            seen_en.add(en)
            seen_de.add(de)
            out.append((en, de))
    return out


def _rank_key(pair: Pair, seed: int) -> str:
    # A hash, not random.shuffle: the order depends only on the pair and the seed, so it is the
    # same on every Python version and platform, and editing one line of the dictionary moves
    # only that pair instead of reshuffling every split.
    return hashlib.sha256(f"{seed}\t{pair[0]}\t{pair[1]}".encode("utf-8")).hexdigest()


def rank_pairs(pairs: List[Pair], seed: int) -> List[Pair]:
    """The pairs in a deterministic pseudo-random order (ties, i.e. equal pairs, keep order)."""
    return sorted(pairs, key=lambda p: _rank_key(p, seed))


def heldout_sizes(
    n: int, valid_size: int, test_size: int, max_heldout_fraction: float
) -> Tuple[int, int]:
    """valid/test sizes for n pairs: as asked, or scaled down together so that they take at
    most max_heldout_fraction of the data (a --max-pairs sample must still leave a train set)."""
    budget = int(n * max_heldout_fraction)
    if valid_size + test_size <= budget:
        return valid_size, test_size
    scale = budget / float(valid_size + test_size)
    return int(valid_size * scale), int(test_size * scale)


def split_pairs(
    pairs: List[Pair], valid_size: int, test_size: int, seed: int
) -> Dict[str, List[Pair]]:
    """Disjoint train/valid/test: test and valid are the first pairs of the seeded ranking,
    train is the rest. Each split keeps the dictionary's order (easier to inspect)."""
    ranked = rank_pairs(pairs, seed)
    test = set(ranked[:test_size])
    valid = set(ranked[test_size : test_size + valid_size])
    out = {name: [] for name in SPLITS}
    for p in pairs:
        out["test" if p in test else "valid" if p in valid else "train"].append(p)
    return out


def write_splits(
    out_dir: str, splits: Dict[str, List[Pair]], src: str = "en", tgt: str = "de"
) -> None:
    """Write {split}.{src|tgt}: every file goes to a temporary name first and all are renamed
    only after all were written, so an interrupted run leaves no file under a final name."""
    os.makedirs(out_dir, exist_ok=True)
    done = []
    try:
        for name in SPLITS:
            for lang, side in ((src, 0), (tgt, 1)):
                final = os.path.join(out_dir, f"{name}.{lang}")
                tmp = f"{final}.tmp-{os.getpid()}"
                done.append((tmp, final))
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(p[side] + "\n" for p in splits[name])
    except BaseException:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    for tmp, final in done:
        os.replace(tmp, final)


def mean_words(sentences: List[str]) -> float:
    return sum(len(s.split()) for s in sentences) / max(1, len(sentences))
