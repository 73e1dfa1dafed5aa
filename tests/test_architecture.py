"""The layering rules of docs/architecture.md, checked on the source: an import a layer is not allowed, or an import
cycle between modules (imports inside functions included), fails this test; each rule is also shown failing on
purpose.

A name imported from a package (``from crystalformer_rl import load_model``, ``from . import SUNReward``) is followed
through that package's export tables (the ``_EXPORTS`` dict or the dict given to ``utils.lazy_exports``, and the
``from .x import name`` re-exports of its ``__init__``) to the module that defines it, so an import through the
package's front door or a lazy export is checked, and counted in the cycle graph, as the import it becomes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "crystalformer_rl"
ROOT = "crystalformer_rl"  # the package root's own module (crystalformer_rl/__init__.py), as a layer

# ------------------------------------------------------------------------------------------------- the rules
# docs/architecture.md's table, "may import (of the package)": layer -> the layers it may import. This is an allowlist:
# any other layer of the package is forbidden to it (a layer may always import its own modules).
CRYSTALLOGRAPHY = {"crystallography", "wyckoff"}
UTILITIES = {"devices", "errors", "utils"}
CORE = CRYSTALLOGRAPHY | UTILITIES  # "the core above" of the tokenizer's row
PHYSICS_CORE = CORE | {"tokenization", "data"}  # "only the core" of the materials row, and "the core" below it
BELOW_THE_TRAINERS = PHYSICS_CORE | {
    "plotting",
    "modeling_crystalformer",
    "materials",
    "reward_models",
    "pretrained",
    "sampling",
}
COMMAND_LINE = {"commands", "cli"}
LIBRARY = BELOW_THE_TRAINERS | {"trainers", "evaluation"}  # everything but the command line
MAY_IMPORT: dict[str, set[str]] = {
    "crystallography": set(),
    "wyckoff": {"crystallography"},
    "devices": {"errors"},
    "errors": set(),  # the row's "`errors` only" is itself
    "utils": {"errors"},
    "plotting": {"utils", "errors"},
    "tokenization": CORE,
    "data": CORE | {"tokenization"},
    "modeling_crystalformer": CRYSTALLOGRAPHY,
    "materials": PHYSICS_CORE,
    "reward_models": PHYSICS_CORE | {"materials", "pretrained"},  # never evaluation or trainers
    "evaluation": PHYSICS_CORE | {"materials", "pretrained", "plotting"},  # never reward_models or trainers
    "pretrained": PHYSICS_CORE | {"modeling_crystalformer"},
    "sampling": PHYSICS_CORE | {"modeling_crystalformer"},
    "trainers": BELOW_THE_TRAINERS,  # never evaluation
    # the front door (crystalformer_rl/__init__.py): `__version__`, the AutoConfig hook and the top-level names,
    # imported on first use; and the command line, which may import anything
    ROOT: LIBRARY,
    "commands": LIBRARY | COMMAND_LINE,
    "cli": LIBRARY | COMMAND_LINE,
}
EVERY_LAYER = (
    {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    | {ROOT}
)
# layer -> the layers it must not import: everything its row does not allow
FORBIDDEN = {layer: EVERY_LAYER - allowed - {layer} for layer, allowed in MAY_IMPORT.items()}


def test_the_table_names_every_layer_and_nothing_else():
    """A new module or folder of the package needs its row (here and in docs/architecture.md) before it can pass."""
    assert set(MAY_IMPORT) == EVERY_LAYER
    assert set().union(*MAY_IMPORT.values()) <= EVERY_LAYER


def test_the_doc_has_a_row_for_every_layer():
    """docs/architecture.md's table, which MAY_IMPORT mirrors, has a row for every layer (the root as `__init__.py`)."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    first_column = " ".join(line.split("|")[1] for line in doc.splitlines() if line.startswith("| `"))
    named = {name.removesuffix(".py").rstrip("/") for name in re.findall(r"`([^`]+)`", first_column)}
    assert EVERY_LAYER - {ROOT} <= named and "__init__" in named


