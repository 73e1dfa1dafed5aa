"""Train/test hygiene: find the crystals of a corpus that are a benchmark's test crystals under another name.

Ids catch most of them; structure catches the rest (a Materials Project structure listed twice, or an AFLOW / ICSD
copy with no MP id): ``StructureMatcher()`` with its defaults, within the same reduced formula.
"""

from __future__ import annotations

import multiprocessing as mp
import warnings
from collections.abc import Sequence

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from ..utils import ignore_sigint


_TEST_BY_FORMULA: dict[str, list[tuple[str, str]]] = {}


def _structure(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def _formula(cif: str) -> str:
    return _structure(cif).composition.reduced_formula


def _init(test_by_formula: dict[str, list[tuple[str, str]]], in_pool: bool = False) -> None:
    global _TEST_BY_FORMULA
    if in_pool:
        ignore_sigint()
    _TEST_BY_FORMULA = test_by_formula


def _matching_test_id(job: tuple[str, str]) -> str | None:
    formula, cif = job
    candidates = _TEST_BY_FORMULA.get(formula)
    if not candidates:
        return None
    matcher, structure = StructureMatcher(), _structure(cif)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next((tid for tid, test_cif in candidates if matcher.fit(structure, _structure(test_cif))), None)


def matching_test_ids(
    cifs: Sequence[str],
    test_ids: Sequence[str],
    test_cifs: Sequence[str],
    num_proc: int = 1,
    progress: bool = True,
) -> list[str | None]:
    """For each CIF in ``cifs``, the id of a test crystal it matches (same reduced formula), else ``None``."""
    test_by_formula: dict[str, list[tuple[str, str]]] = {}
    for test_id, test_cif in zip(test_ids, test_cifs):
        test_by_formula.setdefault(_formula(test_cif), []).append((test_id, test_cif))
    if num_proc > 1:
        with mp.get_context("fork").Pool(num_proc, initializer=_init, initargs=(test_by_formula, True)) as pool:
            formulas = list(
                tqdm(pool.imap(_formula, cifs, chunksize=64), total=len(cifs), desc="formulas", disable=not progress)
            )
            jobs = list(zip(formulas, cifs))
            matched = pool.imap(_matching_test_id, jobs, chunksize=16)
            return list(tqdm(matched, total=len(jobs), desc="matching test crystals", disable=not progress))
    _init(test_by_formula)
    jobs = [(_formula(cif), cif) for cif in cifs]
    return [_matching_test_id(job) for job in tqdm(jobs, desc="matching test crystals", disable=not progress)]
