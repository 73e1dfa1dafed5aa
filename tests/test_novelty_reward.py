"""S.U.N.-aware rewards (crystalformer_rl.reward_models.novelty) on real Materials Project structures: known crystals
of the reference, novel ones, repeats within and between calls, the bounded archive, the combination with an
E_hull-like child, the logged metrics and the shipped config."""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystalformer_rl.evaluation import ReferenceIndex
from crystalformer_rl.reward_models import (
    CrystalReward,
    Failure,
    NoveltyReward,
    StructureArchive,
    SUNReward,
    structure_fingerprint,
)
from tests.helpers.stand_ins import Tokens


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PILOT = SHARED / "data" / "mp20_pilot"
NOVELTY_KEYS = {
    "novelty/known_fraction",
    "novelty/duplicate_fraction",
    "novelty/novel_fraction",
    "novelty/undecided_fraction",
    "novelty/archive_size",
    "novelty/seconds",
}


# ----------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def reference() -> ReferenceIndex:
    """The 1,000 MP-20 pilot training crystals: the "training corpus" of these tests."""
    return ReferenceIndex.from_file(PILOT / "train.csv.gz", progress=False)


@pytest.fixture(scope="module")
def known(train) -> Structure:
    s = Structure.from_str(train.cif[2], fmt="cif")
    assert s.composition.reduced_formula == "LiMnIr2"  # in the reference
    return s


@pytest.fixture(scope="module")
def distinct(val) -> list[Structure]:
    """Validation crystals with pairwise different reduced formulas (so none can match another)."""
    out, seen = [], set()
    for cif in val.cif[:40]:
        s = Structure.from_str(cif, fmt="cif")
        formula = s.composition.reduced_formula
        if formula not in seen:
            seen.add(formula)
            out.append(s)
    assert len(out) >= 10
    return out[:10]


def strained(s: Structure, factor: float) -> Structure:
    """The same atoms in a cell stretched along c: beyond StructureMatcher's tolerances for factor >= 1.5."""
    out = s.copy()
    out.lattice = Lattice(s.lattice.matrix @ np.diag([1.0, 1.0, factor]))
    return out


def translated(s: Structure, shift=(0.13, 0.27, 0.41)) -> Structure:
    """The same crystal with a shifted origin: another fingerprint, only StructureMatcher sees the match."""
    out = s.copy()
    out.translate_sites(list(range(len(out))), shift, frac_coords=True, to_unit_cell=True)
    assert structure_fingerprint(out) != structure_fingerprint(s)
    return out


