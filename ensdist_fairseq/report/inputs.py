"""The report's inputs, checked before any table is made: every file is a regular file of
valid JSON, every uncertainty system is complete (its set files are the ones its system.json
describes: same record count, same sha256) and the systems of one table were measured the same
way (split, decoding options, --limit, OOD set sizes). Each refusal is one EnsdistError naming
the file; nothing here computes a number of the report.
"""

import glob
import hashlib
import json
import math
import os
from typing import Dict, List, Sequence

from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.results import (
    NonFiniteJSON,
    check_regular,
    read_json,
    refuse_non_finite,
)  # noqa: F401

SYSTEM_FILE = "system.json"
SYSTEM_KEYS = ("name", "group", "kind", "measures", "sets", "beam", "generation", "limit")
SET_KEYS = ("name", "role", "file", "sentences", "sha256")
# What must be equal for two uncertainty systems to share a table (and its one header).
SAME_MEASUREMENT = ("split", "beam", "generation", "limit", "weight_temperature")


def result_files(results_dir: str) -> List[str]:
    """The *.json files of a results directory, sorted, each a regular file."""
    paths = sorted(glob.glob(os.path.join(glob.escape(results_dir), "*.json")))
    for p in paths:
        check_regular(p)
    return paths


def check_same_decoding(results: Sequence[dict], sources: Sequence[str]) -> None:
    """ensdist-evaluate results with BLEU share one table only if decoded alike."""
    decoded = [(r, s) for r, s in zip(results, sources) if r.get("bleu") is not None]
    for r, src in decoded[1:]:
        first, first_src = decoded[0]
        for key in ("generation", "post_process"):
            if r.get(key) != first.get(key):
                raise EnsdistError(
                    f"{src}: decoded with {key} {r.get(key)!r}, {first_src} with "
                    f"{first.get(key)!r}: their BLEU is not comparable"
                )


def check_uncertainty(unc_dir: str) -> None:
    """Every system directory under RESULTS/uncertainty is a complete, consistent result, and
    all of them were measured the same way."""
    if not os.path.isdir(unc_dir):
        return
    systems = []
    for d in sorted(glob.glob(os.path.join(glob.escape(unc_dir), "*"))):
        if not os.path.isdir(d):
            continue
        meta_path = os.path.join(d, SYSTEM_FILE)
        if not os.path.lexists(meta_path):
            if glob.glob(os.path.join(glob.escape(d), "*.jsonl*")):
                raise EnsdistError(
                    f"{d}: set files without {SYSTEM_FILE} (an interrupted ensdist-uncertainty "
                    "run: rerun it)"
                )
            continue
        systems.append((check_system(meta_path), meta_path))
    for meta, path in systems[1:]:
        first, first_path = systems[0]
        for key in SAME_MEASUREMENT:
            if meta.get(key) != first.get(key):
                raise EnsdistError(
                    f"{path}: {key} {meta.get(key)!r} differs from {first_path}'s "
                    f"{first.get(key)!r} (one table compares systems measured alike)"
                )
        sizes, first_sizes = _set_sizes(meta), _set_sizes(first)
        for name in sorted(set(sizes) & set(first_sizes)):
            if sizes[name] != first_sizes[name]:
                raise EnsdistError(
                    f"{path}: set {name!r} has {sizes[name]} sentences, {first_path}'s "
                    f"{first_sizes[name]}"
                )


def _set_sizes(meta: dict) -> Dict[str, int]:
    return {s["name"]: s["sentences"] for s in meta["sets"]}


def check_system(meta_path: str) -> dict:
    """One system.json and its set files; the parsed system.json."""
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise EnsdistError(f"{meta_path}: not an ensdist-uncertainty system (not a JSON object)")
    missing = [k for k in SYSTEM_KEYS if k not in meta]
    if missing:
        raise EnsdistError(
            f"{meta_path}: not a complete ensdist-uncertainty system (missing "
            f"{', '.join(missing)}; one written by an older version: rerun it)"
        )
    if not isinstance(meta["sets"], list) or not isinstance(meta["measures"], list):
        raise EnsdistError(f"{meta_path}: 'sets' and 'measures' must be lists")
    roles = []
    for i, s in enumerate(meta["sets"]):
        lacks = [k for k in SET_KEYS if not isinstance(s, dict) or k not in s]
        if lacks:
            raise EnsdistError(f"{meta_path}: set {i + 1} lacks {', '.join(lacks)}")
        if os.path.basename(s["file"]) != s["file"]:
            raise EnsdistError(f"{meta_path}: set file {s['file']!r} is not in its directory")
        check_set_file(os.path.join(os.path.dirname(meta_path), s["file"]), s, meta, meta_path)
        roles.append(s["role"])
    if roles.count("in-domain") != 1:
        raise EnsdistError(f"{meta_path}: {roles.count('in-domain')} in-domain sets, expected 1")
    return meta


def check_set_file(path: str, entry: dict, meta: dict, meta_path: str) -> None:
    """The set file is the one system.json describes, and every record holds every measure as a
    finite number."""
    if not os.path.lexists(path):
        raise EnsdistError(f"{path}: not found (listed in {meta_path})")
    check_regular(path)
    sha, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            sha.update(raw)
            try:
                record = json.loads(raw.decode("utf-8"), parse_constant=refuse_non_finite)
                values = [record["uncertainty"][m] for m in meta["measures"]]
                values += [record["chrf"]] if "chrf" in record else []
            except NonFiniteJSON as e:
                raise EnsdistError(f"{path}: line {n}: {e} is not a number JSON allows") from None
            except (ValueError, KeyError, TypeError) as e:
                raise EnsdistError(f"{path}: line {n}: not a record of this system ({e})") from None
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise EnsdistError(f"{path}: line {n}: a measure is not a finite number")
    if n != entry["sentences"]:
        raise EnsdistError(
            f"{path}: {n} records, but {meta_path} says {entry['sentences']} (cut, or "
            "left by another run)"
        )
    if sha.hexdigest() != entry["sha256"]:
        raise EnsdistError(
            f"{path}: not the file {meta_path} describes (sha256 differs: written by "
            "another run into the same --out?)"
        )
