"""Evaluation of generated crystals: validity (CDVAE), uniqueness, novelty, stability (E_hull) and S.U.N.

Typical use::

    from crystalformer_rl.evaluation import evaluate_crystals

    result = evaluate_crystals("samples.csv", reference="train.parquet", relax=True)
    result.save("eval/")            # structures.csv / .parquet, space_groups.csv, summary.json, plots
    print(result.summary["frac_sun_relaxed"], result.summary["frac_sun_unrelaxed"], result.summary["sun_per_second"])
    result.by_space_group           # counts and rates per space group (paper Fig. 4)

The metrics, thresholds and both S.U.N. rules are defined in ``docs/evaluation.md``. The physics (E_hull,
relaxation, matching, validity) is :mod:`crystalformer_rl.materials`; this package aggregates it into tables,
summaries and plots (the names re-exported below from ``materials`` are the ones evaluations use most).
"""

from ..materials.ehull import compute_ehull, default_ehull_fn, default_relax_fn
from ..materials.io import LoadedCrystals, load_crystals
from ..materials.matching import ReferenceIndex, deduplicate, novelty, reduced_formula, space_group_number
from ..materials.relaxation import relax_structures
from ..materials.validity import (
    check_composition_validity,
    check_structure_validity,
    composition_validity,
    structure_validity,
)
from .evaluate import (
    DEFAULT_REFERENCE,
    EvaluationOptions,
    EvaluationResult,
    evaluate_crystals,
    evaluate_structures,
    space_group_table,
    summarize,
)
from .plots import plot_ehull_histogram, plot_property_scatter, plot_space_group_bars, plot_space_group_rates
from .relaxed_chunks import RelaxedChunks


__all__ = [
    "DEFAULT_REFERENCE",
    "EvaluationOptions",
    "EvaluationResult",
    "LoadedCrystals",
    "ReferenceIndex",
    "RelaxedChunks",
    "check_composition_validity",
    "check_structure_validity",
    "composition_validity",
    "compute_ehull",
    "deduplicate",
    "default_ehull_fn",
    "default_relax_fn",
    "evaluate_crystals",
    "evaluate_structures",
    "load_crystals",
    "novelty",
    "plot_ehull_histogram",
    "plot_property_scatter",
    "plot_space_group_bars",
    "plot_space_group_rates",
    "reduced_formula",
    "relax_structures",
    "space_group_number",
    "space_group_table",
    "structure_validity",
    "summarize",
]
