"""The rules every command shares, checked over every command's real parser (fast, no fairseq
run): each numeric option is parsed by the one numeric-flag rule; an output is never an input;
a result is never written with NaN; one writer per output."""

import argparse
import importlib
import json
import math
import os
import re

import pytest

from ensdist_fairseq.atomic_files import OutputLock, finite_json
from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
# every console script on our parser (ensdist-path prints a path, ensdist-train is fairseq-train)
COMMANDS = tuple(
    m
    for m in re.findall(r"ensdist-[\w-]+=ensdist_fairseq\.cli\.(\w+):main", open(SETUP).read())
    if m not in ("path", "train")
)


class _Captured(BaseException):  # not an Exception: passes through the commands' error policy
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str) -> argparse.ArgumentParser:
    """The parser a command's main() builds (stopped at its first parse)."""
    main = importlib.import_module(f"ensdist_fairseq.cli.{module}").main

    def capture(self, *a, **k):
        raise _Captured(self)

    saved = options.Parser.parse_args, options.Parser.parse_known_args
    options.Parser.parse_args = options.Parser.parse_known_args = capture
    try:
        main([])
    except _Captured as c:
        return c.parser
    finally:
        options.Parser.parse_args, options.Parser.parse_known_args = saved
    raise AssertionError(f"{module}: main() parsed nothing")


def value_options(parser):
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_numeric_option_follows_the_one_rule(module):
    parser = parser_of(module)
    numeric = []
    for action in value_options(parser):
        is_number = isinstance(action.default, (int, float)) and not isinstance(
            action.default, bool
        )
        name = getattr(action.type, "__name__", None)
        assert action.type not in (int, float), f"{module} {action.option_strings}: bare {name}"
        if is_number or name in ("integer", "number"):
            assert name in ("integer", "number"), f"{module} {action.option_strings}: type {name}"
            numeric.append(action)
    for action in numeric:
        flag = action.option_strings[0]
        refused = ("nan", "NaN", "", "0x10", "one")
        if action.type.__name__ == "integer":  # past a C long, or not an integer
            refused += (str(10**20), str(-(10**20)), "1.5", "1e3", "inf")
        for text in refused:
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(text)
        if action.default is not None:  # the default itself obeys the rule
            assert action.type(str(action.default)) == action.default, flag


def test_every_command_is_covered():
    assert {"evaluate", "uncertainty", "memoize", "report", "swa"} <= set(COMMANDS)


def test_infinity_only_where_it_means_something():
    allowed = set()
    for module in COMMANDS:
        for action in value_options(parser_of(module)):
            if getattr(action.type, "__name__", None) == "number":
                try:
                    action.type("inf")
                    allowed.add((module, action.option_strings[0]))
                except argparse.ArgumentTypeError:
                    pass
    assert allowed == {("memoize", "--log-interval")}  # inf = no progress lines


def test_decoding_options_refuse_what_the_search_cannot_use():
    parser = parser_of("evaluate")
    kinds = {a.option_strings[0]: a.type for a in value_options(parser)}
    for flag, bad in (
        ("--lenpen", "1e300"),
        ("--unkpen", "1e30"),
        ("--temperature", "1e-320"),
        ("--max-len-a", "inf"),
        ("--beam", "0"),
        ("--max-len-b", "0"),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            kinds[flag](bad)
    # the largest accepted length penalty on the longest length stays a finite float
    assert math.isfinite(float(2**31) ** kinds["--lenpen"]("10"))


def test_an_output_is_never_an_input(tmp_path):
    src = tmp_path / "a.pt"
    src.write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.pt")
    os.symlink(src, tmp_path / "soft.pt")
    for out in (str(src), str(tmp_path / "sub" / ".." / "a.pt"), str(tmp_path / "hard.pt")):
        with pytest.raises(EnsdistError, match=r"--output .*: is the input --path .*a\.pt"):
            options.check_outputs([("--output", out)], [("--path", str(src))])
    with pytest.raises(EnsdistError, match="is the input"):
        options.check_outputs([("--output", str(tmp_path / "soft.pt"))], [("--path", str(src))])
    with pytest.raises(EnsdistError, match=r"--output-md .*x: is also the output --output-json"):
        options.check_outputs(
            [("--output-json", str(tmp_path / "x")), ("--output-md", str(tmp_path / "x"))], []
        )
    options.check_outputs([("--output", str(tmp_path / "new.json"))], [("--path", str(src))])
    assert src.read_bytes() == b"weights"


def test_results_are_never_written_with_nan():
    assert json.loads(finite_json({"a": [1.0, {"b": 2}]}, "x")) == {"a": [1.0, {"b": 2}]}
    for bad, key in (
        ({"ece1": {"weighted": math.nan}}, "ece1.weighted"),
        ({"sets": [{"x": 1.0}, {"x": -math.inf}]}, "sets.1.x"),
    ):
        with pytest.raises(EnsdistError, match=rf"^out\.json: {key} is not a finite number"):
            finite_json(bad, "out.json")
    assert "\n" not in finite_json({"a": "é"}, "x", indent=None)


def test_one_writer_per_output(tmp_path):
    lock = OutputLock(str(tmp_path / ".lock"), "--out d")
    with pytest.raises(EnsdistError, match=r"--out d: another run is writing here"):
        OutputLock(str(tmp_path / ".lock"), "--out d")
    lock.release()
    OutputLock(str(tmp_path / ".lock"), "--out d").release()