# ------------------------------------------------------------------------------------------------- reading imports
def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join([ROOT, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def package_sources() -> dict[str, tuple[str, bool]]:
    """``{module: (source, is_package)}`` of every module of the package. The model folder embedded in
    ``pretrained/default/`` holds flat copies of the model's modules (its remote code, ``from .crystallography``):
    they are read as modules of ``crystalformer_rl.pretrained.default``, which they are, and import only each other."""
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    """The layer of ``crystalformer_rl.<layer>[...]``; the package root's own module is ``ROOT``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def absolute(name: str, package: str) -> str:
    """``importlib.import_module(name, package)``'s module name (``..devices`` from ``crystalformer_rl.x``)."""
    level = len(name) - len(name.lstrip("."))
    if not level:
        return name
    parts = package.split(".")
    return ".".join(parts[: len(parts) - level + 1] + ([name[level:]] if name[level:] else []))


def literal_table(node: ast.AST) -> dict[str, str] | None:
    """``{"name": ".module"}`` or ``dict.fromkeys(("a", "b"), ".module")`` as a dict, else None."""
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: v.value for k, v in zip(node.keys, node.values) if isinstance(v, ast.Constant)}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "fromkeys"
        and len(node.args) == 2
        and isinstance(node.args[0], ast.Tuple | ast.List)
        and isinstance(node.args[1], ast.Constant)
    ):
        return {k.value: node.args[1].value for k in node.args[0].elts if isinstance(k, ast.Constant)}
    return None


def export_table(source: str, package: str) -> dict[str, tuple[str, str]]:
    """A package ``__init__``'s public names -> (the module they come from, their name there): its lazy exports
    (the table given to ``lazy_exports``, literally or as a module-level variable such as ``_EXPORTS``) and its
    module-level re-exports (``from .x import name``)."""
    tree = ast.parse(source)
    variables: dict[str, dict[str, str]] = {}
    table: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if (found := literal_table(node.value)) is not None:
                variables[node.targets[0].id] = found
        elif isinstance(node, ast.ImportFrom):
            base = absolute("." * node.level + (node.module or ""), package)
            if base != package:  # `from . import submodule` names the submodule, which is resolved as one
                table.update({alias.asname or alias.name: (base, alias.name) for alias in node.names})
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "lazy_exports":
            names = node.args[1] if len(node.args) > 1 else None
            lazy = variables.get(names.id) if isinstance(names, ast.Name) else literal_table(names)
            assert lazy is not None, f"{package}: a lazy_exports table this test cannot read"
            table.update({name: (absolute(target, package), name) for name, target in lazy.items()})
    return table


