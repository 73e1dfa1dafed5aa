"""The layering rules of docs/architecture.md, checked on the source: a forbidden import, or an import cycle between
modules (imports inside functions included), fails this test; each rule is also shown failing on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "crystalformer_rl"

# Every layer but the crystallography core (crystallography.py and the Wyckoff tables beside it).
ABOVE_THE_CORE = {
    "materials",
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
    "plotting",
}

# The command line: nothing in the library imports it.
COMMAND_LINE = {"commands", "cli"}

# The physics floor may stand only on these (docs/architecture.md): no model, no trainer, no reward, no evaluation.
MATERIALS_MAY_IMPORT = {"crystallography", "wyckoff", "tokenization", "data", "devices", "errors", "utils", "materials"}
EVERY_LAYER = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
    p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()
}

# layer -> layers it must not import (by the first component under crystalformer_rl)
FORBIDDEN = {
    "materials": EVERY_LAYER - MATERIALS_MAY_IMPORT,
    "crystallography": ABOVE_THE_CORE | {"wyckoff"},
    "wyckoff": ABOVE_THE_CORE,
    "modeling_crystalformer": {"tokenization", "trainers", "reward_models", "evaluation", "data"} | COMMAND_LINE,
    "tokenization": {"modeling_crystalformer", "trainers", "reward_models", "evaluation"} | COMMAND_LINE,
    "reward_models": {"trainers", "evaluation"} | COMMAND_LINE,  # both stand on `materials`, never on each other
    "evaluation": {"trainers", "reward_models"} | COMMAND_LINE,
    "trainers": {"evaluation"} | COMMAND_LINE,  # trainers use rewards and materials; `commands` is the command line
    "data": {"materials", "reward_models", "evaluation", "trainers"} | COMMAND_LINE,
    "pretrained": COMMAND_LINE,
    "sampling": COMMAND_LINE,
    "devices": {"trainers", "reward_models", "evaluation", "modeling_crystalformer"} | COMMAND_LINE,
    "errors": {"trainers", "reward_models", "evaluation", "modeling_crystalformer", "tokenization"} | COMMAND_LINE,
    "utils": COMMAND_LINE,
    "plotting": EVERY_LAYER - {"utils", "errors", "plotting"},  # the one plotting style, under evaluation and trainers
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


# ------------------------------------------------------------------------------------------------- cycles
def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(["crystalformer_rl", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` imports (absolute, relative, inside functions), each resolved to
    the deepest known module its name names (``from .x import y``: the submodule ``x.y`` if it is one, else ``x``)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        floor = ""
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
                # `from .missing import x` (a module that is not in the package, e.g. one only a model folder's
                # remote code has) imports nothing of it, not the package above it
                floor = ".".join(parent) if node.module else ""
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not (floor and len(name) <= len(floor)):
                found.add(name)
    return found


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the modules it imports, from ``{module: (source, is_package)}``."""
    known = set(sources)
    return {m: imported_modules(text, m, is_package, known) for m, (text, is_package) in sources.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_cycles_between_modules():
    """No two modules import each other, directly or round a circle, counting imports inside functions (a
    function-level import must not hide a cycle)."""
    assert cycles(import_graph(package_sources())) == []


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function():
    sources = package_sources()
    text, is_package = sources["crystalformer_rl.materials.hull"]
    sources["crystalformer_rl.materials.hull"] = (text + "\n\ndef f():\n    from .ehull import EhullCalculator\n", is_package)
    assert ["crystalformer_rl.materials.ehull", "crystalformer_rl.materials.hull"] in cycles(import_graph(sources))


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
        # the physics floor knows no reward, evaluation, trainer or model
        ("from ..reward_models.base import CrystalReward", "materials.property", {"reward_models"}),
        ("def f():\n    from ..evaluation import summarize\n", "materials.ehull", {"evaluation"}),
        ("from ..trainers import CrystalRLConfig", "materials.relaxation", {"trainers"}),
        ("from ..modeling_crystalformer import SamplingOptions", "materials.io", {"modeling_crystalformer"}),
        ("from ..pretrained import model_reference", "materials.matching", {"pretrained"}),
        # rewards and evaluation stand side by side on materials
        ("from ..evaluation.evaluate import summarize", "reward_models.novelty", {"evaluation"}),
        ("def f():\n    from ..reward_models import EhullReward\n", "evaluation.evaluate", {"reward_models"}),
        # trainers use rewards and materials, never evaluation
        ("def f():\n    from ..evaluation import evaluate_structures\n", "trainers.sft", {"evaluation"}),
    ],
)
def test_the_checker_sees_a_deliberate_violation(source, module, expected):
    """Absolute, relative and function-level imports are all seen, so a violation cannot slip through."""
    assert imported_layers(source, module) == expected
    layer = module.split(".")[0]
    assert (expected & FORBIDDEN[layer]) == (expected - {layer})


def test_one_plotting_style_no_pyplot_in_the_package():
    """Every figure is a Figure on its own Agg canvas (crystalformer_rl/plotting.py): no module uses pyplot or
    switches matplotlib's global backend."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "matplotlib.pyplot" in path.read_text() or "matplotlib.use(" in path.read_text()
    ]
    assert offenders == []
