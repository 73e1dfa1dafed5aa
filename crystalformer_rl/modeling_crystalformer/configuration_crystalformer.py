"""CrystalFormer configuration.

Defaults are the hyper-parameters of the published Alex-20 model (4,833,575 parameters). The reference
(JAX/haiku) argument names are accepted as aliases, so the keyword arguments of the reference's
``make_transformer`` can be passed as they are::

    CrystalFormerConfig(Nf=5, Kx=16, Kl=4, num_layers=2, num_heads=4, key_size=16, model_size=32, ...)
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..crystallography import DEFAULT_N_MAX, LATTICE_DIM, MAX_ATOMIC_NUMBER, TOKENS_PER_SITE, WYCK_TYPES


# Outputs per lattice mixture component: its weight, then the mean and standard deviation of each parameter.
LATTICE_OUTPUTS_PER_COMPONENT = 1 + 2 * LATTICE_DIM


@strict
class CrystalFormerConfig(PreTrainedConfig):
    r"""
    Configuration of [`CrystalFormerForCrystalGeneration`].

    A crystal is a sequence of `n_max` Wyckoff sites, each made of five tokens (Wyckoff letter W, element A,
    fractional coordinates X, Y, Z), conditioned on its space group G; the lattice is predicted at the first
    padding site.

    Args:
        n_max (`int`, defaults to 21): number of Wyckoff sites per crystal (the sequence has `5 * n_max` tokens).
        atom_types (`int`, defaults to 119): element vocabulary (0 = padding, then atomic numbers 1..118).
        wyck_types (`int`, defaults to 28): Wyckoff-letter vocabulary (0 = padding, 1..26 = a..z, 27 = A).
        num_fourier_frequencies (`int`, defaults to 5): `Nf`, Fourier frequencies embedding each coordinate.
        num_coord_components (`int`, defaults to 16): `Kx`, von Mises mixture components per coordinate.
        num_lattice_components (`int`, defaults to 4): `Kl`, lattice mixture components.
        h0_size (`int`, defaults to 256): hidden width of the MLP giving the first Wyckoff letter from the space
            group; 0 uses a plain learned (230, wyck_types) table instead.
        num_hidden_layers (`int`, defaults to 16): transformer blocks (`num_layers`).
        num_attention_heads (`int`, defaults to 16): attention heads (`num_heads`).
        head_dim (`int`, defaults to 64): per-head query/key/value size (`key_size`); the attention inner width
            `num_attention_heads * head_dim` need not equal `hidden_size`.
        hidden_size (`int`, defaults to 64): residual width (`model_size`).
        embed_size (`int`, defaults to 32): width of the space-group, Wyckoff and element embedding tables.
        widening_factor (`int`, defaults to 4): MLP hidden width is `widening_factor * hidden_size`.
        hidden_dropout (`float`, defaults to 0.1): dropout on the residual branches (`dropout_rate`), training only.
        attention_dropout (`float`, defaults to 0.1): dropout on attention probabilities (`attn_dropout`).
        lattice_sigma_min (`float`, defaults to 1e-3): floor added to the lattice standard deviations (`sigmamin`).
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        rope_theta (`float`, defaults to 10000.0): RoPE base.
        position_embedding_type (`str`, defaults to `"rope"`): `"rope"` (v0.4 models, e.g. Alex-20) or
            `"absolute"` (learned (5 * n_max, hidden_size) table added to the inputs, no RoPE: the legacy
            MP-20 checkpoint of CrystalFormer v0.3).
        initializer_range (`float`, defaults to 0.01): std of the truncated-normal initialisation (reference).
        reserve_lattice_site (`bool`, defaults to `True`): the lattice is read at the first padding site, so
            one of the `n_max` sites must stay empty. When True, the distribution of the last site's Wyckoff
            letter only allows padding (in the likelihood and in sampling), so a sampled sequence always has a
            lattice row. When False the reference behaviour is kept: a crystal filling all `n_max` sites reads
            its lattice from the last site's row (JAX clamps the out-of-range index), and the stop letter after
            `n_max - 1` sites keeps its learned probability. The two differ for crystals with `n_max - 1` or
            more sites; such crystals do occur in training data (MP-20 holds P1 crystals with 20 sites), and
            for them the default log-likelihood lacks the reference's log p(stop) term. `False` reproduces the
            reference exactly (use it for converted official checkpoints when exact likelihoods matter).
        lambda_w, lambda_a, lambda_l (`float`, defaults to 1.0): weights of the Wyckoff, element and lattice
            negative log-likelihoods in the training loss (the coordinate term has weight 1).
    """

    model_type = "crystalformer"
    attribute_map = {
        "Nf": "num_fourier_frequencies",
        "Kx": "num_coord_components",
        "Kl": "num_lattice_components",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "key_size": "head_dim",
        "model_size": "hidden_size",
        "dropout_rate": "hidden_dropout",
        "attn_dropout": "attention_dropout",
        "sigmamin": "lattice_sigma_min",
    }

    n_max: int = DEFAULT_N_MAX
    atom_types: int = MAX_ATOMIC_NUMBER + 1
    wyck_types: int = WYCK_TYPES
    num_fourier_frequencies: int = 5
    num_coord_components: int = 16
    num_lattice_components: int = 4
    h0_size: int = 256
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    head_dim: int = 64
    hidden_size: int = 64
    embed_size: int = 32
    widening_factor: int = 4
    hidden_dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    lattice_sigma_min: float = 1e-3
    layer_norm_eps: float = 1e-5
    rope_theta: float | int = 10000.0
    position_embedding_type: str = "rope"
    initializer_range: float = 0.01
    reserve_lattice_site: bool = True
    lambda_w: float | int = 1.0
    lambda_a: float | int = 1.0
    lambda_l: float | int = 1.0

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """`PreTrainedConfig.get_config_dict`, refusing the config of another kind of model (transformers only warns,
        then loads whatever the file holds into a CrystalFormer)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path}: config.json is for a model of type {model_type!r}, "
                f"not a CrystalFormer ({cls.model_type!r})"
            )
        return config_dict, kwargs

    # Derived sizes (reference §2.1).
    @property
    def coord_types(self) -> int:
        """Outputs per coordinate row: mixture logits, locations and concentrations."""
        return 3 * self.num_coord_components

    @property
    def lattice_types(self) -> int:
        """Outputs per lattice row: mixture logits, then means and standard deviations of the 6 parameters."""
        return self.num_lattice_components * LATTICE_OUTPUTS_PER_COMPONENT

    @property
    def output_size(self) -> int:
        return max(self.atom_types + self.lattice_types, self.coord_types, self.wyck_types)

    @property
    def intermediate_size(self) -> int:
        return self.widening_factor * self.hidden_size

    @property
    def max_positions(self) -> int:
        return TOKENS_PER_SITE * self.n_max

    def validate_architecture(self):
        super().validate_architecture()
        if self.position_embedding_type not in ("rope", "absolute"):
            raise ValueError(
                f"position_embedding_type must be 'rope' or 'absolute', got {self.position_embedding_type!r}"
            )
        if self.wyck_types != WYCK_TYPES:
            raise ValueError(
                f"wyck_types must be {WYCK_TYPES} (the Wyckoff tables cover letters a..z, A), got {self.wyck_types}"
            )
        if self.atom_types < 2:
            raise ValueError(f"atom_types must be at least 2, got {self.atom_types}")
        if self.n_max < 2:
            raise ValueError(f"n_max must be at least 2 (one site plus the lattice site), got {self.n_max}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")


__all__ = ["CrystalFormerConfig"]
