"""CrystalFormer sampling: KV cache vs reference algorithm, Wyckoff rules, symmetry of the crystals, controls."""

import math
import os

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crystalformer_rl.modeling_crystalformer import CrystalFormerConfig, CrystalFormerForCrystalGeneration  # noqa: E402
from crystalformer_rl.modeling_crystalformer.sampling_crystalformer import sample_von_mises  # noqa: E402
from crystalformer_rl.wyckoff import WyckoffTables, apply_op  # noqa: E402


TABLES = WyckoffTables.load()
SPREAD = [
    1,
    2,
    5,
    14,
    15,
    33,
    47,
    62,
    74,
    99,
    123,
    139,
    142,
    148,
    160,
    166,
    187,
    191,
    194,
    198,
    216,
    221,
    225,
    227,
    229,
    230,
]


def sane_model(seed=0, std=0.2, **kwargs):
    """A tiny random model whose distributions are not flat, with a lattice head that gives sensible cells
    (normalised lengths near 1.6-1.8 Å, angles near 90 degrees, tiny spread)."""
    config = CrystalFormerConfig(
        **{
            **{"num_layers": 2, "num_heads": 2, "key_size": 8, "model_size": 16, "embed_size": 8, "h0_size": 16},
            **kwargs,
        }
    )
    torch.manual_seed(seed)
    model = CrystalFormerForCrystalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name and "final_ln" not in name:
                param.normal_(0.0, std)
        k, start = config.num_lattice_components, config.atom_types + config.num_lattice_components
        means = torch.tensor([1.6, 1.7, 1.8, math.pi / 2 + 0.1, math.pi / 2 - 0.05, math.pi / 2 + 0.07])
        model.head.weight[start : start + 12 * k] = 0
        model.head.bias[start : start + 6 * k] = means.repeat(k)
        model.head.bias[start + 6 * k : start + 12 * k] = -8.0  # sigma = softplus(-8) + 1e-3
    return model


@pytest.fixture(scope="module")
def model():
    return sane_model()


# ---------------------------------------------------------------------------------------------------------
# Building structures from tokens (test utility, as reference §4 / awl2struct)
# ---------------------------------------------------------------------------------------------------------