class Imports:
    """Which modules of the package a module imports, every import (absolute, relative, inside functions) resolved
    to the deepest module of the package it names. A name imported from a package is followed through the
    package's export table to the module defining it, and every module on the way counts: ``from crystalformer_rl
    import CrystalRLOOTrainer`` imports ``crystalformer_rl``, ``crystalformer_rl.trainers`` and
    ``crystalformer_rl.trainers.crystal_rloo_trainer``. So does an attribute of an imported package
    (``import crystalformer_rl as cf`` ... ``cf.load_model``).

    A lazy export is an edge from the module that asks for the name (when it is imported) to the module defining it;
    a package's lazy table itself imports nothing until then, so it is not an edge of the package in the cycle graph
    (``registry.py``'s ``from . import EhullReward`` is no circle), but its targets are the package's imports in the
    layer check (a table of ``reward_models`` naming ``..evaluation`` breaks the rule)."""

    def __init__(self, sources: dict[str, tuple[str, bool]]):
        self.sources = sources
        self.known = set(sources)
        self.exports = {m: export_table(text, m) for m, (text, is_package) in sources.items() if is_package}

    def deepest(self, name: str, floor: str = "") -> str | None:
        """The deepest module of the package that ``name`` names (itself, or a package above it, not above floor)."""
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        return name if name and len(name) > len(floor) else None

    def through(self, module: str, name: str, seen: frozenset = frozenset()) -> list[str]:
        """The modules that ``from <module> import <name>`` imports beyond ``module``, the defining one last."""
        if f"{module}.{name}" in self.known:
            return [f"{module}.{name}"]
        if (module, name) in seen or name not in self.exports.get(module, {}):
            return []  # defined in `module` itself (or not at all)
        target, there = self.exports[module][name]
        target = self.deepest(target)
        return [target, *self.through(target, there, seen | {(module, name)})] if target else []

    def of(self, source: str, module: str, is_package: bool) -> set[str]:
        package = module if is_package else module.rpartition(".")[0]
        found: set[str] = set()
        bound: dict[str, str] = {}  # a local name -> the package module it is bound to
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (target := self.deepest(alias.name)) is not None:
                        found.add(target)
                        if alias.asname:  # `import crystalformer_rl.trainers as t`
                            bound[alias.asname] = target
                        elif alias.name.split(".")[0] == ROOT:  # `import crystalformer_rl.x` binds the root
                            bound[ROOT] = ROOT
            elif isinstance(node, ast.ImportFrom):
                floor = ""
                base = node.module or ""
                if node.level:
                    base = absolute("." * node.level + base, package)
                    # `from .missing import x` (a module that is not in the package, e.g. one only a model folder's
                    # remote code has) imports nothing of it, not the package above it
                    floor = absolute("." * node.level, package) if node.module else ""
                target = self.deepest(base, floor)
                if target is None:
                    continue
                found.add(target)
                if target == base:  # the names are looked up in it
                    for alias in node.names:
                        chain = self.through(target, alias.name)
                        found.update(chain)
                        if chain and chain[-1] == f"{target}.{alias.name}":
                            bound[alias.asname or alias.name] = chain[-1]
        for node in ast.walk(tree):  # `cf.load_model`, `cf.trainers.CrystalRLConfig`
            if isinstance(node, ast.Attribute):
                chain = []
                while isinstance(node, ast.Attribute):
                    chain.append(node.attr)
                    node = node.value
                if isinstance(node, ast.Name) and node.id in bound:
                    current = bound[node.id]
                    for attr in reversed(chain):
                        step = self.through(current, attr)
                        if not step:
                            break
                        found.update(step)
                        current = step[-1]
        found.discard(module)
        return found


_PACKAGE_IMPORTS: list[Imports] = []


def package_imports() -> Imports:
    if not _PACKAGE_IMPORTS:
        _PACKAGE_IMPORTS.append(Imports(package_sources()))
    return _PACKAGE_IMPORTS[0]


# ------------------------------------------------------------------------------------------------- layers
def imported_layers(source: str, module: str, imports: Imports | None = None) -> set[str]:
    """The layers that ``source``, the text of ``crystalformer_rl.<module>``, imports (its own layer included, the
    root's own module not: what it gives is followed to the module that defines it). A package's lazy exports count
    as its imports."""
    imports = imports or package_imports()
    name = f"{ROOT}.{module}" if module else ROOT
    is_package = name in imports.exports
    modules = imports.of(source, name, is_package)
    if is_package:
        modules |= {imports.deepest(target) for target, _ in export_table(source, name).values()}
    return {layer_of(m) for m in modules if m not in (None, ROOT)}


def forbidden_imports(source: str, module: str, imports: Imports | None = None) -> set[str]:
    """The layers ``source`` (``crystalformer_rl.<module>``) imports that its row of MAY_IMPORT does not allow."""
    layer = module.split(".")[0] if module else ROOT
    return imported_layers(source, module, imports) & FORBIDDEN[layer]


def violations() -> list[str]:
    out = []
    for name, (text, _) in package_sources().items():
        module = name.removeprefix(ROOT).removeprefix(".")
        for bad in sorted(forbidden_imports(text, module)):
            out.append(f"{name} imports crystalformer_rl.{bad}")
    return out


