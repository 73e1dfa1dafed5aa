"""Re-run uniqueness, novelty and S.U.N. of an evaluation independently, and count where they agree with ours.

The logic is CrystalFormer's ``check_sun_materials`` as its description has it (``shared/docs/
crystalformer-reference.md``), written again from that description with pymatgen only, not from our matching code:

* **stable**: E_hull ≤ 0.1 eV/atom (``--ehull-threshold``; a missing E_hull is not stable);
* **unique**: greedy, in input order: a structure is kept when it matches none of the structures kept so far that
  have the same reduced composition (``StructureMatcher()`` with pymatgen's defaults: ltol 0.2, stol 0.3,
  angle_tol 5°, primitive_cell, scale);
* **novel**: no reference structure with the same reduced composition matches (with ``--same-space-group`` only
  references of the same ``SpacegroupAnalyzer`` space group, its default tolerance);
* **S.U.N.**: the reference's order: keep the stable structures, de-duplicate those greedily, and count the kept ones
  that are novel.

Compositions are compared as sets of (element, gcd-reduced count), not as formula strings, and a reference
formula "NaN" is Na–N, not a missing value. Only reading crystals goes through the project (token strings need its
decoder); what is under test, the bucketing, the matching order and the S.U.N. rule, does not.

Both rules of an evaluation are checked when its table has them: the relaxed one (``e_hull_relaxed``, the
``relaxed_cif`` structures; our ``unique``, ``novel``, ``sun_relaxed``) and the unrelaxed one (``e_hull``, the
structures as sampled; our ``unique_unrelaxed``/``novel_unrelaxed`` with relaxation, else ``unique``/``novel``,
and ``sun_unrelaxed``). Usage::

    python scripts/check_sun_independent.py eval/ [--samples samples.csv] [--reference train.parquet]

It prints JSON: per rule and per quantity, our count, the independent count, the rows that agree and the names of
those that do not. The input samples and the reference default to those recorded in ``eval/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure


CompositionKey = frozenset


def composition_key(composition: Composition) -> CompositionKey:
    """(element, count / gcd) pairs: two crystals can only match when these are equal."""
    amounts = {}
    for species, amount in composition.items():
        symbol = getattr(species, "symbol", None) or species.element.symbol
        amounts[symbol] = amounts.get(symbol, 0) + amount
    counts = {s: round(a) for s, a in amounts.items()}
    if any(abs(amounts[s] - c) > 1e-6 for s, c in counts.items()):
        return frozenset((s, round(a, 6)) for s, a in amounts.items())  # partial occupancy: compare as is
    divisor = math.gcd(*counts.values())
    return frozenset((s, c // divisor) for s, c in counts.items())


def formula_key(text: str) -> CompositionKey:
    if text == "NaN":  # pandas would have read the sodium nitride formula as a missing value
        text = "Na1 N1"
    return composition_key(Composition(text))


def _fits(matcher: StructureMatcher, a: Structure, b: Structure) -> bool | None:
    """``None`` when the matcher raises (counted, and taken as "no match")."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(matcher.fit(a, b))
    except Exception:
        return None


class Reference:
    """The reference crystals by composition key, built only for the keys asked for."""

    def __init__(self, frame: pd.DataFrame, same_space_group: bool = False) -> None:
        self.frame = frame
        self.column = next(c for c in ("cif", "structure", "tokens") if c in frame.columns)
        self.same_space_group = same_space_group
        if "reduced_formula" in frame.columns:
            keys = [formula_key(str(f)) for f in frame["reduced_formula"]]
        else:
            keys = [composition_key(self._build(v).composition) for v in frame[self.column]]
        self.rows: dict[CompositionKey, list[int]] = {}
        for i, key in enumerate(keys):
            self.rows.setdefault(key, []).append(i)
        self._built: dict[int, Structure] = {}
        self.matcher_failures = 0

    @classmethod
    def from_file(cls, path: str | Path, same_space_group: bool = False) -> Reference:
        path = Path(path)
        if path.suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, keep_default_na=False, dtype=str)
        return cls(frame, same_space_group)

    def _build(self, value: Any) -> Structure:
        from crystalformer_rl.materials.io import structure_from_record  # decoding only

        return structure_from_record(value, self.column)

    def structure(self, row: int) -> Structure:
        if row not in self._built:
            self._built[row] = self._build(self.frame[self.column].iloc[row])
        return self._built[row]

    def is_novel(self, structure: Structure, matcher: StructureMatcher) -> bool:
        candidates = self.rows.get(composition_key(structure.composition), [])
        group = _space_group(structure) if self.same_space_group and candidates else None
        for row in candidates:
            ref = self.structure(row)
            if group is not None and _space_group(ref) not in (None, group):
                continue
            fit = _fits(matcher, ref, structure)
            if fit is None:
                self.matcher_failures += 1
            elif fit:
                return False
        return True


def _space_group(structure: Structure) -> int | None:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure).get_space_group_number()
    except Exception:
        return None


def greedy_unique(structures: Sequence[Structure | None], matcher: StructureMatcher) -> list[bool]:
    """Kept (first of its kind in input order) or not; ``None`` entries are not kept."""
    kept: dict[CompositionKey, list[Structure]] = {}
    out = []
    for s in structures:
        if s is None:
            out.append(False)
            continue
        bucket = kept.setdefault(composition_key(s.composition), [])
        if any(_fits(matcher, k, s) for k in bucket):
            out.append(False)
        else:
            bucket.append(s)
            out.append(True)
    return out


