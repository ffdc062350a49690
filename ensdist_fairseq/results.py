"""The result files' schema, in one place: what ensdist-evaluate and ensdist-uncertainty write
and what the report reads (docs/evaluation.md, docs/uncertainty.md).

A result is a JSON object with a "schema_version"; a reader refuses a version it does not know
and a file missing a key it reads, naming the file. Writers build their object through
`Schema.make` (every required key present, the version stamped), so adding a field is one edit
here and one where it is computed. Extra keys are allowed: fields are additive.
"""

import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ensdist_fairseq.atomic_files import atomic_open
from ensdist_fairseq.errors import EnsdistError


@dataclass(frozen=True)
class Schema:
    what: str  # the writer, for messages
    version: int
    required: Tuple[str, ...]
    choices: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()

    def make(self, **fields) -> dict:
        """The result object: the version first, then `fields`; raises on a missing key."""
        missing = [k for k in self.required if k not in fields]
        if missing:
            raise ValueError(f"{self.what} result lacks {', '.join(missing)}")
        return {"schema_version": self.version, **fields}

    def is_one(self, data) -> bool:
        """Whether `data` claims to be a result of this schema (a run directory may hold other
        JSON files, which readers skip)."""
        return isinstance(data, dict) and "schema_version" in data

    def check(self, data: dict, source: str) -> dict:
        version = data.get("schema_version")
        if version != self.version:
            raise EnsdistError(
                f"{source}: schema_version {version!r} of {self.what}, this reader knows "
                f"{self.version}"
            )
        missing = [k for k in self.required if k not in data]
        if missing:
            raise EnsdistError(
                f"{source}: not an {self.what} result (missing {', '.join(missing)})"
            )
        for key, allowed in self.choices:
            if data[key] not in allowed:
                raise EnsdistError(
                    f"{source}: {key} {data[key]!r} is not one of {', '.join(allowed)}"
                )
        return data


KINDS = ("individual", "ensemble", "student")

EVALUATION = Schema(
    what="ensdist-evaluate",
    version=1,
    required=(
        "name",
        "method",
        "kind",
        "num_models",
        "split",
        "num_bins",
        "bleu",
        "ece1",
        "ece5",
        "brier",
        "nll",
        "accuracy",
        "reliability",
    ),
    choices=(("kind", KINDS),),
)

UNCERTAINTY = Schema(
    what="ensdist-uncertainty",
    version=1,
    required=("name", "group", "kind", "num_models", "measures", "beam", "sets"),
)


TOKEN_ARRAYS = ("sentence", "confidence", "correct", "log_prob")


def token_file_of(output: str) -> str:
    """The per-token sidecar of an ensdist-evaluate result: r.json -> r.tokens.npz. It holds,
    per target token in dataset order, its sentence id, top-1 confidence, whether the top-1 is
    the reference, and ln p(reference): what resampling sentences needs for ECE-1 and NLL."""
    return (output[:-5] if output.endswith(".json") else output) + ".tokens.npz"


def write_token_file(path: str, arrays: dict) -> None:
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **{k: arrays[k] for k in TOKEN_ARRAYS})


def read_token_file(result: dict, result_path: str) -> Optional[dict]:
    """The sidecar a result names (beside the result file), or None when it has none or the
    file is gone; EnsdistError when it is there but not what the result says."""
    name = result.get("token_file")
    if not name:
        return None
    path = os.path.join(os.path.dirname(result_path), name)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in TOKEN_ARRAYS}
    except (OSError, ValueError, KeyError) as e:
        raise EnsdistError(f"{path}: not a token file ({e})") from None
    if len(arrays["sentence"]) != result.get("num_tokens"):
        raise EnsdistError(
            f"{path}: {len(arrays['sentence'])} tokens, its result says {result.get('num_tokens')}"
        )
    return arrays


def check_regular(path: str) -> None:
    """A FIFO or a device would block or never end a read: only regular files are read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise EnsdistError(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise EnsdistError(f"{path}: not a regular file")


def read_json(path: str):
    """The JSON value of a regular file; EnsdistError naming the file and the line."""
    check_regular(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse_non_finite)
    except UnicodeDecodeError as e:
        raise EnsdistError(
            f"{path}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise EnsdistError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except NonFiniteJSON as e:
        raise EnsdistError(f"{path}: {e} is not a number JSON allows") from None


class NonFiniteJSON(ValueError):
    pass


def refuse_non_finite(name: str):
    raise NonFiniteJSON(name)  # NaN / Infinity: Python's json reads them, no other reader does


def non_finite_field(value, key: str = "") -> Optional[str]:
    """The first number in a result that is NaN or infinite (its key path), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value) if isinstance(value, list) else ()
    )
    for k, v in items:
        found = non_finite_field(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None