def test_no_layer_imports_what_its_row_does_not_allow():
    assert violations() == []


# the review's cases: each passed the old denylist while breaking the doc's table
@pytest.mark.parametrize(
    "source, module, forbidden",
    [
        ("from .trainers import CrystalRLConfig", "utils", {"trainers"}),
        ("def f():\n    from .materials.hull import ReferenceHull\n", "errors", {"materials"}),
        ("from ..pretrained import load_model", "tokenization.tokenization_crystalformer", {"pretrained"}),
        ("from ..evaluation.evaluate import summarize", "pretrained", {"evaluation"}),
        (
            "from ..materials.validity import structure_validity",
            "modeling_crystalformer.sampling_crystalformer",
            {"materials"},
        ),
        ("from ..modeling_crystalformer import SamplingOptions", "reward_models.base", {"modeling_crystalformer"}),
        ("from .utils import atomic_write_text", "devices", {"utils"}),
        ("from .tokenization import CrystalTokens", "plotting", {"tokenization"}),
        ("from ..materials.structures import check_structure", "data.prepare", {"materials"}),
        ("from .reward_models.registry import load_reward", "sampling", {"reward_models"}),
        ("from ..plotting import figure", "reward_models.ehull", {"plotting"}),
        ("from ..sampling import sample_crystals", "materials.io", {"sampling"}),
        ("from .modeling_crystalformer import SamplingOptions", "wyckoff", {"modeling_crystalformer"}),
        ("from ..utils import atomic_write_text", "modeling_crystalformer.hub_crystalformer", {"utils"}),
        ("import crystalformer_rl.commands", "", {"commands"}),  # the front door never imports the command line
        # names through the package root or a package's export table: the module that defines them
        ("from crystalformer_rl import CrystalRLOOTrainer", "reward_models.base", {"trainers"}),
        ("from .. import load_model", "materials.io", {"pretrained"}),
        ("def f():\n    from .. import CrystalReward\n", "evaluation.evaluate", {"reward_models"}),
        (
            "from ..reward_models import DeviceError",
            "modeling_crystalformer.sampling_crystalformer",
            {"reward_models", "devices"},
        ),
        ("from ..data import prepare_data", "modeling_crystalformer.hub_crystalformer", {"data"}),
        (
            "import crystalformer_rl as cf\n\ndef f():\n    return cf.CrystalRLConfig()\n",
            "evaluation.plots",
            {"trainers"},
        ),
        ("import crystalformer_rl.reward_models as rm\nrm.EhullReward\n", "evaluation.evaluate", {"reward_models"}),
        ("from .. import trainers\ntrainers.CrystalRLConfig\n", "pretrained", {"trainers"}),
        # a package's lazy table is its import
        (
            'from ..utils import lazy_exports\n__getattr__, _ = lazy_exports(__name__, {"summarize": "..evaluation"})\n',
            "reward_models",
            {"evaluation"},
        ),
        (
            '_EXPORTS = dict.fromkeys(("f",), "..trainers.sft")\n__getattr__, _ = lazy_exports(__name__, _EXPORTS)\n',
            "materials",
            {"trainers"},
        ),
    ],
)
def test_the_allowlist_rejects_what_the_doc_does_not_allow(source, module, forbidden):
    assert forbidden_imports(source, module) == forbidden


