"""Hand-made crystals with known validity, uniqueness and (toy) stability, and a cheap ``CrystalReward`` to score them.

The RL trainer's per-step metrics are checked against these: each row's properties are known by construction.
"""

import math

import numpy as np
import torch
from pymatgen.core import Structure

from crystalformer_rl.reward_models import CrystalReward
from crystalformer_rl.tokenization import WyckoffTables
from crystalformer_rl.trainers import space_group_prompts


# (space group, [(Wyckoff letter index, Z[, xyz]), ...], cubic a in Å): all in Fm-3m (225); 1 = 4a, 2 = 4b, 3 = 8c,
# 5 = 24e (x, 0, 0). Every row has a finite log-likelihood under the model (the sampler could draw it).
KNOWN_CRYSTALS = [
    (225, [(1, 11), (2, 17)], 5.64),  # 0 NaCl rock salt: valid, unique, toy-stable
    (225, [(1, 11), (2, 17)], 5.64),  # 1 the same crystal: a duplicate of 0
    (225, [(1, 11), (2, 17)], 5.70),  # 2 NaCl, a little larger: StructureMatcher (scale=True) matches 0
    (225, [(1, 29)], 3.61),  # 3 fcc Cu: a single element
    (225, [(1, 11), (3, 17)], 5.64),  # 4 NaCl2: charge-imbalanced (composition-invalid), structurally fine
    (225, [(5, 11, (0.02, 0, 0)), (5, 17, (0.27, 0, 0))], 8.0),  # 5 NaCl, Na 0.23 Å apart: structure-invalid
    (225, [(1, 3)], 4.40),  # 6 fcc Li: valid, single element, unscorable (the toy reward has no Li)
    (225, [(1, 12), (2, 8)], 4.21),  # 7 MgO rock salt: valid, unique, toy-stable
    (225, [(1, 19), (2, 17)], 6.29),  # 8 KCl rock salt: valid, unique, toy-stable
    (225, [(1, 11), (3, 17)], 5.70),  # 9 NaCl2 again, larger: a duplicate of 4, composition-invalid
]
# What the rows above are, as fractions of the 10 (checked by hand, see the comments).
KNOWN_FRACTIONS = {
    "scorable_fraction": 0.8,  # all but 5, 6
    "struct_valid_fraction": 0.9,  # all but 5
    "comp_valid_fraction": 0.8,  # all but 4, 9
    "valid_fraction": 0.7,  # all but 4, 5, 9
    "unique_fraction": 0.7,  # 1, 2 repeat 0; 9 repeats 4
    "single_element_fraction": 0.2,  # 3, 6
    "rewards/ehull/stable_fraction": 0.5,  # 0, 1, 2, 7, 8 (toy E_hull 0)
}
ANIONS = {"N", "O", "F", "S", "Cl"}


def known_tokens(rows) -> dict[str, torch.Tensor]:
    """Tokens of ``KNOWN_CRYSTALS[rows]``, lattice in model space (lengths / N^(1/3), angles in radians)."""
    mult = WyckoffTables.load().mult
    n = max(len(KNOWN_CRYSTALS[r][1]) for r in rows)
    G = torch.tensor([KNOWN_CRYSTALS[r][0] for r in rows])
    W = torch.zeros(len(rows), n, dtype=torch.long)
    A = torch.zeros(len(rows), n, dtype=torch.long)
    XYZ = torch.zeros(len(rows), n, 3)
    L = torch.zeros(len(rows), 6)
    for i, r in enumerate(rows):
        g, sites, a = KNOWN_CRYSTALS[r]
        for j, (w, z, *xyz) in enumerate(sites):
            W[i, j], A[i, j] = w, z
            XYZ[i, j] = torch.tensor(xyz[0] if xyz else {1: [0.0, 0.0, 0.0], 2: [0.5] * 3, 3: [0.25] * 3}[w])
        num_atoms = sum(int(mult[g - 1, site[0]]) for site in sites)
        L[i] = torch.tensor([a / num_atoms ** (1 / 3)] * 3 + [math.pi / 2] * 3)
    return {"G": G, "W": W, "A": A, "XYZ": XYZ, "L": L}


def known_rollout(model, inputs):
    """Rollout for ``CrystalRLOOTrainer(rollout_fn=...)``: the crystal named by each prompt row's ``crystal``."""
    return known_tokens([int(x["crystal"]) for x in inputs])


def known_prompts(rows=range(len(KNOWN_CRYSTALS))):
    rows = list(rows)
    return space_group_prompts([KNOWN_CRYSTALS[r][0] for r in rows], {"crystal": rows})


def known_inputs(rows=range(len(KNOWN_CRYSTALS))) -> list[dict]:
    """One generation batch as TRL hands it to ``_generate_and_score_completions``: a list of prompt rows."""
    return [{"prompt": KNOWN_CRYSTALS[r][0], "crystal": r} for r in rows]


class ToyEhull(CrystalReward):
    """A cheap stand-in for ``EhullReward`` (same name, same reward = −value): "E_hull" = |½ − anion share|.

    Rock salts score 0 (stable), elements 0.5; lithium is not supported, so it fails like an element outside a
    potential's training set. Everything else (structure checks, caching, ``log_metric``) is ``CrystalReward``'s.
    """

    name = "ehull"
    unit = "eV/atom"

    def supported_elements(self):
        return {"Na", "Cl", "Cu", "Mg", "O", "K"}

    def to_reward(self, value: float) -> float:
        return -float(value)

    def _compute_batch(self, structures: list[Structure]) -> list[float]:
        out = []
        for s in structures:
            anions = sum(n for el, n in s.composition.element_composition.items() if el.symbol in ANIONS)
            out.append(abs(0.5 - anions / s.composition.num_atoms))
        return out


def logging_anion_share(prompts, completions, log_metric=None, log_extra=None, **kwargs):
    """Anion share of the Wyckoff sites that also reports through TRL's ``log_metric`` and ``log_extra``."""
    values = [
        float(np.isin(c.A[: c.num_sites], [7, 8, 9, 16, 17]).mean()) if c.num_sites else 0.0 for c in completions
    ]
    log_metric("anion_share/batch_mean", float(np.mean(values)))
    log_extra("anion_share", values)
    return values
