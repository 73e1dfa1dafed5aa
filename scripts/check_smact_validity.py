"""Check our composition validity against CDVAE's ``smact_validity`` run under the SMACT of that era (2.5.5).

Published composition-validity numbers (CDVAE, DiffCSP, CrystalFormer) come from CDVAE's ``smact_validity`` with
SMACT 2.x. This script re-runs those semantics, written from their description (not CDVAE's code), in a separate
virtual environment that holds SMACT 2.5.5, and compares them with
:func:`crystalformer_rl.evaluation.composition_validity` in this environment, crystal by crystal:

* one element: valid; all elements metals (``smact.metals``): valid (an alloy);
* otherwise the element counts are divided by their gcd, every combination of ``Element.oxidation_states`` is tried,
  and the composition is valid when one is charge neutral at exactly these counts (``smact.neutral_ratios`` with
  ``stoichs=[(c,), ...]`` and threshold = the largest count) and passes ``smact.screening.pauling_test``; a missing
  electronegativity makes that test raise ``TypeError``, which CDVAE counts as passing.

Set up the environment once (it needs nothing from this project)::

    python -m venv /tmp/smact255 && /tmp/smact255/bin/pip install smact==2.5.5

then, on a table with a ``formula`` column (``crystalformer-rl sample`` writes the unit-cell formula; an evaluation's
``structures.csv`` the reduced one; both give the same gcd-reduced counts)::

    python scripts/check_smact_validity.py samples/samples.csv --python /tmp/smact255/bin/python

It prints JSON: the agreement over crystals and over distinct compositions, and every disagreeing formula with both
verdicts and our reason. Rows without a formula (undecodable samples) are invalid to both and left out.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path


# ------------------------------------------------------------------------------ worker (runs under SMACT 2.5.5)
def _cdvae_smact_validity(symbols: list[str], counts: list[int], use_pauling_test: bool = True) -> bool:
    """CDVAE's rule on one composition, with whatever SMACT is importable (only SMACT and the standard library)."""
    import itertools

    import smact
    from smact.screening import pauling_test

    # CDVAE builds the SMACT elements first, so an element SMACT has no data for fails even when it is alone.
    space = smact.element_dictionary(tuple(symbols))
    elements = [space[s] for s in symbols]
    electronegativities = [e.pauling_eneg for e in elements]
    oxidation_states = [e.oxidation_states for e in elements]
    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    divisor = math.gcd(*counts)
    counts = [c // divisor for c in counts]
    stoichs = [(c,) for c in counts]
    threshold = max(counts)
    for states in itertools.product(*oxidation_states):
        neutral, _ = smact.neutral_ratios(states, stoichs=stoichs, threshold=threshold)
        if not neutral:
            continue
        if not use_pauling_test:
            return True
        try:
            if pauling_test(states, electronegativities):
                return True
        except TypeError:  # an element without an electronegativity: CDVAE takes the test as passed
            return True
    return False


def _worker() -> None:
    """Read ``[{"symbols": [...], "counts": [...]}, ...]`` on stdin, write verdicts and the SMACT version."""
    import smact

    items = json.load(sys.stdin)
    out = []
    for item in items:
        try:
            out.append({"valid": _cdvae_smact_validity(item["symbols"], item["counts"]), "error": None})
        except Exception as exc:  # CDVAE itself would stop here; report it instead
            out.append({"valid": False, "error": f"{type(exc).__name__}: {exc}"})
    version = getattr(smact, "__version__", None)
    if version is None:
        from importlib.metadata import version as package_version

        version = package_version("smact")
    json.dump({"smact_version": version, "results": out}, sys.stdout)


# ----------------------------------------------------------------------------------- driver (this environment)
def _read_formulas(path: Path, column: str) -> list[str | None]:
    """The formula column as text; "NaN" (Na-N) and "None" stay formulas, empty cells become ``None``."""
    import pandas as pd

    if path.suffix in (".parquet", ".pq"):
        values = pd.read_parquet(path, columns=[column])[column].tolist()
    else:
        values = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column].tolist()
    return [
        None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "" else str(v)
        for v in values
    ]