def test_every_row_allows_exactly_its_layers():
    """For every layer and every other layer of the package, an import of it is a violation exactly when the
    layer's row of the table does not allow it."""
    sources = package_sources()
    for layer in sorted(MAY_IMPORT):
        module = (
            ""
            if layer == ROOT
            else next(
                m.removeprefix(f"{ROOT}.")
                for m in sources
                if m == f"{ROOT}.{layer}" or m.startswith(f"{ROOT}.{layer}.")
            )
        )
        for other in sorted(EVERY_LAYER - {ROOT, layer}):
            seen = forbidden_imports(f"def f():\n    import crystalformer_rl.{other}\n", module)
            assert seen == ({other} - MAY_IMPORT[layer]), (layer, other)


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
        # through the front door and the export tables, to the defining module
        ("from crystalformer_rl import CrystalRLOOTrainer", "reward_models.base", {"trainers"}),
        ("from .. import load_model", "materials.io", {"pretrained"}),
        ("from .. import CrystalReward", "evaluation.evaluate", {"reward_models"}),
        ("from ..evaluation import compute_ehull", "trainers.sft", {"evaluation", "materials"}),
    ],
)
def test_the_checker_sees_a_deliberate_violation(source, module, expected):
    """Absolute, relative and function-level imports are all seen, so a violation cannot slip through."""
    assert imported_layers(source, module) == expected
    layer = module.split(".")[0]
    assert forbidden_imports(source, module) == expected - MAY_IMPORT[layer] - {layer}
    assert forbidden_imports(source, module)


# ------------------------------------------------------------------------------------------------- cycles
def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the modules it imports, from ``{module: (source, is_package)}``."""
    imports = Imports(sources)
    return {m: imports.of(text, m, is_package) for m, (text, is_package) in sources.items()}


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


def test_no_import_cycles_between_modules():
    """No two modules import each other, directly or round a circle, counting imports inside functions (a
    function-level import must not hide a cycle) and lazy exports (the module asking for the name imports the one
    defining it)."""
    assert cycles(import_graph(package_sources())) == []


def with_added(sources, module: str, text: str) -> dict[str, tuple[str, bool]]:
    source, is_package = sources[module]
    return {**sources, module: (source + "\n\n" + text, is_package)}


@pytest.mark.parametrize(
    "module, added, circle",
    [
        # a function-level import
        (
            "materials.hull",
            "def f():\n    from .ehull import EhullCalculator\n",
            ["materials.ehull", "materials.hull"],
        ),
        # a lazy export of the module's own package (reward_models._EXPORTS: SUNReward -> .novelty, which imports
        # .ehull)
        (
            "reward_models.ehull",
            "def f():\n    from . import SUNReward\n",
            ["reward_models.ehull", "reward_models.novelty"],
        ),
        # through the package root's lazy table and a package's re-export (CrystalFormerForCrystalGeneration ->
        # .modeling_crystalformer -> .modeling_crystalformer.modeling_crystalformer, which imports the config)
        (
            "modeling_crystalformer.configuration_crystalformer",
            "def f():\n    from crystalformer_rl import CrystalFormerForCrystalGeneration\n",
            ["modeling_crystalformer.configuration_crystalformer", "modeling_crystalformer.modeling_crystalformer"],
        ),
        # an attribute of an imported package, looked up in a function
        (
            "reward_models.ehull",
            "import crystalformer_rl.reward_models as rm\n\ndef f():\n    return rm.SUNReward\n",
            ["reward_models.ehull", "reward_models.novelty"],
        ),
    ],
)
def test_the_cycle_check_sees_a_hidden_cycle(module, added, circle):
    sources = with_added(package_sources(), f"{ROOT}.{module}", added)
    found = cycles(import_graph(sources))
    assert any({f"{ROOT}.{m}" for m in circle} <= set(component) for component in found), found


def test_a_packages_own_lazy_name_is_no_circle():
    """``from . import X`` in a module of a package with lazy exports imports the module defining X, not every
    module of the table: no circle unless that module imports this one."""
    sources = with_added(
        package_sources(), f"{ROOT}.reward_models.registry", "def f():\n    from . import EhullReward\n"
    )
    assert cycles(import_graph(sources)) == []


def test_one_plotting_style_no_pyplot_in_the_package():
    """Every figure is a Figure on its own Agg canvas (crystalformer_rl/plotting.py): no module uses pyplot or
    switches matplotlib's global backend."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "matplotlib.pyplot" in path.read_text() or "matplotlib.use(" in path.read_text()
    ]
    assert offenders == []
