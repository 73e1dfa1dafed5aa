"""MCMC on CrystalFormer's posterior (`model.mcmc`, `crystalformer-rl mcmc`).

The statistical tests use a tiny model with a distribution we control: its head's bias allows four elements (O, F, Ne,
Na; every other element has probability ~e^-30) with unequal, context-dependent probabilities, and concentrates
the coordinates (κ ≈ 3.5), so that an accept-everything chain (uniform elements, uniform coordinates) and a
too-cold one (target p² instead of p) both move visibly away from the model's distribution within 15 sweeps. Each
statistic is a per-crystal mean compared between chain end states and independent direct samples by a two-sample z
score (per crystal, so correlations between the sites of one crystal are accounted for). Seeds are fixed, so the
tests are deterministic; with the correct rule every |z| is below 2 (measured), with a broken one some |z| is above 6.
"""

import json
import math
import types

import numpy as np
import pytest
import torch

from crystalformer_rl.commands import main
from crystalformer_rl.modeling_crystalformer import CrystalMCMCOutput
from crystalformer_rl.modeling_crystalformer import mcmc_crystalformer as mcmc_module
from tests.helpers.rl_toy import tiny_model


ELEMENTS = [8, 9, 10, 11]  # O, F, Ne, Na: the tiny model's only likely elements
SYMBOLS = ["O", "F", "Ne", "Na"]
CENTRE = 0.725  # where its coordinates concentrate (the von Mises location -30 rad, as a fraction)
LIMIT = 4.5  # |z| above this: the chain's states are not the model's


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=3, n_max=6, initializer_range=0.15, num_layers=1).eval()
    with torch.no_grad():
        # columns 8..11 are elements O..Na, the Wyckoff letters h..k (P-1: h, i) and the coordinates' concentrations
        m.head.bias[1 : m.config.atom_types] = -30.0
        m.head.bias[8:12] = torch.tensor([3.5, 2.5, 1.5, 0.5])
    return m


def statistics(out) -> np.ndarray:
    """Per crystal (P-1): the fraction of its sites holding each element, and the mean cos 2π(t - CENTRE) of the
    free coordinates of its general-position sites (NaN without one)."""
    occupied = (out.A > 0).sum(1, keepdim=True)
    fractions = torch.stack([(out.A == z).sum(1) for z in ELEMENTS], 1).double() / occupied
    general = out.W == 9  # P-1's 2i: x, y, z all free
    cos = torch.cos(2 * math.pi * (out.XYZ.double() - CENTRE)) * general[..., None]
    coordinate = cos.sum((1, 2)) / (3 * general.sum(1))
    return torch.cat([fractions, coordinate[:, None]], 1).numpy()


def z_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    scores = []
    for x, y in zip(a.T, b.T):
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        scores.append((x.mean() - y.mean()) / math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)))
    return np.abs(scores)


@pytest.fixture(scope="module")
def direct(model):
    """Independent direct samples (the reference) and the chains' starting states, all from `model.sample`."""
    return statistics(model.sample(2, 2000, seed=11)), model.sample(2, 600, seed=12)


@pytest.mark.parametrize("rule", ["metropolis", "accept_everything", "target_squared"])
def test_without_reward_chains_leave_the_model_distribution_invariant(model, direct, rule, monkeypatch):
    """Chains started from the model's samples (P-1, up to 5 sites) stay distributed as its samples: element
    frequencies and a coordinate statistic of the end states match independent direct samples (|z| < 4.5; measured
    < 2). The negative controls break the acceptance rule as this test must notice: accepting every proposal, or
    accepting with exp(2Δ) (the target p² instead of p), each gives some |z| > 6 (measured: 59 and 6.6)."""
    reference, start = direct
    if rule == "accept_everything":
        monkeypatch.setattr(
            mcmc_module, "metropolis_accept", lambda log_ratio, u: torch.ones_like(u, dtype=torch.bool)
        )
    elif rule == "target_squared":
        monkeypatch.setattr(mcmc_module, "metropolis_accept", lambda log_ratio, u: torch.log(u) < 2 * log_ratio)
    out = model.mcmc(initial=start, nsweeps=15, mcmc_width=0.1, seed=5, elements=SYMBOLS)
    scores = z_scores(statistics(out), reference)
    if rule == "metropolis":
        assert 0.2 < float(out.acceptance.mean()) < 0.8  # the chains do move
        assert scores.max() < LIMIT, scores
    else:
        assert scores.max() > LIMIT, scores  # the test above would fail


