"""The layering rules of docs/architecture.md, checked on the source: a forbidden import fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "crystalformer_rl"

# Every layer but the crystallography core (crystallography.py and the Wyckoff tables beside it).
ABOVE_THE_CORE = {
    "tokenization",
    "modeling_crystalformer",
    "reward_models",
    "evaluation",
    "trainers",
    "data",
    "pretrained",
    "cli",
    "commands",
    "sampling",
    "devices",
    "errors",
    "utils",
}

# The command line: nothing in the library imports it.
COMMAND_LINE = {"commands", "cli"}

# layer -> layers it must not import (by the first component under crystalformer_rl)
FORBIDDEN = {
    "crystallography": ABOVE_THE_CORE | {"wyckoff"},
    "wyckoff": ABOVE_THE_CORE,
    "modeling_crystalformer": {"tokenization", "trainers", "reward_models", "evaluation", "data"} | COMMAND_LINE,
    "tokenization": {"modeling_crystalformer", "trainers", "reward_models", "evaluation"} | COMMAND_LINE,
    "reward_models": {"trainers"} | COMMAND_LINE,
    "evaluation": {"trainers"} | COMMAND_LINE,
    "trainers": COMMAND_LINE,  # library code lives in `sampling`, `trainers.utils`; `commands` is the command line
    "data": COMMAND_LINE,
    "pretrained": COMMAND_LINE,
    "sampling": COMMAND_LINE,
    "devices": {"trainers", "reward_models", "evaluation", "modeling_crystalformer"} | COMMAND_LINE,
    "errors": {"trainers", "reward_models", "evaluation", "modeling_crystalformer", "tokenization"} | COMMAND_LINE,
    "utils": COMMAND_LINE,
    # `commands` (and `cli`, the console script calling it) may import anything
}


def imported_layers(source: str, module: str) -> set[str]:
    """The crystalformer_rl sub-modules that `source` (the text of crystalformer_rl.<module>) imports."""
    parts = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = parts[: len(parts) - node.level] if node.level <= len(parts) else []
                base = ".".join(["crystalformer_rl", *package, *([node.module] if node.module else [])])
                names = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "crystalformer_rl" and len(pieces) > 1:
                found.add(pieces[1])
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        layer = module.split(".")[0]
        for bad in imported_layers(path.read_text(), module) & FORBIDDEN.get(layer, set()):
            out.append(f"crystalformer_rl/{path.relative_to(PACKAGE)} imports crystalformer_rl.{bad}")
    return out


def test_no_layer_imports_what_it_must_not_know():
    assert violations() == []


@pytest.mark.parametrize(
    "source, module, expected",
    [
        ("from ..trainers import CrystalRLConfig", "reward_models.ehull", {"trainers"}),
        (
            "import crystalformer_rl.reward_models.ehull as e",
            "modeling_crystalformer.modeling_crystalformer",
            {"reward_models"},
        ),
        ("from .. import evaluation", "modeling_crystalformer.sampling_crystalformer", {"evaluation"}),
        ("from .energy import relax_structure", "reward_models.ehull", {"reward_models"}),
        ("def f():\n    from ..commands.train import load_reward\n", "reward_models.base", {"commands"}),
        ("from ..commands import parse_args", "trainers.sft", {"commands"}),
        ("from crystalformer_rl.cli import main", "evaluation.evaluate", {"cli"}),
        (
            "from ..tokenization.wyckoff import WyckoffTables",
            "modeling_crystalformer.modeling_crystalformer",
            {"tokenization"},
        ),
        ("from .wyckoff import WyckoffTables", "crystallography", {"wyckoff"}),
        ("from .tokenization import CrystalTokens", "wyckoff", {"tokenization"}),
    ],
)
def test_the_checker_sees_a_deliberate_violation(source, module, expected):
    """Absolute, relative and function-level imports are all seen, so a violation cannot slip through."""
    assert imported_layers(source, module) == expected
    layer = module.split(".")[0]
    assert (expected & FORBIDDEN[layer]) == (expected - {layer})
