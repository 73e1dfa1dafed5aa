"""S.U.N.-aware rewards: discount crystals that the training corpus already holds (*known*) or that the policy has
already produced (*duplicates*), so RL toward stability is not paid for collapsing onto a few known motifs.

* :class:`NoveltyReward` — the novelty term on its own. Per crystal, in ``mode="additive"`` (default): ``0`` if it
  is novel and unique, ``-known_penalty`` if it matches a reference (training) crystal, ``-duplicate_penalty`` if
  it matches a crystal produced before (earlier in the same call or in an earlier call). In
  ``mode="multiplicative"``: the factors ``1``, ``1 - known_penalty``, ``1 - duplicate_penalty``.
* :class:`SUNReward` — a reward (default :class:`EhullReward`, reward ``-E_hull``) made S.U.N.-aware: the child's
  reward plus the novelty term (``additive``), or times the factor (``multiplicative``, for positive rewards such
  as the figure of merit). This is the callable to train with (``configs/rl_ehull_sun.yaml``).
* :class:`StructureArchive` — the bounded memory of produced structures behind the duplicate test.

Matching is that of :mod:`crystalformer_rl.materials.matching`, which judges the S.U.N. rate of a run: pymatgen's
``StructureMatcher`` (defaults: ltol 0.2, stol 0.3, angle_tol 5°), only against structures of the same reduced
composition; the reference test is ``ReferenceIndex.check`` itself (composition look-up first, matcher only on
same-formula references), and an undecided test (the matcher failed) counts as known, as evaluation counts it
as not novel.

Known takes precedence over duplicate, and only novel crystals enter the archive: a crystal of the corpus is
``known`` every time it is produced, a new one is ``novel`` the first time and ``duplicate`` afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from ..materials.archive import StructureArchive, composition_key
from ..materials.matching import ReferenceIndex
from ..materials.structures import without_oxidation_states
from .base import CallStats, CrystalReward, Failure, as_structure, check_structure, structure_fingerprint
from .ehull import EhullReward


logger = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE",
    "KNOWN",
    "NOVEL",
    "NoveltyReward",
    "NoveltyVerdict",
    "SUNReward",
    "StructureArchive",
    "composition_key",
    "load_reference",
]

#: verdicts of :meth:`NoveltyReward.classify`
NOVEL, KNOWN, DUPLICATE, ERROR = "novel", "known", "duplicate", "error"


@dataclass(frozen=True)
class NoveltyVerdict:
    """Outcome of the novelty test of one crystal.

    ``status``: ``"novel"`` (matches neither a reference nor an archived crystal), ``"known"`` (matches a reference
    crystal, the reference test was undecided and ``undecided="known"``, or the crystal has fewer than
    ``min_elements`` elements), ``"duplicate"`` (matches an archived crystal) or ``"error"`` (the test itself failed;
    scored neutrally by :class:`SUNReward`). ``match``: the reference id (known) or the archive key (duplicate).
    ``undecided``: the reference test was incomplete.
    """

    status: str
    match: str | None = None
    undecided: bool = False
    error: str | None = None


def _prepare(obj: Any, min_distance: float, max_atoms: int) -> Structure | Failure:
    """The structure of a completion, or why it cannot be tested (the same rules as every reward's)."""
    try:
        s = as_structure(obj)
    except Exception as exc:
        return Failure(f"could not build structure: {type(exc).__name__}: {exc}")
    try:
        why = check_structure(s, min_distance=min_distance, max_atoms=max_atoms)
    except Exception as exc:
        return Failure(f"invalid structure: {type(exc).__name__}: {exc}")
    if why is not None:
        return Failure(why)
    return without_oxidation_states(s)


def _penalty(value: Any, what: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
    return v


# ============================================================================================ reference
def load_reference(reference: Any, column: str | None = None) -> Any:
    """The reference index a :class:`NoveltyReward` tests against.

    ``"default"``: the corpus of the embedded default model (``crystalformer_rl/data/reference/
    mp_corpus_test_safe.csv.gz``, 38,232 MP crystals, train + val); a model folder: the ``reference_corpus.csv.gz`` / ``.parquet``
    it carries; any other path or a ``datasets`` Hub id: ``ReferenceIndex.from_file`` (a CSV / parquet / JSON table
    with a ``cif``, ``structure`` or ``tokens`` column, token arrays, or a folder of CIFs); a sequence of
    structures; an object with ``check(structure, matcher)`` (a ``ReferenceIndex``) as it is; ``None``: no
    reference (only the duplicate test).
    """
    if reference is None:
        return None
    if callable(getattr(reference, "check", None)):
        return reference
    if isinstance(reference, str) and reference == "default":
        from ..pretrained import model_reference

        path = model_reference(None)
        if path is None:
            raise FileNotFoundError("the training corpus of the embedded model is missing; reinstall the package")
        return ReferenceIndex.from_file(path, column=column, progress=False)
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference).expanduser()
        if path.is_dir():
            from ..pretrained import model_reference

            carried = model_reference(path)  # a model folder's own training crystals
            if carried is not None:
                return ReferenceIndex.from_file(carried, column=column, progress=False)
        return ReferenceIndex.from_file(reference, column=column, progress=False)
    return ReferenceIndex.from_structures([as_structure(s) for s in reference])


# ============================================================================================ rewards
class NoveltyReward(CrystalReward):
    """The novelty term of a S.U.N.-aware reward: is a crystal in the training corpus, or produced before?

    Per crystal (``compute`` returns these values, and they are the reward):

    ================  ======================  ==========================
    verdict           ``mode="additive"``     ``mode="multiplicative"``
    ================  ======================  ==========================
    novel and unique  ``0``                   ``1``
    known (corpus)    ``-known_penalty``      ``1 - known_penalty``
    duplicate         ``-duplicate_penalty``  ``1 - duplicate_penalty``
    ================  ======================  ==========================

    A crystal that cannot be built or is unphysical (the checks every reward applies) gets ``None``.

    **Stateful**: every call adds its novel crystals to the archive, in input order, so the second of two matching
    crystals in one call is already a duplicate; calling twice on the same crystals gives different answers
    (:meth:`classify` with ``record=False`` only looks). :class:`CrystalRLOOTrainer` saves the archive
    (:meth:`state_dict`) with every checkpoint and restores it on resume; under multi-process training every rank
    keeps its own (duplicates across ranks are not seen; the trainer's ``unique_fraction`` covers the global batch).

    To train with it, wrap the stability reward in :class:`SUNReward` rather than passing this as a second
    ``reward_funcs`` entry or inside ``WeightedSumReward``: see :class:`SUNReward` for why.

    Args:
        reference: the training corpus to call "known" (see :func:`load_reference`; default: the embedded model's,
            ``crystalformer_rl/data/reference/mp_corpus_test_safe.csv.gz``); ``None``: no reference test.
        penalty: default of ``known_penalty`` and ``duplicate_penalty`` (reward units: eV/atom next to E_hull).
        known_penalty, duplicate_penalty: the two penalties, ``>= 0`` (``<= 1`` in multiplicative mode).
        mode: ``"additive"`` (next to a reward of any sign, e.g. ``-E_hull``) or ``"multiplicative"`` (a discount
            factor for a positive reward, e.g. the figure of merit).
        archive_size: crystals remembered for the duplicate test (see :class:`StructureArchive`); ``0`` switches
            the duplicate test off. Keep it well above the batch size, or repeats within a batch can be missed.
        max_per_composition: archived crystals per reduced composition (bounds the matcher calls per crystal).
        archive_policy: ``"lru"`` or ``"fifo"`` (see :class:`StructureArchive`).
        undecided: how a crystal whose reference test is incomplete (a matcher error) counts: ``"known"``
            (default, as evaluation counts it not novel) or ``"novel"``.
        min_elements: a crystal of fewer distinct elements counts as known without a test (``match``: ``"fewer
            than N elements"``). Default ``1`` (off). ``2`` stops RL from collapsing onto elemental crystals: the
            stable phases of every element are known, so an elemental crystal near the hull that the matcher calls
            novel is a known phase in disguise (a molecular H2 or O2 cell) or the potential's error, and a policy
            paid for crystals farther from the hull reaches them first (issue 11: clip [0, 3] took the
            single-element share from 1.55 to 10.8 %).
        matcher, matcher_kwargs: a ``StructureMatcher``, or keyword arguments for one (default: pymatgen's
            defaults, as ``crystalformer-rl evaluate``).
        reference_column: the crystal column of a reference table, when it cannot be guessed.
        cache_size: reference verdicts kept per structure fingerprint (LRU), so an identical cell is not matched
            against the corpus again.
        **kwargs: ``failure_reward``, ``min_distance``, ``max_atoms`` of :class:`CrystalReward`.
    """

    name = "novelty"
    unit = ""

    def __init__(
        self,
        reference: Any = "default",
        penalty: float = 1.0,
        *,
        known_penalty: float | None = None,
        duplicate_penalty: float | None = None,
        mode: str = "additive",
        archive_size: int = 10_000,
        max_per_composition: int | None = 32,
        archive_policy: str = "lru",
        undecided: str = "known",
        min_elements: int = 1,
        matcher: StructureMatcher | None = None,
        matcher_kwargs: dict[str, Any] | None = None,
        reference_column: str | None = None,
        cache_size: int = 100_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(cache_size=cache_size, **kwargs)
        if mode not in ("additive", "multiplicative"):
            raise ValueError(f"mode must be 'additive' or 'multiplicative', not {mode!r}")
        if undecided not in ("known", "novel"):
            raise ValueError(f"undecided must be 'known' or 'novel', not {undecided!r}")
        if matcher is not None and matcher_kwargs:
            raise ValueError("pass a matcher or matcher_kwargs, not both")
        penalty = _penalty(penalty, "penalty")
        self.known_penalty = _penalty(penalty if known_penalty is None else known_penalty, "known_penalty")
        self.duplicate_penalty = _penalty(
            penalty if duplicate_penalty is None else duplicate_penalty, "duplicate_penalty"
        )
        self.mode = mode
        if mode == "multiplicative":
            if max(self.known_penalty, self.duplicate_penalty) > 1:
                raise ValueError("in multiplicative mode a penalty is a discount, between 0 and 1")
            self.values = {NOVEL: 1.0, KNOWN: 1.0 - self.known_penalty, DUPLICATE: 1.0 - self.duplicate_penalty}
        else:
            self.values = {NOVEL: 0.0, KNOWN: -self.known_penalty, DUPLICATE: -self.duplicate_penalty}
        self.undecided = undecided
        if isinstance(min_elements, bool) or not isinstance(min_elements, int) or min_elements < 1:
            raise ValueError(f"min_elements must be an integer >= 1, not {min_elements!r}")
        self.min_elements = min_elements
        self.matcher = matcher if matcher is not None else StructureMatcher(**(matcher_kwargs or {}))
        self.reference = load_reference(reference, column=reference_column)
        self.archive = StructureArchive(archive_size, max_per_composition, archive_policy, matcher=self.matcher)
        self._reference_cache: OrderedDict[str, tuple[bool | None, str | None, str | None]] = OrderedDict()
        self.last_verdicts: list[NoveltyVerdict | None] = []
        self._last_reference_hits = 0

    @property
    def neutral(self) -> float:
        """The value of a novel, unique crystal (``0`` additive, ``1`` multiplicative)."""
        return self.values[NOVEL]

    def value(self, verdict: NoveltyVerdict | None) -> float:
        """Reward term of a verdict; an error or no verdict is neutral."""
        if verdict is None or verdict.status not in self.values:
            return self.neutral
        return self.values[verdict.status]

    # ----------------------------------------------------------------- the test
    def classify(self, structures: Sequence[Structure], record: bool = True) -> list[NoveltyVerdict]:
        """One verdict per structure, in input order; never raises on one crystal (``"error"`` instead).

        Greedy, like ``materials.matching.deduplicate``: with ``record=True`` (what scoring does) each novel
        crystal enters the archive before the next one is tested, so of several matching crystals the first is
        novel and the others duplicates. ``record=False`` only looks (the archive and its order stay as they are).
        """
        self._last_reference_hits = 0
        out: list[NoveltyVerdict] = []
        for s in structures:
            try:
                out.append(self._classify_one(s, record))
            except Exception as exc:
                logger.debug("novelty test failed: %s", exc)
                out.append(NoveltyVerdict(ERROR, error=f"{type(exc).__name__}: {exc}"))
        return out

    def _classify_one(self, structure: Structure, record: bool) -> NoveltyVerdict:
        s = without_oxidation_states(as_structure(structure))
        if len(s.composition.elements) < self.min_elements:
            return NoveltyVerdict(KNOWN, match=f"fewer than {self.min_elements} elements")
        formula = composition_key(s)
        key = structure_fingerprint(s)
        novel, match, error = self._reference_check(s, key)
        if novel is False:
            return NoveltyVerdict(KNOWN, match=match)
        undecided = novel is None
        if undecided and self.undecided == "known":
            return NoveltyVerdict(KNOWN, undecided=True, error=error)
        if self.archive.enabled:
            hit = self.archive.find(s, formula=formula, fingerprint=key, touch=record)
            if hit is not None:
                return NoveltyVerdict(DUPLICATE, match=hit, undecided=undecided, error=error)
            if record:
                self.archive.add(s, formula=formula, fingerprint=key)
        return NoveltyVerdict(NOVEL, undecided=undecided, error=error)

    def _reference_check(self, structure: Structure, key: str) -> tuple[bool | None, str | None, str | None]:
        """(novel, matching reference id, error) against the reference, cached by fingerprint."""
        if self.reference is None:
            return True, None, None
        if key in self._reference_cache:
            self._reference_cache.move_to_end(key)
            self._last_reference_hits += 1
            return self._reference_cache[key]
        try:
            check = self.reference.check(structure, self.matcher)
            result = (check.novel, check.match, check.error)
        except Exception as exc:  # e.g. a composition the index cannot parse: undecided, not novel
            result = (None, None, f"novelty check failed: {type(exc).__name__}: {exc}")
        if self.cache_size > 0:
            self._reference_cache[key] = result
            if len(self._reference_cache) > self.cache_size:
                self._reference_cache.popitem(last=False)
        return result

    # ----------------------------------------------------------------- CrystalReward protocol
    def compute_with_reasons(self, structures: Sequence[Any]) -> list[float | Failure]:
        """The value of each crystal (table above; :class:`Failure` where it cannot be tested); records the novel ones.

        Unlike other rewards, no fingerprint de-duplication or value cache: an exact repeat must come out as a
        duplicate, and the answer depends on what was produced before.
        """
        t0 = time.perf_counter()
        prepared = [_prepare(obj, self.min_distance, self.max_atoms) for obj in structures]
        tested = [i for i, p in enumerate(prepared) if not isinstance(p, Failure)]
        verdicts = self.classify([prepared[i] for i in tested])
        out: list[float | Failure] = [p if isinstance(p, Failure) else Failure("not tested") for p in prepared]
        self.last_verdicts = [None] * len(prepared)
        for i, v in zip(tested, verdicts):
            self.last_verdicts[i] = v
            out[i] = Failure(f"novelty test failed: {v.error}") if v.status == ERROR else self.values[v.status]
        dt = time.perf_counter() - t0
        n_failed = sum(isinstance(v, Failure) for v in out)
        self.last_stats = CallStats(
            n=len(out),
            n_cached=self._last_reference_hits,
            n_computed=len(tested) - self._last_reference_hits,
            n_failed=n_failed,
            seconds=dt,
            reasons=[v.reason if isinstance(v, Failure) else None for v in out],
        )
        counts = Counter(v.status for v in verdicts)
        logger.info(
            "%s: %d structures (%d known, %d duplicates, %d novel, %d not tested) in %.3f s; archive %d",
            self.name,
            len(out),
            counts[KNOWN],
            counts[DUPLICATE],
            counts[NOVEL],
            n_failed,
            dt,
            len(self.archive),
        )
        return out

    def metrics(self, verdicts: Sequence[NoveltyVerdict | None], seconds: float) -> dict[str, float]:
        """Per-call metrics: fractions of *all* ``verdicts`` (``None``: not tested), the archive size, the time.

        ``known_fraction + duplicate_fraction + novel_fraction`` is the tested share; ``undecided_fraction`` (a
        reference test incomplete) is counted inside ``known`` (or ``novel``, per ``undecided``).
        """
        n = max(len(verdicts), 1)
        counts = Counter(v.status for v in verdicts if v is not None)
        return {
            f"{self.name}/known_fraction": counts[KNOWN] / n,
            f"{self.name}/duplicate_fraction": counts[DUPLICATE] / n,
            f"{self.name}/novel_fraction": counts[NOVEL] / n,
            f"{self.name}/undecided_fraction": sum(v is not None and v.undecided for v in verdicts) / n,
            f"{self.name}/archive_size": float(len(self.archive)),
            f"{self.name}/seconds": float(seconds),
        }

    def _log_to_trainer(self, values: list[float | Failure], kwargs: dict[str, Any]) -> None:
        log_metric: Callable[[str, float], Any] | None = kwargs.get("log_metric")
        if log_metric is None:
            return
        super()._log_to_trainer(values, kwargs)  # <name>/seconds, failed_fraction, cached_fraction
        try:
            for key, value in self.metrics(self.last_verdicts, self.last_stats.seconds).items():
                if key != f"{self.name}/seconds":  # already logged, same value
                    log_metric(key, float(value))
        except Exception as exc:  # logging must never break a step
            logger.debug("log_metric failed: %s", exc)

    # ----------------------------------------------------------------- state
    def clear_cache(self) -> None:
        """Forget cached reference verdicts (the archive stays; :meth:`reset` clears both)."""
        super().clear_cache()
        self._reference_cache.clear()

    def reset(self) -> None:
        """Forget every produced crystal and every cached verdict."""
        self.clear_cache()
        self.archive.clear()

    def state_dict(self) -> dict[str, Any]:
        """The archive, JSON-serialisable (the reference verdict cache is recomputable and not saved)."""
        return {"archive": self.archive.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.archive.load_state_dict(state.get("archive", {}))

    def __repr__(self) -> str:
        ref = getattr(self.reference, "name", None) if self.reference is not None else None
        return (
            f"NoveltyReward(reference={ref!r}, mode={self.mode!r}, known_penalty={self.known_penalty:g}, "
            f"duplicate_penalty={self.duplicate_penalty:g}, min_elements={self.min_elements}, "
            f"archive={len(self.archive)}/{self.archive.max_size})"
        )


class SUNReward(CrystalReward):
    """A reward made S.U.N.-aware: the child's reward combined with a :class:`NoveltyReward` term.

    Per crystal the child scores: ``reward + term`` (novelty ``mode="additive"``: with the default
    :class:`EhullReward` child, ``-E_hull`` for a novel, unique crystal, ``-E_hull - known_penalty`` for one of the
    training corpus, ``-E_hull - duplicate_penalty`` for one produced before) or ``reward × factor``
    (``mode="multiplicative"``, for a positive reward such as :class:`FigureOfMeritReward`; never for ``-E_hull``,
    whose product with a factor < 1 would be a *better* reward). ``reward`` is the child's as it alone would give
    it, its own ``reward_clip_range`` included: with ``ehull_kwargs={"reward_clip_range": (-1, 0)}`` a known
    crystal below the hull still pays the full penalty, where a clip of the total (the trainer's) would let
    ``-E_hull > 0`` cancel it. A crystal the child cannot score is ``None``
    (the trainer's ``failure_reward`` applies) and is neither tested nor archived; a failed novelty test is
    neutral (the child's reward as it is). ``compute`` returns the same combined reward.

    Why one callable rather than ``reward_funcs=[ehull, novelty]`` or ``WeightedSumReward([ehull, novelty])``:
    the trainer (as TRL) sums the reward functions with ``nansum`` and counts a crystal as scorable when *any*
    function scores it, so a separate novelty term would turn crystals E_hull cannot score into scorable ones worth
    ``0`` or ``-penalty``, far above the failure reward (``-10``); and the generic combinations evaluate their
    children once per distinct structure fingerprint, so an exact repeat within a batch would not be a duplicate.

    Metrics (through TRL's ``log_metric``, the same keys on every call and rank): the child's own
    (``ehull/seconds``, ``ehull/failed_fraction``, ...); ``novelty/known_fraction``, ``novelty/duplicate_fraction``,
    ``novelty/novel_fraction``, ``novelty/undecided_fraction`` (fractions of all crystals of the call; a crystal
    the child cannot score is in none), ``novelty/archive_size``, ``novelty/seconds``; ``<name>/seconds``,
    ``<name>/failed_fraction``; and, with a ``stable_threshold``, ``<name>/stable_fraction`` (child value <=
    threshold: E_hull <= 0.1 eV/atom, the trainer's ``rewards/ehull/stable_fraction`` rule) and
    ``<name>/sun_fraction`` (stable, not in the corpus, not produced before).

    Args:
        reward: the child reward (default: ``EhullReward(device=device, **ehull_kwargs)``).
        novelty: a :class:`NoveltyReward` (default: ``NoveltyReward(**novelty_kwargs)``).
        ehull_kwargs: keyword arguments of the default :class:`EhullReward` (e.g. ``{"calculator": "orb"}``).
        stable_threshold: value of the child at or below which a crystal is stable, for the logged fractions;
            ``"auto"``: 0.1 (eV/atom) for an :class:`EhullReward` child, else none logged.
        name: the reward's name (TRL's ``rewards/<name>/mean``); default ``<child name>_sun`` (``ehull_sun``).
        device: where the default :class:`EhullReward`'s potentials run.
        failure_reward: as every reward's (default ``None``: the trainer's rule applies).
        **novelty_kwargs: keyword arguments of the default :class:`NoveltyReward` (``reference``, ``penalty``,
            ``known_penalty``, ``duplicate_penalty``, ``mode``, ``archive_size``, ...).
    """

    name = "sun"

    def __init__(
        self,
        reward: CrystalReward | None = None,
        novelty: NoveltyReward | None = None,
        *,
        ehull_kwargs: dict[str, Any] | None = None,
        stable_threshold: float | str | None = "auto",
        name: str | None = None,
        device: Any = "auto",
        failure_reward: float | None = None,
        **novelty_kwargs: Any,
    ) -> None:
        super().__init__(cache_size=0, failure_reward=failure_reward)
        if reward is None:
            reward = EhullReward(device=device, **(ehull_kwargs or {}))
        elif ehull_kwargs:
            raise ValueError("ehull_kwargs configure the default EhullReward; a reward was given")
        if novelty is None:
            novelty = NoveltyReward(**novelty_kwargs)
        elif novelty_kwargs:
            raise ValueError(f"{sorted(novelty_kwargs)} configure the default NoveltyReward; a novelty was given")
        self.reward, self.novelty = reward, novelty
        if isinstance(stable_threshold, str):
            if stable_threshold != "auto":
                raise ValueError(f"stable_threshold must be a number, None or 'auto', not {stable_threshold!r}")
            stable_threshold = 0.1 if isinstance(reward, EhullReward) else None
        self.stable_threshold = None if stable_threshold is None else float(stable_threshold)
        self.name = self.__name__ = name or f"{reward.name}_sun"
        self.last_verdicts: list[NoveltyVerdict | None] = []
        self.last_child_values: list[float | Failure] = []
        self._novelty_seconds = 0.0

    def compute_with_reasons(self, structures: Sequence[Any]) -> list[float | Failure]:
        """The combined reward per crystal (see the class docstring); records the novel, scorable ones."""
        t0 = time.perf_counter()
        built: list[Structure | None] = []
        for obj in structures:  # build once: the child and the novelty test share the structure
            try:
                built.append(as_structure(obj))
            except Exception:
                built.append(None)  # the child reports why
        inputs = [s if s is not None else obj for s, obj in zip(built, structures)]
        child_values = self.reward.compute_with_reasons(inputs)
        scored = [i for i, v in enumerate(child_values) if not isinstance(v, Failure) and built[i] is not None]
        t1 = time.perf_counter()
        verdicts = self.novelty.classify([built[i] for i in scored])
        self._novelty_seconds = time.perf_counter() - t1
        self.last_child_values = list(child_values)
        self.last_verdicts = [None] * len(inputs)
        for i, v in zip(scored, verdicts):
            self.last_verdicts[i] = v

        out: list[float | Failure] = []
        for i, v in enumerate(child_values):
            if isinstance(v, Failure):
                out.append(Failure(f"{self.reward.name}: {v.reason}"))
                continue
            try:  # the child's reward as it alone would give it, its own clip included
                r = self.reward.reward_of(v)
            except Exception as exc:
                out.append(Failure(f"{self.reward.name}: reward transform failed: {exc}"))
                continue
            if r is None:
                out.append(Failure(f"{self.reward.name}: reward not finite"))
                continue
            term = self.novelty.value(self.last_verdicts[i])
            out.append(r * term if self.novelty.mode == "multiplicative" else r + term)

        dt = time.perf_counter() - t0
        n_failed = sum(isinstance(v, Failure) for v in out)
        child = self.reward.last_stats
        self.last_stats = CallStats(
            n=len(out),
            n_cached=child.n_cached,
            n_computed=child.n_computed,
            n_failed=n_failed,
            seconds=dt,
            reasons=[v.reason if isinstance(v, Failure) else None for v in out],
        )
        counts = Counter(v.status for v in verdicts)
        logger.info(
            "%s: %d structures (%d not scored; %d known, %d duplicates, %d novel) in %.3f s (novelty %.3f s)",
            self.name,
            len(out),
            n_failed,
            counts[KNOWN],
            counts[DUPLICATE],
            counts[NOVEL],
            dt,
            self._novelty_seconds,
        )
        return out

    def _log_to_trainer(self, values: list[float | Failure], kwargs: dict[str, Any]) -> None:
        log_metric: Callable[[str, float], Any] | None = kwargs.get("log_metric")
        if log_metric is None:
            return
        super()._log_to_trainer(values, kwargs)  # <name>/seconds, failed_fraction, cached_fraction
        self.reward._log_to_trainer(self.last_child_values, kwargs)  # the child's own (ehull/...)
        try:
            for key, value in self.novelty.metrics(self.last_verdicts, self._novelty_seconds).items():
                log_metric(key, float(value))
            if self.stable_threshold is not None:
                n = max(len(self.last_child_values), 1)
                stable = [
                    not isinstance(v, Failure) and float(v) <= self.stable_threshold for v in self.last_child_values
                ]
                sun = [st and v is not None and v.status == NOVEL for st, v in zip(stable, self.last_verdicts)]
                log_metric(f"{self.name}/stable_fraction", sum(stable) / n)
                log_metric(f"{self.name}/sun_fraction", sum(sun) / n)
        except Exception as exc:  # logging must never break a step
            logger.debug("log_metric failed: %s", exc)

    def reset(self) -> None:
        """Forget every produced crystal (the child's caches stay: they are not history-dependent)."""
        self.novelty.reset()

    def state_dict(self) -> dict[str, Any]:
        return self.novelty.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.novelty.load_state_dict(state)

    def __repr__(self) -> str:
        return f"SUNReward(name={self.name!r}, reward={self.reward!r}, novelty={self.novelty!r})"