def lattice_matrix(a, b, c, alpha, beta, gamma):
    alpha, beta, gamma = np.radians([alpha, beta, gamma])
    cx = c * np.cos(beta)
    cy = c * (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
    return np.array([[a, 0, 0], [b * np.cos(gamma), b * np.sin(gamma), 0], [cx, cy, np.sqrt(c**2 - cx**2 - cy**2)]])


def build_structure(g, W, A, XYZ):
    """Expand every occupied site into its orbit: take the image (under the general ops) that op0 fixes, then
    apply the ops of its Wyckoff position."""
    positions, numbers = [], []
    general = TABLES.general_ops(g)
    for w, a, x in zip(W, A, XYZ):
        if w == 0:
            break
        images = apply_op(general, np.asarray(x, dtype=float)) % 1.0
        diff = apply_op(TABLES.op0[g - 1, w], images) - images
        diff -= np.rint(diff)
        representative = images[np.argmin(np.linalg.norm(diff, axis=-1))]
        orbit = apply_op(TABLES.orbit(g, w), representative) % 1.0
        positions.append(orbit)
        numbers += [int(a)] * len(orbit)
    return np.concatenate(positions), np.array(numbers)


def contains_group_operations(g, cell, symprec=1e-3) -> bool:
    """spglib's symmetry of the structure includes every operation of space group g (so spglib finds g or a
    supergroup of it, in this setting)."""
    import spglib

    symmetry = spglib.get_symmetry(cell, symprec=symprec)
    assert symmetry is not None, "spglib failed on the structure"
    rotations, translations = symmetry["rotations"], symmetry["translations"]
    for op in TABLES.general_ops(g):
        rotation, translation = np.rint(op[:, :3]).astype(int), op[:, 3]
        same_rotation = np.all(rotations == rotation, axis=(1, 2))
        delta = translations[same_rotation] - translation
        delta -= np.rint(delta)
        if not np.any(np.all(np.abs(delta) < 1e-3, axis=1)):
            return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Cache, reproducibility, log-likelihood
# ---------------------------------------------------------------------------------------------------------


def test_cached_and_uncached_sampling_agree(model):
    groups = torch.tensor(SPREAD[:12])
    cached = model.sample(groups, seed=11, temperature=0.9, top_p=0.95, first_atom_temperature=1.2)
    uncached = model.sample(groups, seed=11, temperature=0.9, top_p=0.95, first_atom_temperature=1.2, use_cache=False)
    for key in ("G", "W", "A", "num_atoms", "num_sites"):
        assert torch.equal(cached[key], uncached[key]), key
    for key in ("XYZ", "L", "lattice", "logp_w", "logp_a", "logp_xyz", "logp_l", "logp"):
        torch.testing.assert_close(cached[key], uncached[key], rtol=1e-5, atol=1e-5)


def test_seeding(model):
    a = model.sample(SPREAD[:6], seed=3)
    b = model.sample(SPREAD[:6], seed=3)
    c = model.sample(SPREAD[:6], seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    assert not torch.equal(a.XYZ, c.XYZ)
    d = model.sample(SPREAD[:6], generator=torch.Generator().manual_seed(9))
    e = model.sample(SPREAD[:6], generator=torch.Generator().manual_seed(9))
    assert torch.equal(d.XYZ, e.XYZ) and torch.equal(d.W, e.W)


def test_sampler_logp_equals_log_prob(model):
    out = model.sample(torch.tensor(SPREAD * 2), seed=5)
    with torch.no_grad():
        scored = model.log_prob(G=out.G, L=out.L, XYZ=out.XYZ, A=out.A, W=out.W)
    for key in ("logp_w", "logp_a", "logp_xyz", "logp_l", "logp"):
        torch.testing.assert_close(out[key], scored[key], rtol=1e-5, atol=1e-4)
    assert torch.isfinite(out.logp).all()


def test_chunked_sampling_shapes(model):
    out = model.sample(225, num_samples=7, seed=1, max_batch_size=3)
    n_max = model.config.n_max
    assert out.W.shape == out.A.shape == (7, n_max) and out.XYZ.shape == (7, n_max, 3)
    assert out.L.shape == out.lattice.shape == (7, 6)
    assert out.logp.shape == out.num_atoms.shape == (7,)
    assert (out.G == 225).all()


# ---------------------------------------------------------------------------------------------------------
# Wyckoff rules and symmetry of the sampled crystals
# ---------------------------------------------------------------------------------------------------------


def test_sampled_tokens_obey_the_wyckoff_rules():
    model = sane_model(seed=1, std=0.5)
    groups = torch.arange(1, 231).repeat(3)
    out = model.sample(groups, seed=2)
    W, A, G = out.W.numpy(), out.A.numpy(), out.G.numpy()
    n_max = model.config.n_max
    assert (W[:, 0] > 0).all()  # at least one site
    assert (W[:, n_max - 1] == 0).all()  # the lattice site is always free
    assert ((A == 0) == (W == 0)).all()  # A = 0 iff W = 0
    for g, w in zip(G, W):
        assert (w <= TABLES.wmax[g - 1]).all()  # letters beyond the group never appear
        occupied = w[w > 0]
        assert (w[len(occupied) :] == 0).all()  # padding is absorbing
        assert (np.diff(occupied) >= 0).all()  # W never decreases
        fixed = occupied[TABLES.dof0[g - 1, occupied]]
        assert len(fixed) == len(set(fixed.tolist()))  # fixed positions never repeat
    np.testing.assert_array_equal(out.num_atoms.numpy(), TABLES.mult[G[:, None] - 1, W].sum(1))
    np.testing.assert_array_equal(out.num_sites.numpy(), (W > 0).sum(1))
    # fixed coordinates are the position's constants; all coordinates in [0, 1)
    XYZ = out.XYZ.double().numpy()
    assert ((XYZ >= 0) & (XYZ < 1)).all()
    for g, w, xyz in zip(G, W, XYZ):
        for site in np.nonzero(w)[0]:
            op0 = TABLES.op0[g - 1, w[site]]
            projected = apply_op(op0, xyz[site])
            delta = projected - xyz[site]
            np.testing.assert_allclose(delta - np.rint(delta), 0, atol=1e-5)


def test_sampled_structures_have_the_requested_space_group(model):
    groups = torch.tensor(SPREAD).repeat(2)
    out = model.sample(groups, seed=8)
    for g, w, a, xyz, lattice in zip(
        out.G.tolist(), out.W.numpy(), out.A.numpy(), out.XYZ.double().numpy(), out.lattice.double().numpy()
    ):
        positions, numbers = build_structure(g, w, a, xyz)
        assert len(numbers) == TABLES.mult[g - 1, w].sum()
        cell = (lattice_matrix(*lattice), positions, numbers)
        assert contains_group_operations(g, cell), f"space group {g} not found for W={w[w > 0]}"


def test_lattices_obey_crystal_system_constraints(model):
    groups = torch.tensor(SPREAD).repeat(2)
    out = model.sample(groups, seed=9)
    L, lattice, N = out.L.double(), out.lattice.double(), out.num_atoms.double()
    torch.testing.assert_close(lattice[:, :3], L[:, :3] * N[:, None] ** (1 / 3))
    torch.testing.assert_close(lattice[:, 3:], torch.rad2deg(L[:, 3:]))
    for g, (a, b, c, alpha, beta, gamma) in zip(out.G.tolist(), lattice.tolist()):
        if g >= 3:
            assert alpha == 90 and gamma in (90, 120)
        if g >= 16:
            assert beta == 90
        if 3 <= g <= 142 or g >= 195:
            assert gamma == 90
        if 143 <= g <= 194:
            assert gamma == 120 and a == b
        if g >= 75:
            assert a == b
        if g >= 195:
            assert a == c
        if g < 75:
            assert len({a, b, c}) == 3  # free lengths stay independent draws


def test_filling_every_site():
    """A model that never wants to stop: with reserve_lattice_site the last site stays empty; without it
    all n_max sites fill and the lattice comes from the last site's row, consistently with log_prob."""
    for reserve, expected_sites in ((True, 20), (False, 21)):
        model = sane_model(reserve_lattice_site=reserve)
        with torch.no_grad():
            model.head.weight[0] = 0
            model.head.bias[0] = -50.0  # letter 0 (stop) is never drawn unless forced
        out = model.sample(1, num_samples=4, seed=0)
        assert (out.num_sites == expected_sites).all()
        assert torch.isfinite(out.logp).all()
        with torch.no_grad():
            scored = model.log_prob(G=out.G, L=out.L, XYZ=out.XYZ, A=out.A, W=out.W)
        torch.testing.assert_close(out.logp, scored.logp, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Controls
# ---------------------------------------------------------------------------------------------------------


def test_forced_wyckoff_letters(model):
    out = model.sample(225, num_samples=5, wyckoff=["a", "b", "e"], seed=0)
    assert out.W[:, :4].tolist() == [[1, 2, 5, 0]] * 5
    torch.testing.assert_close(out.XYZ[:, 0], torch.zeros(5, 3))
    torch.testing.assert_close(out.XYZ[:, 1], torch.full((5, 3), 0.5))
    assert (out.XYZ[:, 2, 1:] == 0).all()  # 'e' = (x, 0, 0)
    assert (out.num_atoms == 4 + 4 + 24).all()
    per_sample = model.sample([225, 1], wyckoff=np.array([[1, 12, 0], [1, 1, 1]]), seed=0)
    assert per_sample.W[:, :4].tolist() == [[1, 12, 0, 0], [1, 1, 1, 0]]
    as_lists = model.sample([225, 1], wyckoff=[["a", "l"], ["a", "a", "a"]], seed=0)
    assert torch.equal(as_lists.W, per_sample.W)


@pytest.mark.parametrize(
    "letters, match",
    [
        (["a", "a"], "valid sequence"),
        (["m"], "valid sequence"),
        (["b", "a"], "valid sequence"),
        ([], "valid"),
        (["?"], "Wyckoff letter"),
    ],
)
def test_invalid_wyckoff_letters_raise(model, letters, match):
    with pytest.raises(ValueError, match=match):
        model.sample(225, wyckoff=letters)


def test_too_many_forced_sites_raise(model):
    with pytest.raises(ValueError, match="at most 20"):
        model.sample(1, wyckoff=["a"] * 21)


def test_element_masks(model):
    out = model.sample(SPREAD, elements=["Li", "O", 26], seed=0)
    occupied = out.A[out.W > 0]
    assert set(occupied.tolist()) <= {3, 8, 26}
    per_site = model.sample(62, num_samples=20, elements=[["Na"], ["Cl"], []], seed=0)  # site 3+: free
    assert (per_site.A[:, 0] == 11).all()
    assert ((per_site.A[:, 1] == 17) | (per_site.W[:, 1] == 0)).all()
    mask = np.zeros((model.config.n_max, 119), dtype=bool)
    mask[0, 29] = True
    boolean = model.sample(62, num_samples=4, elements=mask, seed=0)
    assert (boolean.A[:, 0] == 29).all()
    # an all-empty mask means unconstrained
    free = model.sample(SPREAD, seed=1)
    empty = model.sample(SPREAD, elements=np.zeros(119, dtype=bool), seed=1)
    assert torch.equal(free.A, empty.A) and torch.equal(free.W, empty.W)
    with pytest.raises(ValueError, match="unknown element"):
        model.sample(1, elements=["Xx"])


def test_top_p_and_temperature(model):
    groups = torch.tensor(SPREAD)
    greedy = model.sample(groups, top_p=1e-9, seed=0)
    with torch.no_grad():
        first = model.first_wyckoff_logprobs(groups).argmax(-1)
    assert torch.equal(greedy.W[:, 0], first)
    again = model.sample(groups, top_p=1e-9, seed=1)  # the first letter and element are the most likely ones
    assert torch.equal(greedy.W[:, 0], again.W[:, 0]) and torch.equal(greedy.A[:, 0], again.A[:, 0])
    cold = model.sample(groups, temperature=0.05, seed=0)
    assert torch.isfinite(cold.logp).all()
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        model.sample(1, top_p=0)


def test_bad_space_groups_raise(model):
    for bad in (0, 231, [1, 300]):
        with pytest.raises(ValueError, match="space groups"):
            model.sample(bad)
    with pytest.raises(ValueError, match="num_samples"):
        model.sample([1, 2, 3], num_samples=2)


def test_nan_logits_raise():
    model = sane_model()
    with torch.no_grad():
        model.head.bias[:28] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        model.sample(1, seed=0)


def test_von_mises_sampler_statistics():
    from scipy.special import i0e, i1e

    generator = torch.Generator().manual_seed(0)
    n = 40000
    for kappa, loc in ((4.0, 1.0), (0.5, -2.5), (300.0, 3.0)):
        theta = sample_von_mises(torch.full((n,), loc), torch.full((n,), kappa), generator)
        assert ((theta >= -math.pi) & (theta < math.pi)).all()
        resultant = torch.exp(1j * theta.to(torch.complex128)).mean()
        assert abs(resultant) == pytest.approx(i1e(kappa) / i0e(kappa), abs=0.01)
        assert math.remainder(math.atan2(resultant.imag, resultant.real) - loc, 2 * math.pi) == pytest.approx(
            0, abs=0.03
        )
    uniform = sample_von_mises(torch.zeros(n), torch.full((n,), 1e-9), generator)
    assert abs(torch.exp(1j * uniform.to(torch.complex128)).mean()) < 0.02