def _element_counts(formula: str) -> tuple[list[str], list[int]]:
    """Symbols ordered by atomic number (as CDVAE's ``np.unique`` of atomic numbers) and their gcd-reduced counts."""
    from pymatgen.core import Composition

    composition = Composition(formula).element_composition
    pairs = sorted(((el.Z, el.symbol, amount) for el, amount in composition.items()), key=lambda t: t[0])
    counts = [round(a) for _, _, a in pairs]
    if any(abs(a - c) > 1e-6 or c <= 0 for (_, _, a), c in zip(pairs, counts)):
        raise ValueError(f"{formula}: non-integer amounts")
    divisor = math.gcd(*counts)
    return [s for _, s, _ in pairs], [c // divisor for c in counts]


def compare(path: Path, column: str, python: str, oxidation_states: str = "smact14") -> dict:
    """Run both rules on the compositions of ``path``; returns the report (see the module docstring)."""
    from crystalformer_rl.materials.validity import check_composition_validity

    formulas = _read_formulas(path, column)
    rows = Counter(f for f in formulas if f is not None)
    keys: dict[str, tuple[list[str], list[int]]] = {}
    unusable = {}
    for formula in rows:
        try:
            keys[formula] = _element_counts(formula)
        except Exception as exc:
            unusable[formula] = str(exc)
    compositions = sorted({(tuple(s), tuple(c)) for s, c in keys.values()})
    payload = json.dumps([{"symbols": list(s), "counts": list(c)} for s, c in compositions])
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker"], input=payload, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the SMACT 2.5.5 worker ({python}) failed:\n{done.stderr.strip()}")
    reply = json.loads(done.stdout)
    theirs = dict(zip(compositions, reply["results"]))

    n_agree = n_compared = 0
    formulas_agree = 0
    valid_ours = valid_theirs = 0
    disagreements, reference_errors = [], []
    for formula, n in sorted(rows.items()):
        if formula not in keys:
            continue
        symbols, counts = keys[formula]
        ours_reason = check_composition_validity(formula, oxidation_states=oxidation_states)
        ours = ours_reason is None
        result = theirs[(tuple(symbols), tuple(counts))]
        n_compared += n
        valid_ours += n * ours
        valid_theirs += n * result["valid"]
        if result["error"]:
            reference_errors.append({"formula": formula, "rows": n, "error": result["error"], "ours": ours})
        if ours == result["valid"]:
            n_agree += n
            formulas_agree += 1
        else:
            reduced = " ".join(f"{s}{c if c > 1 else ''}" for s, c in zip(symbols, counts))
            disagreements.append(
                {
                    "formula": formula,
                    "reduced": reduced,
                    "rows": n,
                    "ours": ours,
                    "smact_2_5_5": result["valid"],
                    "ours_reason": ours_reason,
                }
            )
    return {
        "input": str(path),
        "column": column,
        "rule": "CDVAE smact_validity (use_pauling_test=True, include_alloys=True)",
        "reference_smact_version": reply["smact_version"],
        "ours_oxidation_states": oxidation_states,
        "n_rows": len(formulas),
        "n_rows_without_formula": sum(f is None for f in formulas),
        "n_rows_compared": n_compared,
        "n_rows_agree": n_agree,
        "agreement": n_agree / n_compared if n_compared else None,
        "n_formulas": len(keys),
        "n_formulas_agree": formulas_agree,
        "n_valid_ours": valid_ours,
        "n_valid_smact_2_5_5": valid_theirs,
        "disagreements": sorted(disagreements, key=lambda d: (-d["rows"], d["formula"])),
        "reference_errors": reference_errors,
        "unusable_formulas": unusable,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", help="CSV or parquet table with a formula column")
    parser.add_argument("--column", default="formula", help="the formula column (default: formula)")
    parser.add_argument(
        "--python", default="/tmp/smact255/bin/python", help="python of the environment holding SMACT 2.5.5"
    )
    parser.add_argument(
        "--oxidation-states", default="smact14", help="our oxidation-state set to compare (default: smact14)"
    )
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return
    if not args.table:
        parser.error("give a table with a formula column")
    report = compare(Path(args.table), args.column, args.python, args.oxidation_states)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
