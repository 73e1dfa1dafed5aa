"""Every command's ``--help`` shipped as data, so that even the first ``rl --help`` prints without importing TRL,
transformers or torch (the live parser of a trainer costs about 2 s of imports before it can list
`TrainingArguments`).

The schema is what argparse formats: per command its prog, description and epilog, every option (flags, dest,
nargs, metavar, choices, whether it is required, and its help with the defaults already filled in) and the groups
they are listed in. :func:`format_help` rebuilds a parser of plain `argparse.Action` objects from it, so the text is
argparse's own, wrapped to the terminal's width. A command's entry is used only while the installed transformers,
TRL and torch and the package sources that declare its options are those it was made from; otherwise the live parser
builds the help. The trainers share most options (`TrainingArguments`), so each distinct option is stored once.
``tests/test_commands.py`` checks the shipped file against the live parsers. Refresh it with::

    python -c "from crystalformer_rl.commands import refresh_help_schema; refresh_help_schema()"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


SCHEMA_FILE = Path(__file__).with_name("help_schema.json")
PACKAGE = Path(__file__).resolve().parents[1]
#: the libraries whose versions decide a trainer's options and their defaults (`TrainingArguments`, TRL's configs)
LIBRARIES = ("transformers", "trl", "torch")


def _versions() -> dict[str, str]:
    found = {}
    for library in LIBRARIES:
        try:
            found[library] = version(library)
        except PackageNotFoundError:
            found[library] = "none"
    return found


def _digest(files: list[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _source_files(parser) -> list[str]:
    """The package files that declare a command's options: its dataclasses and their bases of this package, the
    command table (descriptions, epilogs) and the parser (the options it adds)."""
    files = {"commands/__init__.py", "commands/parser.py"}
    for cls in parser.dataclass_types:
        for klass in cls.__mro__:
            module = sys.modules.get(klass.__module__)
            if klass.__module__.startswith("crystalformer_rl") and getattr(module, "__file__", None):
                files.add(Path(module.__file__).resolve().relative_to(PACKAGE).as_posix())
    return sorted(files)


def schema_of(parser: argparse.ArgumentParser) -> dict:
    """What ``parser.format_help()`` needs, as JSON-able data."""
    if parser._mutually_exclusive_groups:
        raise ValueError(f"{parser.prog}: mutually exclusive groups are not stored")
    formatter = parser._get_formatter()
    actions = []
    for action in parser._actions:
        help_text = action.help
        if help_text is not None and help_text != argparse.SUPPRESS:  # defaults filled in; '%' kept literal
            help_text = formatter._expand_help(action).replace("%", "%%") if help_text.strip() else help_text
        actions.append(
            {
                "option_strings": list(action.option_strings),
                "dest": action.dest,
                "nargs": action.nargs,
                "metavar": action.metavar,
                "choices": None if action.choices is None else [str(c) for c in action.choices],
                "required": action.required,
                "help": help_text,
            }
        )
    position = {id(action): i for i, action in enumerate(parser._actions)}
    groups = [
        {"title": g.title, "description": g.description, "actions": [position[id(a)] for a in g._group_actions]}
        for g in parser._action_groups
    ]
    keys = ("prog", "usage", "description", "epilog")
    return {**{k: getattr(parser, k) for k in keys}, "actions": actions, "groups": groups}


def parser_from(schema: dict) -> argparse.ArgumentParser:
    """A parser that formats the help ``schema`` describes (for printing only: its actions do nothing)."""
    parser = argparse.ArgumentParser(
        prog=schema["prog"],
        usage=schema["usage"],
        description=schema["description"],
        epilog=schema["epilog"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser._action_groups.clear()
    actions = []
    for spec in schema["actions"]:
        metavar = tuple(spec["metavar"]) if isinstance(spec["metavar"], list) else spec["metavar"]
        actions.append(argparse.Action(**{**spec, "metavar": metavar}))
    for group_spec in schema["groups"]:
        group = parser.add_argument_group(group_spec["title"], group_spec["description"])
        group._group_actions.extend(actions[i] for i in group_spec["actions"])
    parser._actions[:] = actions
    return parser


def build(parsers: dict) -> dict:
    """The schema of every command from its live parser (``{command: CommandParser}``); an option shared by several
    commands is stored once in ``actions``, and a command's parser lists its options' indices there."""
    pool: dict[str, int] = {}
    commands = {}
    for command, parser in parsers.items():
        files = _source_files(parser)
        schema = schema_of(parser)
        keys = [json.dumps(action, sort_keys=True) for action in schema["actions"]]
        schema["actions"] = [pool.setdefault(key, len(pool)) for key in keys]
        commands[command] = {"sources": {"files": files, "sha256": _digest(files)}, "parser": schema}
    return {"libraries": _versions(), "actions": [json.loads(key) for key in pool], "commands": commands}


def format_help(command: str) -> str | None:
    """``command``'s help from the shipped schema, or None where it is missing or not current."""
    try:
        shipped = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
        entry = shipped["commands"][command]
        if shipped["libraries"] != _versions() or _digest(entry["sources"]["files"]) != entry["sources"]["sha256"]:
            return None
        schema = {**entry["parser"], "actions": [shipped["actions"][i] for i in entry["parser"]["actions"]]}
        return parser_from(schema).format_help()
    except (OSError, LookupError, TypeError, ValueError):  # LookupError: a key or an action index not there
        return None


def write(schema: dict, path: Path = SCHEMA_FILE) -> Path:
    from ..utils import atomic_write_text

    atomic_write_text(json.dumps(schema, ensure_ascii=False, separators=(",", ":")) + "\n", path)
    return path