def sun_reference_order(
    structures: Sequence[Structure | None],
    ehull: Sequence[float | None],
    novel: Sequence[bool],
    threshold: float,
    matcher: StructureMatcher,
) -> list[bool]:
    """``check_sun_materials``' order: stable first, de-duplicate among the stable, keep the novel ones."""
    stable = [
        s is not None and e is not None and not math.isnan(e) and e <= threshold for s, e in zip(structures, ehull)
    ]
    rows = [i for i, ok in enumerate(stable) if ok]
    kept = greedy_unique([structures[i] for i in rows], matcher)
    out = [False] * len(structures)
    for i, k in zip(rows, kept):
        out[i] = k and novel[i]
    return out


def _flag(value: Any) -> bool:
    """A table's boolean cell: ``True``, ``"True"`` (CSV with blanks), ``<NA>``/blank as ``False``."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return False if pd.isna(value) else bool(value)


def _agreement(names: Sequence[str], ours: pd.Series | None, theirs: Sequence[bool]) -> dict[str, Any] | None:
    if ours is None:
        return None
    mine = [_flag(v) for v in ours]
    differ = [n for n, a, b in zip(names, mine, theirs) if a != b]
    return {
        "ours": sum(mine),
        "independent": sum(theirs),
        "rows_agree": len(mine) - len(differ),
        "rows": len(mine),
        "disagreeing_rows": differ[:50],
    }


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def _floats(table: pd.DataFrame, column: str) -> list[float | None]:
    return [None if pd.isna(v) else float(v) for v in pd.to_numeric(table[column], errors="coerce")]


def check(
    evaluation: Path,
    samples: str | None = None,
    reference: str | None = None,
    threshold: float | None = None,
    same_space_group: bool | None = None,
) -> dict[str, Any]:
    """Compare the evaluation in ``evaluation`` (a folder or its structures table) with the re-implementation."""
    from crystalformer_rl.materials.io import load_crystals  # reading the samples only

    folder = evaluation if evaluation.is_dir() else evaluation.parent
    table_path = (
        evaluation
        if evaluation.is_file()
        else next(p for p in (folder / "structures.parquet", folder / "structures.csv") if p.is_file())
    )
    table = _read_table(table_path)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    settings = summary.get("settings", {})
    threshold = threshold if threshold is not None else settings.get("ehull_threshold", 0.1)
    same_space_group = same_space_group if same_space_group is not None else settings.get("same_space_group", False)
    samples = samples or summary.get("input")
    reference = reference or settings.get("reference")
    if samples is None or reference is None:
        raise SystemExit("pass --samples and --reference (summary.json does not name them)")

    loaded = load_crystals(samples, limit=len(table), progress=False)
    names = [str(n) for n in table["name"]]
    if [str(n) for n in loaded.names] != names:
        raise SystemExit(f"{samples} does not hold the crystals of {table_path} in the same order")
    sampled = loaded.structures
    matcher = StructureMatcher()
    index = Reference.from_file(reference, same_space_group=same_space_group)

    relaxed_run = "relaxed_cif" in table.columns
    rules: dict[str, dict[str, Any]] = {}
    if relaxed_run:
        relaxed = [
            Structure.from_str(c, fmt="cif") if isinstance(c, str) and c.strip() else None
            for c in table["relaxed_cif"]
        ]
        rules["relaxed"] = {
            "structures": [r if r is not None else s for r, s in zip(relaxed, sampled)],
            "ehull": "e_hull_relaxed",
            "unique": "unique",
            "novel": "novel",
            "sun": "sun_relaxed" if "sun_relaxed" in table else "sun",
        }
    rules["unrelaxed"] = {
        "structures": sampled,
        "ehull": "e_hull",
        "unique": "unique_unrelaxed" if relaxed_run else "unique",
        "novel": "novel_unrelaxed" if relaxed_run else "novel",
        "sun": "sun_unrelaxed" if "sun_unrelaxed" in table else (None if relaxed_run else "sun"),
    }
    report: dict[str, Any] = {
        "evaluation": str(table_path),
        "samples": str(samples),
        "reference": str(reference),
        "reference_size": len(index.frame),
        "ehull_threshold": threshold,
        "same_space_group": bool(same_space_group),
        "matcher": "StructureMatcher() defaults",
        "n_rows": len(table),
        "rules": {},
    }
    for rule, spec in rules.items():
        structures = spec["structures"]
        unique = greedy_unique(structures, matcher)
        novel = [s is not None and index.is_novel(s, matcher) for s in structures]
        result = {
            "unique": _agreement(names, table.get(spec["unique"]), unique),
            "novel": _agreement(names, table.get(spec["novel"]), novel),
        }
        if spec["ehull"] in table and spec["sun"] in table:
            sun = sun_reference_order(structures, _floats(table, spec["ehull"]), novel, threshold, matcher)
            result["sun"] = _agreement(names, table[spec["sun"]], sun)
        report["rules"][rule] = result
    report["reference_matcher_failures"] = index.matcher_failures
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluation", help="an evaluate output folder, or its structures.csv/parquet")
    parser.add_argument("--samples", default=None, help="the evaluated samples (default: summary.json's input)")
    parser.add_argument("--reference", default=None, help="reference table (default: summary.json's reference)")
    parser.add_argument("--ehull-threshold", type=float, default=None, help="stable: E_hull <= this (eV/atom)")
    parser.add_argument("--same-space-group", action="store_true", default=None, help="novelty within a space group")
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = check(Path(args.evaluation), args.samples, args.reference, args.ehull_threshold, args.same_space_group)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