def test_the_reference_target_drifts_where_a_coordinate_is_tied(model):
    """In P4_1 2_1 2 the tiny model makes one-site crystals, half at 4a = (x, x, 0). The sampler draws x and copies
    it to y; the reference's target (`log_prob`) also scores y. With the default target (the sampler's density) the
    chains keep x distributed as the model's samples; with `score_dependent_coordinates=True` they do not."""

    def x_statistic(out):
        on_a = out.W[:, 0] == 1
        return torch.cos(2 * math.pi * (out.XYZ[on_a, 0, 0].double() - CENTRE)).numpy()[:, None]

    reference, start = x_statistic(model.sample(92, 2000, seed=11)), model.sample(92, 600, seed=12)
    exact = model.mcmc(initial=start, nsweeps=15, seed=5, elements=SYMBOLS)
    tied = model.mcmc(initial=start, nsweeps=15, seed=5, elements=SYMBOLS, score_dependent_coordinates=True)
    on_a = exact.W[:, 0] == 1
    assert torch.equal(exact.XYZ[on_a, 0, 0], exact.XYZ[on_a, 0, 1]) and on_a.sum() > 200  # y follows x
    assert z_scores(x_statistic(exact), reference).max() < LIMIT
    assert z_scores(x_statistic(tied), reference).max() > LIMIT  # measured 5.9


def test_a_reward_for_one_element_pulls_the_chains_to_it(model, direct):
    """r = the fraction of a crystal's sites holding F, τ = 0.05: the chains end mostly all-F; the reward trace
    rises; the output carries the diagnostics of every chain and sweep."""
    _, start = direct
    start = {k: getattr(start, k)[:200] for k in ("G", "W", "A", "XYZ", "L")}

    def fluorine(batch):
        return ((batch.A == 9).sum(1) / (batch.A > 0).sum(1)).tolist()

    out = model.mcmc(initial=start, reward=fluorine, temperature=0.05, nsweeps=12, seed=1, elements=SYMBOLS)
    assert isinstance(out, CrystalMCMCOutput)
    assert out.acceptance.shape == (200, 12) and out.lattice_accepted.shape == (200, 12)
    assert out.logp_trace.shape == out.reward_trace.shape == (200, 13)
    before, after = out.reward_trace[:, 0].mean().item(), out.reward.mean().item()
    assert before < 0.4 and after > 0.85, (before, after)  # F is proposed a quarter of the time
    assert torch.equal(out.reward, out.reward_trace[:, -1])
    assert out.lattice_accepted.all()  # r does not depend on the lattice: a lattice move is always accepted
    assert torch.allclose(out.logp, model.log_prob(out.G, out.L, out.XYZ, out.A, out.W).logp)


def test_moves_keep_space_group_letters_and_lattice(model, direct):
    """During the moves G, W and L never change (every crystal the reward sees before the lattice move has its
    chain's G, W and starting L); coordinates stay on their Wyckoff positions (op0 maps them to themselves); without
    a reward the lattice is drawn from the model at the end."""
    _, start = direct
    n = 50
    start = {k: getattr(start, k)[:n].clone() for k in ("G", "W", "A", "XYZ", "L")}
    start["L"][:, 0] = 1 + 0.01 * torch.arange(n)  # a chain's id, readable from any crystal the reward is given
    seen = []

    def spy(batch):
        seen.append((batch.G.clone(), batch.W.clone(), batch.L.clone()))
        return [0.0] * len(batch.G)

    out = model.mcmc(initial=start, reward=spy, nsweeps=1, seed=0)
    for G, W, L in seen[:-1]:  # the last call scores the lattice proposals
        chain = torch.round((L[:, 0] - 1) / 0.01).long()
        assert torch.equal(G, start["G"][chain]) and torch.equal(W, start["W"][chain])
        assert torch.equal(L, start["L"][chain])
    assert len(seen) == 2 + int((start["W"] > 0).sum(1).max())  # start, one call per site, the lattice move
    assert torch.equal(out.G, start["G"]) and torch.equal(out.W, start["W"])

    plain = model.mcmc(initial=start, nsweeps=3, seed=0)
    assert torch.equal(plain.G, start["G"]) and torch.equal(plain.W, start["W"])
    assert not torch.equal(plain.L, start["L"])  # redrawn from the model
    op0 = model.symmetry.op0[plain.G[:, None] - 1, plain.W]  # (B, n, 3, 4)
    mapped = torch.einsum("bnij,bnj->bni", op0[..., :3], plain.XYZ.double()) + op0[..., 3]
    assert torch.allclose(
        torch.remainder(mapped - plain.XYZ.double() + 0.5, 1) - 0.5, torch.zeros((), dtype=torch.float64), atol=1e-6
    )
    fixed = plain.W.clamp(max=8) == plain.W  # P-1's 1a..1h are inversion centres: never move
    assert torch.equal(plain.XYZ[fixed & (plain.W > 0)], start["XYZ"][fixed & (start["W"] > 0)])


