"""The one parser of every command: TRL's `TrlParser` (an `HfArgumentParser`) over the command's dataclasses.

* Every option is a dataclass field and its help string is its documentation; ``--config file.yaml`` sets any of
  them (options on the command line override the file).
* One spelling: the field name, with underscores (``--num_samples``, ``--output_dir``), as `TrainingArguments`.
  The dashed spelling (``--num-samples``) still works and prints one deprecation line on stderr.
* Short flags are the fields' ``aliases`` metadata (``-n``); the fields a dataclass lists in ``positionals`` can
  also be given positionally, in that order, before the options (``evaluate samples.csv -o eval``).
* A bad option is one line (``crystalformer-rl sample: error: argument --num_samples/-n: 0: use at least 1``):
  argparse's own errors, a field's ``__post_init__`` check (a `ValueError`), an unknown option or ``--config`` key.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from trl import TrlParser

from ..errors import UsageError, one_line


class CommandArguments:
    """Base of a command's arguments dataclass: its errors name the flag as argparse does (``argument
    --num_samples/-n``), and ``positionals`` names the fields also given positionally.

    At construction (so at parse time) it checks the numeric fields named in ``ranges`` (field -> smallest
    allowed value, and whether the value may equal it), and makes a scalar given to a list field
    (``space_group: 225`` or ``elements: La`` in a YAML file) a one-item list. A subclass's ``__post_init__`` calls
    this one first."""

    positionals: tuple[str, ...] = ()  # class attributes, not fields
    ranges: dict[str, tuple[float, bool]] = {}

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "list[" in str(f.type) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]
                setattr(self, f.name, value)
            if f.name in self.ranges and isinstance(value, (int, float)) and not isinstance(value, bool):
                low, inclusive = self.ranges[f.name]
                if value < low or (value == low and not inclusive):
                    rule = f"use at least {low}" if inclusive else f"use a number > {low}"
                    raise ValueError(f"{self._option(f.name)}: {value}: {rule}")
        if hasattr(super(), "__post_init__"):
            super().__post_init__()

    @classmethod
    def _option(cls, name: str) -> str:
        metadata = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
        aliases = metadata.get("aliases", [])
        return "argument " + "/".join([f"--{name}", *([aliases] if isinstance(aliases, str) else aliases)])


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help (but ``None``: the help says what it means), the description as written."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class CommandParser(TrlParser):
    """`TrlParser` with the rules of the module docstring; :meth:`parse` returns the command's dataclasses."""

    def __init__(self, dataclass_types, prog: str, yaml_config: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, prog=prog, **kwargs)
        self.yaml_config = yaml_config
        for action in self._actions:  # HfArgumentParser also registers --num-samples: one spelling in the help
            for option in list(action.option_strings):
                if _underscored(option) != option and _underscored(option) in action.option_strings:
                    action.option_strings.remove(option)
                    del self._option_string_actions[option]
        self.positionals = [name for cls in self.dataclass_types for name in getattr(cls, "positionals", ())]
        self._required = set()
        for name in self.positionals:
            option = self._option_string_actions[f"--{name}"]
            if option.required:
                self._required.add(name)
            option.required = False  # given as --name or positionally: checked after parsing
            self.add_argument(f"positional_{name}", nargs="?", metavar=name, help=f"the same as --{name}")
        fields = {f.name for cls in self.dataclass_types for f in dataclasses.fields(cls)}
        self.debug_flag = "debug" not in fields  # TrainingArguments has its own --debug
        if self.debug_flag:
            self.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
        if yaml_config:
            self.add_argument(
                "--config", metavar="FILE.yaml", help="read the options from a YAML file; options given here win"
            )
        self._crystal_options_first()

    def _crystal_options_first(self) -> None:
        """A trainer's options: this package's (script arguments and the fields its config declares) first, as one
        group, then those inherited from TRL / `TrainingArguments`."""
        ours = {name for cls in self.dataclass_types for name in _declared_here(cls)}
        everything = {f.name for cls in self.dataclass_types for f in dataclasses.fields(cls)}
        if ours == everything:
            return
        group = self.add_argument_group("crystal options", "the options of crystalformer-rl (TRL's follow)")
        self._action_groups.remove(group)
        self._action_groups.insert(1, group)  # after the positionals, before the inherited options
        moved = [a for a in self._optionals._group_actions if a.dest in ours]
        for action in moved:
            self._optionals._group_actions.remove(action)
            group._group_actions.append(action)
            self._actions.remove(action)
        index = next(i for i, a in enumerate(self._actions) if a.option_strings and a.dest != "help")
        self._actions[index:index] = moved

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def canonical_argv(self, argv: list[str]) -> list[str]:
        """``argv`` with every dashed option in its underscore spelling, each one noted once on stderr."""
        out, noted = [], set()
        for index, token in enumerate(argv):
            if token == "--":
                return out + list(argv[index:])
            flag, equals, value = token.partition("=")
            if flag.startswith("--") and "-" in flag[2:] and _underscored(flag) in self._option_string_actions:
                if flag not in noted:
                    noted.add(flag)
                    print(f"{self.prog}: {flag} is deprecated; use {_underscored(flag)}", file=sys.stderr)
                token = _underscored(flag) + equals + value
            out.append(token)
        return out

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        for name in ("debug", "config") if self.debug_flag else ("config",):
            namespace.__dict__.pop(name, None)
        for name in self.positionals:
            value = namespace.__dict__.pop(f"positional_{name}", None)
            if value is not None:
                given = getattr(namespace, name, None)
                if given is not None and given != self._option_string_actions[f"--{name}"].default:  # not --config's
                    self.error(f"{name} given twice: positionally ({value}) and as --{name}")
                setattr(namespace, name, value)
            if name in self._required and getattr(namespace, name, None) is None:
                self.error(f"the following arguments are required: {name} (positionally or as --{name})")
        return namespace, rest

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The command's dataclass instances, from ``argv`` (default ``sys.argv[1:]``)."""
        argv = self.canonical_argv(sys.argv[1:] if argv is None else list(argv))
        if self.yaml_config:  # TRL looks for the token "--config"
            argv = [
                part for token in argv for part in (token.split("=", 1) if token.startswith("--config=") else [token])
            ]
        if self.yaml_config and "--config" in argv:
            index = argv.index("--config")
            config = argv[index + 1] if index + 1 < len(argv) else ""
            if not Path(config).is_file():
                raise UsageError(f"--config {config}: no such file; pass a YAML file (e.g. configs/rl_ehull.yaml)")
            _check_yaml(config)
        try:
            if self.yaml_config:
                *parsed, from_config, from_args = self.parse_args_and_config(
                    argv, return_remaining_strings=True, separate_remaining_strings=True
                )
            else:
                *parsed, from_args = self.parse_args_into_dataclasses(argv, return_remaining_strings=True)
                from_config = []
        except ValueError as exc:  # a field's __post_init__ check names the option
            raise UsageError(one_line(exc)) from exc
        for config in parsed:
            _check_training_ranges(config)
        if from_args:
            raise UsageError(f"unknown option(s) {' '.join(from_args)}; see `{self.prog} --help`")
        if from_config:
            raise UsageError(f"--config: unknown key(s) {from_config}; see `{self.prog} --help`")
        return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))


