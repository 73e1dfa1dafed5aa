"""CrystalFormer model: parity with the JAX reference, masks, causality, loss, serialisation."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig, AutoModel  # noqa: E402

from crystalformer_rl.modeling_crystalformer import (  # noqa: E402
    CrystalFormerConfig,
    CrystalFormerForCrystalGeneration,
)
from crystalformer_rl.modeling_crystalformer.convert_crystalformer_checkpoint import (  # noqa: E402
    load_crystalformer_checkpoint,
)
from crystalformer_rl.wyckoff import WyckoffTables  # noqa: E402


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY = SHARED / "fixtures" / "reference_parity"
needs_parity_fixture = pytest.mark.skipif(not (PARITY / "checkpoint.pkl").exists(), reason="no ../shared fixture")
TERMS = ("logp_w", "logp_a", "logp_xyz", "logp_l")


def tiny_config(**kwargs):
    defaults = {"num_layers": 2, "num_heads": 2, "key_size": 8, "model_size": 16, "embed_size": 8, "h0_size": 16}
    return CrystalFormerConfig(**{**defaults, **kwargs})


def random_model(seed=0, std=0.3, dtype=torch.float64, **kwargs):
    """A tiny model with weights far from the (near-zero) initialisation, so that every input matters."""
    torch.manual_seed(seed)
    model = CrystalFormerForCrystalGeneration(tiny_config(**kwargs)).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name and "final_ln" not in name:
                param.normal_(0.0, std)
    return model


def parity_tokens():
    tokens = np.load(PARITY / "tokens.npz")
    return {key: tokens[key] for key in ("G", "L", "XYZ", "A", "W")}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(PARITY / "outputs.npz"))


@pytest.fixture(scope="module")
def parity_models():
    config = json.loads((PARITY / "config.json").read_text())
    return {
        dtype: load_crystalformer_checkpoint(PARITY / "checkpoint.pkl", config=config, dtype=dtype)
        for dtype in (torch.float64, torch.float32)
    }


# ---------------------------------------------------------------------------------------------------------
# Size
# ---------------------------------------------------------------------------------------------------------


def test_default_config_is_alex20_with_paper_parameter_count():
    config = CrystalFormerConfig()
    assert (config.n_max, config.num_layers, config.num_heads, config.key_size, config.model_size) == (
        21,
        16,
        16,
        64,
        64,
    )
    assert (config.Nf, config.Kx, config.Kl, config.h0_size, config.embed_size) == (5, 16, 4, 256, 32)
    assert config.output_size == 171
    with torch.device("meta"):  # shapes only, no initialisation
        model = CrystalFormerForCrystalGeneration(config)
    assert model.num_parameters() == 4_833_575
    assert not any("symmetry" in key for key in model.state_dict())  # tables are non-persistent buffers


def test_absolute_position_variant_parameter_count():
    with torch.device("meta"):
        model = CrystalFormerForCrystalGeneration(CrystalFormerConfig(position_embedding_type="absolute"))
    assert model.num_parameters() == 4_833_575 + 105 * 64


# ---------------------------------------------------------------------------------------------------------
# Parity with the reference (JAX) outputs
# ---------------------------------------------------------------------------------------------------------


@needs_parity_fixture
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_parity_with_reference(parity_models, reference, dtype, tolerance):
    model = parity_models[dtype]
    with torch.no_grad():
        out = model.log_prob(**parity_tokens())
    h = out.logits.double().numpy()
    ref = reference["h"]
    assert h.shape == ref.shape == (32, 106, 171)

    # The reference masks with additive -1e10 constants; we use -inf. Same entries must be masked.
    ref_masked = ref < -1e9
    assert ref_masked.any()
    np.testing.assert_array_equal(np.isneginf(h), ref_masked)
    assert np.isfinite(h[~ref_masked]).all()
    error = np.abs(h[~ref_masked] - ref[~ref_masked]) / np.maximum(np.abs(ref[~ref_masked]), 1.0)
    assert error.max() < tolerance

    for term in TERMS:
        ours, theirs = getattr(out, term).double().numpy(), reference[term]
        np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=0)
    np.testing.assert_allclose(out.logp.double().numpy(), sum(reference[t] for t in TERMS), rtol=tolerance)


@needs_parity_fixture
def test_parity_with_shorter_padding(parity_models, reference):
    """The collator pads to the longest crystal + 1 site: rows and log-likelihoods do not change; with no
    padding site at all one is appended internally."""
    model = parity_models[torch.float64]
    tokens = parity_tokens()
    with torch.no_grad():
        full = model.log_prob(**tokens)
    longest = int((tokens["W"] > 0).sum(1).max())
    for n in (longest + 1, longest):
        short = {k: (v[:, :n] if k in ("W", "A", "XYZ") else v) for k, v in tokens.items()}
        with torch.no_grad():
            out = model.log_prob(**short)
        assert out.logits.shape[1] == 5 * (longest + 1) + 1
        for term in TERMS:
            torch.testing.assert_close(getattr(out, term), getattr(full, term), rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(getattr(out, term).numpy(), reference[term], rtol=1e-6)
        rows = 5 * (longest + 1)
        ours, ref = out.logits[:, :rows], full.logits[:, :rows]
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        torch.testing.assert_close(ours.nan_to_num(neginf=0), ref.nan_to_num(neginf=0), rtol=1e-12, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# Causality and masks
# ---------------------------------------------------------------------------------------------------------


def example_batch():
    """Three valid crystals (padded to 6 sites)."""
    W = torch.tensor([[1, 3, 5, 5, 0, 0], [2, 0, 0, 0, 0, 0], [1, 4, 6, 6, 7, 0]])
    A = torch.tensor([[8, 26, 8, 1, 0, 0], [3, 0, 0, 0, 0, 0], [11, 17, 8, 8, 9, 0]])
    G = torch.tensor([225, 1, 62])
    XYZ = torch.rand(3, 6, 3, generator=torch.Generator().manual_seed(0)) * (W > 0)[..., None]
    L = torch.tensor(
        [[2.0, 2.0, 2.0, 1.5708, 1.5708, 1.5708], [3.0, 3.1, 3.2, 1.4, 1.5, 1.6], [2.5, 3.5, 4.5] + [1.5708] * 3]
    )
    return {"G": G, "W": W, "A": A, "XYZ": XYZ.double(), "L": L.double()}


def test_causality_row_r_depends_only_on_positions_before_r():
    """Output row r (= the trunk at position r - 1, plus masks from earlier letters) must not change when the
    input at position p >= r changes; the trunk output at p itself must."""
    model = random_model()
    batch = example_batch()
    with torch.no_grad():
        base = model(**batch)
    n = batch["W"].shape[1]
    for position in range(5 * n):
        site, kind = divmod(position, 5)
        perturbed = {k: v.clone() for k, v in batch.items()}
        if kind == 0:
            perturbed["W"][:, site] = torch.tensor([12, 1, 8])  # still letters of each group
        elif kind == 1:
            perturbed["A"][:, site] = 50
        else:
            perturbed["XYZ"][:, site, kind - 2] += 0.137
        with torch.no_grad():
            out = model(**perturbed)
        before, after = base.logits[:, : position + 1], out.logits[:, : position + 1]
        assert torch.equal(torch.isinf(before), torch.isinf(after))
        # (equal up to float64 round-off: an extra padding site may be appended, changing the kernels' blocking)
        torch.testing.assert_close(before.nan_to_num(neginf=0), after.nan_to_num(neginf=0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            base.last_hidden_state[:, :position], out.last_hidden_state[:, :position], rtol=1e-12, atol=1e-12
        )
        assert not torch.isclose(base.last_hidden_state[:, position], out.last_hidden_state[:, position]).all(-1).any()


def test_output_masks_follow_the_wyckoff_rules():
    model = random_model(reserve_lattice_site=True)
    tables = WyckoffTables.load()
    torch.manual_seed(1)
    batch, n = 64, model.config.n_max
    G = torch.randint(1, 231, (batch,))
    W = torch.zeros(batch, n, dtype=torch.long)
    for row in range(batch):  # random letters (not necessarily a valid sequence: the masks are per row)
        length = int(torch.randint(1, n, ()))
        W[row, :length] = torch.randint(1, int(tables.wmax[G[row] - 1]) + 1, (length,)).sort().values
    A = torch.where(W > 0, torch.randint(1, 119, W.shape), 0)
    XYZ = torch.rand(batch, n, 3, dtype=torch.float64)
    with torch.no_grad():
        rows = model(G=G, W=W, A=A, XYZ=XYZ).logits
    letters = torch.arange(28)
    for row in range(batch):
        g = int(G[row])
        wmax = int(tables.wmax[g - 1])
        first = torch.isfinite(rows[row, 0, :28])
        assert torch.equal(first, (letters >= 1) & (letters <= wmax))
        for site in range(n):
            w = int(W[row, site])
            atoms = torch.isfinite(rows[row, 5 * site + 1, :119])
            if w == 0:  # padding: A = 0 for sure
                assert atoms.tolist() == [True] + [False] * 118
                assert rows[row, 5 * site + 1, 0] == 0
            else:
                assert not atoms[0] and atoms[1:].all()
            nxt = torch.isfinite(rows[row, 5 * site + 5, :28])
            if w == 0:  # padding is absorbing
                assert nxt.tolist() == [True] + [False] * 27
                assert rows[row, 5 * site + 5, 0] == 0
            elif site + 1 == n - 1:  # the last site must stay empty (reserve_lattice_site)
                assert nxt.tolist() == [True] + [False] * 27
            else:
                lowest = w + 1 if tables.dof0[g - 1, w] else w
                assert torch.equal(nxt, (letters == 0) | ((letters >= lowest) & (letters <= wmax)))
            # unused columns are zero
            assert (rows[row, 5 * site + 5, 28:] == 0).all()
            assert (rows[row, 5 * site + 2 : 5 * site + 5, 48:] == 0).all()


def test_reserve_lattice_site_off_keeps_reference_last_row():
    model = random_model(reserve_lattice_site=False)
    batch = {k: v[:1] for k, v in example_batch().items()}
    n = model.config.n_max
    W = torch.zeros(1, n, dtype=torch.long)
    W[0, :] = 12  # Fm-3m general position (letter l), repeated on every site
    batch.update(G=torch.tensor([225]), W=W, A=torch.full((1, n), 6), XYZ=torch.rand(1, n, 3, dtype=torch.float64))
    with torch.no_grad():
        out = model.log_prob(**batch)
    assert torch.isfinite(out.logp).all()  # lattice read from the last site's row (JAX clamps the index)
    with torch.no_grad():
        out = random_model(reserve_lattice_site=True).log_prob(**batch)
    assert torch.isneginf(out.logp_w).all()  # 21 occupied sites are impossible when the last site is reserved


# ---------------------------------------------------------------------------------------------------------
# Likelihood, loss, inputs
# ---------------------------------------------------------------------------------------------------------


def test_loss_combines_terms_with_lambdas_and_backpropagates():
    model = random_model(lambda_w=0.5, lambda_a=2.0, lambda_l=3.0, std=0.05)
    model.train()
    batch = example_batch()
    out = model(**batch)
    for term, loss in (("logp_w", "loss_w"), ("logp_a", "loss_a"), ("logp_xyz", "loss_xyz"), ("logp_l", "loss_l")):
        assert getattr(out, term).shape == (3,)
        torch.testing.assert_close(getattr(out, loss), -getattr(out, term).mean())
    expected = out.loss_xyz + 2.0 * out.loss_a + 0.5 * out.loss_w + 3.0 * out.loss_l
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logp, out.logp_w + out.logp_a + out.logp_xyz + out.logp_l)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_log_likelihood_terms_match_a_direct_computation():
    """logp_xyz scores the free and dependent coordinates only (fc_mask), logp_l the free lattice parameters of
    the crystal system at the first padding site, with per-dimension mixtures."""
    from scipy.special import i0e, logsumexp

    model = random_model()
    batch = example_batch()
    batch["G"][1] = 221  # add a 'x,x,x'-type (dependent) position: Pm-3m 'g' = (x, x, x)
    batch["W"][1, :2] = torch.tensor([1, 7])
    batch["A"][1, :2] = torch.tensor([3, 8])
    tables = WyckoffTables.load()
    assert tables.fc_mask[220, 7].tolist() == [True, True, True] and not tables.dof0[220, 7]
    with torch.no_grad():
        out = model.log_prob(**batch)
    h = out.logits.numpy()
    free = {
        1: [1] * 6,
        3: [1, 1, 1, 0, 1, 0],
        16: [1, 1, 1, 0, 0, 0],
        75: [1, 0, 1, 0, 0, 0],
        143: [1, 0, 1, 0, 0, 0],
        195: [1, 0, 0, 0, 0, 0],
    }
    for b in range(3):
        g, W, A, XYZ, L = (batch[k][b].numpy() for k in ("G", "W", "A", "XYZ", "L"))
        expected_xyz = 0.0
        for site in range(len(W)):
            for axis in range(3):
                if W[site] > 0 and tables.fc_mask[g - 1, W[site], axis]:
                    row = h[b, 5 * site + 2 + axis]
                    logw, loc, kappa = row[:16], row[16:32], row[32:48]
                    theta = 2 * np.pi * (XYZ[site, axis] - 0.5)
                    log_vm = kappa * (np.cos(theta - loc) - 1) - np.log(2 * np.pi) - np.log(i0e(kappa))
                    expected_xyz += logsumexp(logw + log_vm)
        assert out.logp_xyz[b].item() == pytest.approx(expected_xyz, rel=1e-10)

        row = h[b, 1 + 5 * int((A > 0).sum()), 119:]
        logw, mean, std = row[:4], row[4:28].reshape(4, 6), row[28:52].reshape(4, 6)
        mask = [m for start, m in sorted(free.items()) if g >= start][-1]
        per_dim = logsumexp(
            logw[:, None] - 0.5 * ((L - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), axis=0
        )
        assert out.logp_l[b].item() == pytest.approx(float((per_dim * mask).sum()), rel=1e-10)


def test_input_validation():
    model = random_model()
    batch = example_batch()
    for bad in ({"G": torch.tensor([0, 1, 2])}, {"G": torch.tensor([231, 1, 2])}):
        with pytest.raises(ValueError, match="space groups"):
            model(**{**batch, **bad})
    with pytest.raises(ValueError, match="Wyckoff"):
        model(**{**batch, "W": batch["W"] + 30})
    with pytest.raises(ValueError, match="atom types"):
        model(**{**batch, "A": batch["A"] + 200})
    with pytest.raises(ValueError, match="XYZ"):
        model(**{**batch, "XYZ": batch["XYZ"][:, :, :2]})
    with pytest.raises(ValueError, match="n_max"):
        model(
            G=batch["G"],
            W=torch.ones(3, 22, dtype=torch.long),
            A=torch.ones(3, 22, dtype=torch.long),
            XYZ=torch.zeros(3, 22, 3),
        )


def test_accepts_numpy_inputs():
    model = random_model()
    batch = example_batch()
    with torch.no_grad():
        a = model.log_prob(**batch).logp
        b = model.log_prob(**{k: v.numpy() for k, v in batch.items()}).logp
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------------------


def test_save_pretrained_roundtrip_safetensors_and_automodel(tmp_path):
    model = random_model(dtype=torch.float32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "crystalformer"

    from safetensors.torch import load_file

    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    assert not any("symmetry" in key for key in saved)

    for loaded in (CrystalFormerForCrystalGeneration.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, CrystalFormerForCrystalGeneration)
        assert isinstance(AutoConfig.from_pretrained(tmp_path), CrystalFormerConfig)
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
        for name, buffer in model.symmetry.named_buffers():  # non-persistent tables rebuilt on load
            assert torch.equal(buffer, getattr(loaded.symmetry, name)), name
        batch = {k: (v.float() if v.is_floating_point() else v) for k, v in example_batch().items()}
        with torch.no_grad():
            torch.testing.assert_close(loaded.log_prob(**batch).logp, model.log_prob(**batch).logp)


def test_reference_names_are_config_aliases():
    config = CrystalFormerConfig(
        Nf=3, Kx=8, Kl=2, num_layers=1, num_heads=2, key_size=4, model_size=8, dropout_rate=0.2
    )
    assert (config.num_fourier_frequencies, config.num_coord_components, config.num_lattice_components) == (3, 8, 2)
    assert (config.num_hidden_layers, config.num_attention_heads, config.head_dim, config.hidden_size) == (1, 2, 4, 8)
    assert config.hidden_dropout == 0.2
    with pytest.raises(Exception, match="position_embedding_type"):
        CrystalFormerConfig(position_embedding_type="alibi")


def test_loss_only_path_equals_the_output_rows_path():
    """`output_logits=False` (the trainers' path) gives the same log-likelihood terms, loss and gradients as
    the path that assembles the reference's output rows, and skips the rows."""
    batch = example_batch()
    grads = []
    for output_logits in (True, False):
        model = random_model()
        out = model(**batch, output_logits=output_logits)
        assert (out.logits is None) != output_logits
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if output_logits:
            reference = {t: getattr(out, t).detach() for t in (*TERMS, "logp", "loss")}
        else:
            for term, value in reference.items():
                torch.testing.assert_close(getattr(out, term).detach(), value, rtol=1e-12, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-10, atol=1e-12)