def rocksalt(a: str = "Na", b: str = "Xe", lattice: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


class ToyEhull(CrystalReward):
    """E_hull (eV/atom) looked up by reduced formula, reward −E_hull: an EhullReward without a potential.

    Formulas without an entry fail, as crystals a potential or hull cannot score."""

    name = "ehull"
    unit = "eV/atom"

    def __init__(self, table: dict[str, float], positive: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table, self.positive = table, positive

    def _compute_batch(self, structures):
        return [self.table.get(s.composition.reduced_formula, Failure("no energy")) for s in structures]

    def to_reward(self, value: float) -> float:
        return float(value) if self.positive else -float(value)


# ----------------------------------------------------------------------------------------------- known / novel
def test_corpus_crystal_is_known_and_distinct_ones_are_novel(train, reference, known):
    stretched = strained(known, 1.6)
    assert not StructureMatcher().fit(known, stretched)  # really another structure of the same composition
    substituted = known.copy().replace_species({"Li": "Na"})  # NaMnIr2: no reference has the composition
    jittered = known.copy().perturb(0.02)  # the corpus crystal, 0.02 Å off: StructureMatcher still matches
    reward = NoveltyReward(reference=reference, penalty=1.0)
    metrics: dict[str, float] = {}
    out = reward(
        prompts=["225"] * 5,
        completions=[known, stretched, substituted, jittered, Tokens(None)],
        completion_ids=[[0]] * 5,
        log_metric=metrics.__setitem__,
    )
    assert out == [-1.0, 0.0, 0.0, -1.0, None]
    verdicts = reward.last_verdicts
    assert [v.status for v in verdicts[:4]] == ["known", "novel", "novel", "known"] and verdicts[4] is None
    liminir2 = set(train.material_id[train.pretty_formula == "LiMnIr2"])
    assert verdicts[0].match in liminir2 and verdicts[3].match in liminir2
    assert "could not build" in reward.last_stats.reasons[4]
    # the logged metrics: fractions of all five crystals
    assert NOVELTY_KEYS | {"novelty/failed_fraction", "novelty/cached_fraction"} <= set(metrics)
    assert metrics["novelty/known_fraction"] == pytest.approx(0.4)
    assert metrics["novelty/novel_fraction"] == pytest.approx(0.4)
    assert metrics["novelty/duplicate_fraction"] == 0.0 and metrics["novelty/failed_fraction"] == pytest.approx(0.2)
    assert metrics["novelty/archive_size"] == 2.0  # the two novel crystals; known ones are not archived
    # a known crystal stays known (never "duplicate"), the novel ones are duplicates next time
    again = reward(completions=[known, translated(stretched), substituted], log_metric=metrics.__setitem__)
    assert again == [-1.0, -1.0, -1.0]
    assert [v.status for v in reward.last_verdicts] == ["known", "duplicate", "duplicate"]
    assert reward.last_stats.n_cached >= 2  # the reference verdicts of identical cells came from the cache
    assert metrics["novelty/duplicate_fraction"] == pytest.approx(2 / 3)


def test_default_reference_is_the_embedded_models_corpus():
    from crystalformer_rl.pretrained import SHIPPED_REFERENCE
    from crystalformer_rl.tokenization import CrystalTokens

    row = pd.read_csv(SHIPPED_REFERENCE, nrows=10).iloc[7]
    reward = NoveltyReward()  # reference="default"
    assert reward.reference.name == str(SHIPPED_REFERENCE)
    corpus_crystal = CrystalTokens.from_string(row["tokens"])
    out = reward(completions=[corpus_crystal.to_structure(), corpus_crystal, rocksalt()])
    assert out == [-1.0, -1.0, 0.0]  # a training crystal (as a structure or as tokens), NaXe: a new composition
    assert reward.last_verdicts[0].match == row["id"]


def test_undecided_reference_test_counts_as_known(reference, known):
    class BrokenMatcher:
        def fit(self, a, b):
            raise ValueError("degenerate lattice")

    reward = NoveltyReward(reference=reference, matcher=BrokenMatcher())
    metrics: dict[str, float] = {}
    out = reward(completions=[known, rocksalt()], log_metric=metrics.__setitem__)
    assert out == [-1.0, 0.0]  # LiMnIr2 could not be compared: not shown novel; NaXe: decided by composition
    assert reward.last_verdicts[0].undecided and "degenerate lattice" in reward.last_verdicts[0].error
    assert metrics["novelty/undecided_fraction"] == 0.5
    # in the archive a matcher error is "no match", but an identical cell is still found by its fingerprint
    assert reward(completions=[rocksalt(), translated(rocksalt())]) == [-1.0, 0.0]
    assert reward.archive.n_matcher_errors >= 1
    lenient = NoveltyReward(reference=reference, matcher=BrokenMatcher(), undecided="novel")
    assert lenient(completions=[known]) == [0.0] and lenient.last_verdicts[0].undecided


# ----------------------------------------------------------------------------------------------- duplicates
def test_repeats_within_and_between_calls_are_duplicates(distinct):
    a, b, c = distinct[0], distinct[3], distinct[4]
    reward = NoveltyReward(reference=None, known_penalty=2.0, duplicate_penalty=0.5)
    logged: list[tuple[str, float]] = []

    def log(key: str, value: float) -> None:
        logged.append((key, value))

    first = reward(completions=[a, a.copy(), translated(a), b, Tokens(b)], log_metric=log)
    assert first == [0.0, -0.5, -0.5, 0.0, -0.5]  # within one call: the first is novel, every repeat a duplicate
    assert [v.status for v in reward.last_verdicts] == ["novel", "duplicate", "duplicate", "novel", "duplicate"]
    assert len(reward.archive) == 2
    assert dict(logged)["novelty/duplicate_fraction"] == pytest.approx(0.6)
    second = reward(
        completions=[a.copy().make_supercell([1, 1, 2]), a.copy().perturb(0.02), c, translated(b)], log_metric=log
    )
    assert second == [-0.5, -0.5, 0.0, -0.5]  # between calls: a supercell, a jittered copy, a shifted origin
    assert dict(logged)["novelty/duplicate_fraction"] == pytest.approx(0.75)
    assert dict(logged)["novelty/archive_size"] == 3.0
    # only looking leaves the archive alone
    before = reward.archive.state_dict()
    verdicts = reward.classify([distinct[5], a], record=False)
    assert [v.status for v in verdicts] == ["novel", "duplicate"] and reward.archive.state_dict() == before
    reward.reset()
    assert len(reward.archive) == 0 and reward(completions=[a]) == [0.0]


def test_exact_repeat_found_without_matcher(distinct):
    a = distinct[0]
    archive = StructureArchive()
    archive.add(a)
    assert archive.find(a.copy()) is not None and archive.n_comparisons == 0  # fingerprint, no StructureMatcher
    assert archive.find(translated(a)) is not None and archive.n_comparisons == 1
    assert archive.find(distinct[1]) is None and archive.n_comparisons == 1  # another composition: no comparison


def test_archive_memory_stays_bounded(distinct):
    archive = StructureArchive(max_size=4, max_per_composition=2, policy="fifo")
    for s in distinct[:8]:
        archive.add(s)
        assert len(archive) <= 4
    assert len(archive) == 4 and archive.n_evicted == 4
    assert archive.find(distinct[0]) is None and archive.find(distinct[7]) is not None  # the oldest went first

    base = distinct[3]
    variants = [strained(base, f) for f in (1.0, 1.5, 2.25, 3.4)]
    matcher = StructureMatcher()
    assert not any(matcher.fit(x, y) for i, x in enumerate(variants) for y in variants[i + 1 :])  # all distinct
    for v in variants:
        archive.add(v)
        assert len(archive) <= 4 and max(archive.sizes().values()) <= 2
    formula = base.composition.reduced_formula
    assert archive.sizes()[formula] == 2
    assert archive.find(variants[0]) is None and archive.find(variants[3]) is not None
    n = archive.n_comparisons
    archive.find(strained(base, 5.1))
    assert archive.n_comparisons - n <= 2  # the matcher runs on at most max_per_composition crystals

    reward = NoveltyReward(reference=None, archive_size=3, max_per_composition=2, cache_size=2)
    metrics: dict[str, float] = {}
    assert reward(completions=distinct, log_metric=metrics.__setitem__) == [0.0] * len(distinct)
    assert len(reward.archive) == 3 and metrics["novelty/archive_size"] == 3.0
    assert NoveltyReward(reference=None, archive_size=0)(completions=[base, base.copy()]) == [0.0, 0.0]  # no test


def test_lru_keeps_what_the_policy_keeps_producing(distinct):
    a, b, c = distinct[:3]
    for policy, survivor, evicted in (("lru", a, b), ("fifo", b, a)):
        archive = StructureArchive(max_size=2, policy=policy)
        archive.add(a)
        archive.add(b)
        assert archive.find(translated(a)) is not None  # a is produced again
        archive.add(c)
        assert archive.find(survivor, touch=False) is not None and archive.find(evicted, touch=False) is None


def test_archive_state_round_trip(distinct):
    a, b = distinct[:2]
    reward = NoveltyReward(reference=None)
    reward(completions=[a, b])
    state = json.loads(json.dumps(reward.state_dict()))  # JSON-serialisable, e.g. beside a checkpoint
    restored = NoveltyReward(reference=None)
    restored.load_state_dict(state)
    assert restored(completions=[translated(a), distinct[2]]) == [-1.0, 0.0]
    small = NoveltyReward(reference=None, archive_size=1)
    small.load_state_dict(state)  # its own bound applies: the newest entry stays
    assert len(small.archive) == 1 and small.archive.find(b, touch=False) is not None


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        NoveltyReward(reference=None, penalty=-1.0)
    with pytest.raises(ValueError):
        NoveltyReward(reference=None, mode="multiplicative", penalty=1.5)
    with pytest.raises(ValueError):
        NoveltyReward(reference=None, mode="subtractive")
    with pytest.raises(ValueError):
        StructureArchive(policy="random")
    child = ToyEhull({})
    with pytest.raises(ValueError):
        SUNReward(child, NoveltyReward(reference=None), penalty=2.0)  # novelty kwargs beside a given novelty


def test_min_elements_scores_elemental_crystals_as_known_without_a_test(val, reference, distinct):
    """Elemental MP crystals the matcher calls novel (the reference lacks their phase) count as known with
    min_elements=2, are not archived, and pay the known penalty inside SUNReward; compounds are untouched."""
    elemental = [
        s for s in (Structure.from_str(cif, fmt="cif") for cif in val.cif) if len(s.composition.elements) == 1
    ]
    looked = NoveltyReward(reference=reference).classify(elemental, record=False)
    novel_elemental = [s for s, v in zip(elemental, looked) if v.status == "novel"]
    assert len(novel_elemental) >= 2  # without the rule these would be paid as new crystals

    novelty = NoveltyReward(reference=reference, min_elements=2, known_penalty=0.3, duplicate_penalty=0.7)
    verdicts = novelty.classify([*novel_elemental, distinct[1]])
    assert [v.status for v in verdicts] == ["known"] * len(novel_elemental) + ["novel"]
    assert verdicts[0].match == "fewer than 2 elements"
    assert len(novelty.archive) == 1  # only the compound was recorded

    s = novel_elemental[0]
    child = ToyEhull({s.composition.reduced_formula: 0.05})
    reward = SUNReward(child, NoveltyReward(reference=reference, min_elements=2, known_penalty=0.3))
    assert reward.compute([s]) == [pytest.approx(-0.35)]
    assert SUNReward(child, NoveltyReward(reference=reference, known_penalty=0.3)).compute([s]) == [
        pytest.approx(-0.05)
    ]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="min_elements"):
            NoveltyReward(reference=None, min_elements=bad)


# ----------------------------------------------------------------------------------------------- SUNReward
def test_sun_reward_discounts_known_and_repeated_crystals(reference, known, distinct):
    stretched = strained(known, 1.6)
    substituted = known.copy().replace_species({"Li": "Na"})
    child = ToyEhull({"LiMnIr2": 0.05, "NaMnIr2": 0.5})  # distinct[0] (TmMgHg2 ...) has no energy: unscorable
    novelty = NoveltyReward(reference=reference, known_penalty=0.3, duplicate_penalty=0.7)
    reward = SUNReward(child, novelty, stable_threshold=0.1)
    assert reward.__name__ == reward.name == "ehull_sun"
    metrics: dict[str, float] = {}
    completions = [known, stretched, stretched.copy(), translated(stretched), substituted, distinct[0], Tokens(None)]
    out = reward(completions=completions, log_metric=metrics.__setitem__)
    assert out[:5] == pytest.approx([-0.35, -0.05, -0.75, -0.75, -0.5])
    assert out[5:] == [None, None]  # unscorable stays unscorable: the trainer's failure reward applies
    assert "ehull: no energy" in reward.last_stats.reasons[5]
    assert [None if v is None else v.status for v in reward.last_verdicts] == [
        "known",
        "novel",
        "duplicate",
        "duplicate",
        "novel",
        None,
        None,
    ]
    assert len(novelty.archive) == 2  # stretched and substituted; the unscorable crystal was not recorded
    n = len(completions)
    assert NOVELTY_KEYS <= set(metrics)
    assert metrics["novelty/known_fraction"] == pytest.approx(1 / n)
    assert metrics["novelty/duplicate_fraction"] == pytest.approx(2 / n)
    assert metrics["novelty/novel_fraction"] == pytest.approx(2 / n)
    assert metrics["ehull_sun/stable_fraction"] == pytest.approx(4 / n)  # E_hull 0.05 <= 0.1: four crystals
    assert metrics["ehull_sun/sun_fraction"] == pytest.approx(1 / n)  # stable, novel and unique: stretched
    assert metrics["ehull_sun/failed_fraction"] == pytest.approx(2 / n)
    assert metrics["ehull/failed_fraction"] == pytest.approx(2 / n)  # the child's own metrics too
    # compute gives the same combined reward; the duplicates now include the first stretched crystal
    assert reward.compute([stretched]) == [pytest.approx(-0.75)]
    # the unscorable crystal is still not archived
    assert novelty.archive.find(distinct[0], touch=False) is None


def test_a_childs_own_clip_holds_inside_the_sun_reward_and_sums(reference, known):
    """E_hull clipped to [0, 1] by the child: a crystal 0.5 eV/atom below the hull cannot offset its penalty. Before,
    the S.U.N. reward and the sums used the unclipped -E_hull, so a known crystal scored -0.5 instead of -1 and a
    repeat +0.4 (the best reward once the trainer clipped the total to [-1, 0]) instead of -0.1."""
    from crystalformer_rl.reward_models import WeightedSumReward

    below = ToyEhull({"LiMnIr2": -0.5}, reward_clip_range=(-1.0, 0.0))
    stretched = strained(known, 1.6)
    assert below(completions=[known]) == [0.0]
    reward = SUNReward(below, NoveltyReward(reference=reference, known_penalty=1.0, duplicate_penalty=0.1))
    assert reward(completions=[known, stretched, stretched.copy()]) == pytest.approx([-1.0, 0.0, -0.1])
    assert WeightedSumReward([below], [2.0])(completions=[known]) == [0.0]
    # the physical value stays unclipped for the stable fraction
    assert reward.last_child_values[0] == pytest.approx(-0.5)


def test_sun_reward_multiplicative_for_a_positive_reward(reference, known):
    fom_like = ToyEhull({"LiMnIr2": 2.0, "NaMnIr2": 4.0}, positive=True)
    fom_like.name = fom_like.__name__ = "fom"
    reward = SUNReward(fom_like, NoveltyReward(reference=reference, mode="multiplicative", penalty=0.25))
    assert reward.name == "fom_sun" and reward.stable_threshold is None  # "auto": only for an EhullReward child
    substituted = known.copy().replace_species({"Li": "Na"})
    metrics: dict[str, float] = {}
    out = reward(completions=[known, substituted, translated(substituted)], log_metric=metrics.__setitem__)
    assert out == pytest.approx([1.5, 4.0, 3.0])
    assert "fom_sun/stable_fraction" not in metrics and NOVELTY_KEYS <= set(metrics)


def test_sun_reward_never_scores_a_failure_above_the_failure_reward(distinct):
    """As one callable, an unscorable crystal is None for the trainer (its failure_reward, -10), whatever novelty."""
    reward = SUNReward(ToyEhull({}), NoveltyReward(reference=None), failure_reward=-10.0)
    assert reward(completions=[distinct[0], distinct[0].copy()]) == [-10.0, -10.0]
    assert len(reward.novelty.archive) == 0


# ----------------------------------------------------------------------------------------------- config
def test_sun_config_matches_the_stability_config():
    base = yaml.safe_load((REPO / "configs" / "rl_ehull.yaml").read_text())
    sun = yaml.safe_load((REPO / "configs" / "rl_ehull_sun.yaml").read_text())
    differ = {k for k in set(base) | set(sun) if base.get(k) != sun.get(k)}
    assert differ == {"rewards", "reward_kwargs", "output_dir"}  # same budget, seeds and settings
    (name,) = sun["rewards"]
    from crystalformer_rl.commands.train import REWARDS

    module, attr = REWARDS[name].split(":")
    assert getattr(importlib.import_module(module), attr) is SUNReward
    kwargs = json.loads(sun["reward_kwargs"])[name]
    allowed = set(inspect.signature(NoveltyReward).parameters) | set(inspect.signature(SUNReward).parameters)
    assert set(kwargs) <= allowed

    base = yaml.safe_load((REPO / "configs" / "rl_dielectric.yaml").read_text())
    aware = yaml.safe_load((REPO / "configs" / "rl_dielectric_uncertainty.yaml").read_text())
    differ = {k for k in set(base) | set(aware) if base.get(k) != aware.get(k)}
    assert differ == {"reward_kwargs", "output_dir"}
    assert json.loads(aware["reward_kwargs"]) == {"figure_of_merit": {"uncertainty_penalty": 1.0}}


def test_sun_config_parses():
    from trl import TrlParser

    from crystalformer_rl.commands.train import RLScriptArguments
    from crystalformer_rl.trainers import CrystalRLConfig

    for name in (
        "rl_ehull_sun.yaml",
        "rl_dielectric_uncertainty.yaml",
        "rl_ehull_near_hull.yaml",
        "rl_ehull_sun_near_hull.yaml",
        "rl_ehull_sun_near_hull_rloo.yaml",
    ):
        script, config = TrlParser((RLScriptArguments, CrystalRLConfig)).parse_args_and_config(
            ["--config", str(REPO / "configs" / name)]
        )
        assert config.save_steps % config.num_iterations == 0
        assert isinstance(json.loads(script.reward_kwargs or "{}"), dict)
    recipe = yaml.safe_load((REPO / "configs" / "rl_ehull_sun_near_hull_rloo.yaml").read_text())
    kwargs = json.loads(recipe["reward_kwargs"])["ehull_sun"]
    # E_hull itself is clipped to [0, 1] eV/atom, so a crystal below the hull cannot offset a penalty
    assert ToyEhull({}, **kwargs.pop("ehull_kwargs")).reward_clip_range == (-1.0, 0.0)
    sun = NoveltyReward(reference=None, **{k: v for k, v in kwargs.items() if k != "reference"})
    assert sun.min_elements == 2 and sun.known_penalty == 1.0 and sun.duplicate_penalty == 0.1


@pytest.mark.slow
def test_sun_reward_from_the_config_with_the_real_ehull():
    """Built as `crystalformer-rl rl` builds it: the default EhullReward and the shipped corpus."""
    from crystalformer_rl.commands.train import load_reward
    from crystalformer_rl.pretrained import SHIPPED_REFERENCE
    from crystalformer_rl.reward_models import EhullReward
    from crystalformer_rl.tokenization import CrystalTokens

    sun = yaml.safe_load((REPO / "configs" / "rl_ehull_sun.yaml").read_text())
    (name,) = sun["rewards"]
    reward = load_reward(name, **json.loads(sun["reward_kwargs"])[name])
    assert isinstance(reward, SUNReward) and isinstance(reward.reward, EhullReward)
    assert reward.__name__ == "ehull_sun" and reward.stable_threshold == 0.1
    corpus_crystal = CrystalTokens.from_string(pd.read_csv(SHIPPED_REFERENCE, nrows=10).iloc[7]["tokens"])
    structure = corpus_crystal.to_structure()
    (e_hull,) = reward.reward.compute([structure])
    assert e_hull is not None and math.isfinite(e_hull)
    metrics: dict[str, float] = {}
    out = reward(completions=[corpus_crystal], log_metric=metrics.__setitem__)
    assert out == [pytest.approx(-e_hull - 1.0)]  # a training crystal: -E_hull - 1
    assert metrics["novelty/known_fraction"] == 1.0 and "ehull/seconds" in metrics