# The numeric options of TrainingArguments (and TRL's configs) that the trainers would take and fail on late (or
# silently misuse): option -> (smallest allowed value, whether it may equal it).
TRAINING_RANGES = {
    "learning_rate": (0, True),
    "per_device_train_batch_size": (1, True),
    "per_device_eval_batch_size": (1, True),
    "gradient_accumulation_steps": (1, True),
    "num_train_epochs": (0, False),
    "logging_steps": (0, False),
    "save_steps": (0, False),
    "num_iterations": (1, True),
    "num_generations": (2, True),
}


def _check_training_ranges(config) -> None:
    for name, (low, inclusive) in TRAINING_RANGES.items():
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < low or (value == low and not inclusive):
                rule = f"use at least {low}" if inclusive else f"use a number > {low}"
                raise UsageError(f"argument --{name}: {value}: {rule}")


def _check_yaml(path: str) -> None:
    """A ``--config`` file that is not a YAML mapping is one line naming the file and the place."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise UsageError(f"--config {path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot be read ({one_line(exc)})") from None
    if content is not None and not isinstance(content, dict):
        raise UsageError(f"--config {path}: expected a mapping of option: value, got a {type(content).__name__}")


def _declared_here(cls: type) -> set[str]:
    """The fields of dataclass ``cls`` that this package declares (on ``cls`` or a base class of its own)."""
    return {
        name
        for klass in cls.__mro__
        if klass.__module__.startswith("crystalformer_rl")
        for name in vars(klass).get("__annotations__", {})
        if name in {f.name for f in dataclasses.fields(cls)}
    }


def _underscored(option: str) -> str:
    return "--" + option[2:].replace("-", "_") if option.startswith("--") else option