def test_a_seed_gives_the_same_chains(model):
    first = model.mcmc(2, 20, nsweeps=3, seed=4, elements=SYMBOLS)
    again = model.mcmc(2, 20, nsweeps=3, seed=4, elements=SYMBOLS)
    other = model.mcmc(2, 20, nsweeps=3, seed=5, elements=SYMBOLS)
    for key in ("A", "XYZ", "L", "acceptance", "logp_trace"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first.XYZ, other.XYZ)


def test_schedules_and_bad_arguments(model):
    out = model.mcmc(2, 4, nsweeps=3, temperature=[2.0, 1.0, 0.5], inverse_temperature=[0.0, 0.5, 1.0], seed=0)
    assert out.temperature.tolist() == [2.0, 1.0, 0.5] and out.inverse_temperature.tolist() == [0.0, 0.5, 1.0]
    assert out.acceptance[:, 0].min() == 1  # β = 0: a flat target, every move accepted
    with pytest.raises(ValueError, match="mcmc_width"):
        model.mcmc(2, 2, mcmc_width=0)
    with pytest.raises(ValueError, match="one per sweep"):
        model.mcmc(2, 2, nsweeps=3, temperature=[1.0, 0.5])
    with pytest.raises(ValueError, match="temperature: -1"):
        model.mcmc(2, 2, temperature=-1)
    with pytest.raises(ValueError, match="space group"):
        model.mcmc()


# ----------------------------------------------------------------------------------------------- command line
def test_cli_writes_samples_cifs_and_diagnostics(tmp_path, capsys):
    out = tmp_path / "chains"
    argv = ["mcmc", "-g", "225", "-n", "4", "--nsweeps", "2", "--reward", "tests.helpers.rl_toy:anion_fraction"]
    argv += ["--temperature", "0.5", "--temperature_start", "2", "-o", str(out)]
    assert main(argv) == 0
    assert (out / "samples.csv").exists() and len(list((out / "cifs").glob("*.cif"))) >= 1
    rows = (out / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("id,G,num_sites,tokens") and len(rows) == 5 and ",225," in rows[1]
    diagnostics = json.loads((out / "mcmc.json").read_text())
    assert diagnostics["num_chains"] == 4 and diagnostics["temperature"] == [2.0, 0.5]
    assert len(diagnostics["acceptance_per_sweep"]) == 2 and len(diagnostics["reward_mean"]) == 3
    assert [c["id"] for c in diagnostics["chains"]] == [f"sample-{i:06d}" for i in range(4)]
    capsys.readouterr()
    assert main(argv) == 2  # an earlier run is refused without --overwrite
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--overwrite" in lines[0]


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--mcmc_width", "0"], "--mcmc_width: 0"),
        (["--nsweeps", "0"], "--nsweeps: 0"),
        (["--temperature", "-1"], "--temperature: -1"),
        (["-e", "Xx"], "'Xx'"),
        (["-w", "a"], "--space_group"),
        (["-g", "2", "--reward", "no_such_reward"], "--reward no_such_reward"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(options, fragment, tmp_path, capsys):
    code = main(["mcmc", *options, "-n", "2", "-o", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("crystalformer-rl mcmc: error:") and fragment in lines[0], lines[0]


def test_mcmc_rewards_take_trl_style_arguments_and_stateful_ones_are_refused():
    """A README-style reward ``f(prompts, completions, completion_ids, **kw)`` works; a reward that remembers what it
    scored (a ``state_dict``, as the S.U.N. reward's archive) would give the chain a moving target and is refused."""
    from crystalformer_rl.sampling import crystal_batch_reward

    def my_reward(prompts, completions, completion_ids, **kwargs):
        return [float(g) for g in prompts]

    class Remembers:
        def __call__(self, prompts, completions, **kwargs):
            return [0.0] * len(prompts)

        def state_dict(self):
            return {}

    batch = types.SimpleNamespace(
        G=np.array([225, 2]),
        W=np.ones((2, 1), int),
        A=np.array([[11], [14]]),
        XYZ=np.zeros((2, 1, 3)),
        L=np.ones((2, 6)),
    )
    assert crystal_batch_reward(my_reward)(batch) == [225.0, 2.0]
    with pytest.raises(ValueError, match="stateful"):
        crystal_batch_reward(Remembers())
