"""The house rules a reviewer would otherwise check by hand (docs/architecture.md, "Layers").

- Layers: a module imports only from its own layer or the layers below it, never back up.
- Pure layers (base, math and formats) import no fairseq.
- Every command lives in cli/ and is a console script in setup.py; the recipes call the console
  scripts, never `python -m ensdist_fairseq...`.
"""

import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "ensdist_fairseq")

# Module (or package) prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "errors": 0,
    "hashing": 0,
    "atomic_files": 0,
    "numeric": 0,
    "results": 0,
    "environment": 0,
    "corpus": 1,
    "store": 1,
    "losses": 1,
    "metrics": 1,
    "uncertainty.measures": 1,
    "uncertainty.fast_measures": 1,
    "uncertainty.sequence": 1,
    "checkpoints": 2,
    "data": 2,
    "teachers": 2,
    "models": 2,
    "criterions": 2,
    "tasks": 2,
    "evaluation": 2,
    "uncertainty": 2,
    "report": 3,
    "cli": 4,
}
PURE = 1  # layers 0 and 1 import no fairseq


def module_name(path: str) -> str:
    rel = os.path.relpath(path, PKG)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def layer(module: str):
    best = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def package_imports(path: str):
    """(imported ensdist_fairseq module, line) and the set of top-level third-party packages."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    ours, third = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert (
                node.level == 0
            ), f"{path}:{node.lineno}: relative import (the house uses absolute)"
            mod = node.module or ""
            if mod == "ensdist_fairseq":
                ours += [(a.name, node.lineno) for a in node.names]
            elif mod.startswith("ensdist_fairseq."):
                sub = mod[len("ensdist_fairseq.") :]
                ours += [
                    (
                        (
                            f"{sub}.{a.name}"
                            if layer(f"{sub}.{a.name}") is not None
                            and os.path.exists(
                                os.path.join(PKG, *f"{sub}.{a.name}".split(".")) + ".py"
                            )
                            else sub
                        ),
                        node.lineno,
                    )
                    for a in node.names
                ]
            else:
                third.add(mod.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ensdist_fairseq."):
                    ours.append((a.name[len("ensdist_fairseq.") :], node.lineno))
                else:
                    third.add(a.name.split(".")[0])
    return ours, third


MODULES = sorted(
    p
    for p in glob.glob(os.path.join(PKG, "**", "*.py"), recursive=True)
    if os.path.relpath(p, PKG) != "__init__.py"
)


def test_every_module_has_a_layer():
    assert [module_name(p) for p in MODULES if layer(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_import_from_a_higher_layer(path):
    me = module_name(path)
    ours, third = package_imports(path)
    for target, line in ours:
        if target in ("__version__", "register_with_fairseq"):  # the package root: registration
            continue
        assert layer(target) is not None, f"{me}:{line} imports unknown ensdist_fairseq.{target}"
        assert layer(target) <= layer(me), (
            f"ensdist_fairseq.{me} (layer {layer(me)}) imports ensdist_fairseq.{target} "
            f"(layer {layer(target)}) at line {line}: a lower layer must not import a higher one"
        )
    if layer(me) <= PURE:
        assert not {"fairseq", "fairseq_cli"} & third, f"{me} is pure but imports fairseq"


def _console_scripts():
    text = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    return dict(re.findall(r'"(ensdist-[\w-]+)=ensdist_fairseq\.([\w.]+):main"', text))


def test_every_command_is_a_console_script_in_cli():
    scripts = _console_scripts()
    assert all(m.startswith("cli.") for m in scripts.values()), scripts
    with_main = set()
    for path in MODULES:
        tree = ast.parse(open(path, encoding="utf-8").read())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            with_main.add(module_name(path))
    assert with_main == set(scripts.values()), (
        "modules with a main() and the console scripts differ: "
        f"{sorted(with_main ^ set(scripts.values()))}"
    )


def test_commands_share_the_parser_and_the_error_policy():
    """Every command but the fairseq-train wrapper and ensdist-path uses cli/options.py."""
    for name, module in _console_scripts().items():
        if module in ("cli.train", "cli.path"):
            continue
        src = open(os.path.join(PKG, *module.split(".")) + ".py", encoding="utf-8").read()
        assert "@options.command" in src and "options.Parser(" in src, name
        assert "sys.exit(main())" not in src and 'print(f"error:' not in src, name


def test_recipes_call_console_scripts():
    for path in glob.glob(os.path.join(ROOT, "scripts", "*.sh")):
        text = open(path, encoding="utf-8").read()
        assert "-m ensdist_fairseq" not in text, f"{path}: call the console script instead"


def test_no_references_to_work_items_or_outside_files():
    pattern = re.compile(r"\b(issue \d+|H\d\b|DESIGN\.md)")
    hits = []
    others = [os.path.join(ROOT, f) for f in ("README.md", "BENCHMARKS.md")]
    for pattern_ in ("tests/*.py", "docs/*.md", "scripts/*.sh", "configs/*.sh", "benchmarks/*"):
        others += glob.glob(os.path.join(ROOT, pattern_))
    for path in MODULES + sorted(others):
        if path == os.path.abspath(__file__) or not path.endswith((".py", ".md", ".sh")):
            continue
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if pattern.search(line):
                hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert hits == []
