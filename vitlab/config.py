"""The one configuration of a Vision Transformer.

Every architectural choice lives in :class:`ViTConfig`, a frozen dataclass. The defaults are ViT-B/16
at 224 px as in the paper (Dosovitskiy et al. 2020, Table 1); the named variants are in
``vitlab.registry``. A config round-trips through ``to_dict`` / ``from_dict`` (JSON-safe), which is
how checkpoints describe the model they hold.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from vitlab.errors import ConfigError

# What the head reads (VisionTransformer.forward_head):
POOLS = (
    "token",  # the class token (paper Eq. 4)
    "gap",  # the global average of the patch tokens (paper App. D.3)
    "map",  # multihead attention pooling with a learned query (big_vision's MAP head; SigLIP)
    "token_gap",  # [class token; mean patch token], 2D wide (the DINOv2 linear-probe input; transformers' Dinov2
                  # ForImageClassification)
    "distill",  # class and distillation tokens, each through its own head, logits averaged (DeiT at inference)
)
# paper: learned 1D; sincos2d as in big_vision / MoCo v3; sincos2d_mae with MAE's frequencies (AIMv2 native)
POS_EMBEDS = ("learned", "sincos2d", "sincos2d_mae", "none")
# Rotary position embeddings on the queries and keys (vitlab.layers.rope), with or without a pos_embed table:
ROPES = (
    "none",
    "axial",  # timm's vit_*_rope_* (Heo et al. 2024): integer coordinates, [x; y] frequencies, adjacent pairs
    "dinov3",  # DINOv3: patch centres in [-1, 1], [y; x] periods, pairs half a head apart
    "mixed",  # RoPE-Mixed (Heo et al. 2024): learned frequencies per block and head, angle = x f_x + y f_y
)
STEMS = ("patch", "conv")  # linear patch projection (Eq. 1) | conv stack (hybrid input, Sec. 3.1)
MLP_LAYERS = (
    "mlp",  # fc1 -> activation -> fc2 (paper Sec. 3.1)
    "swiglu",  # (SiLU(x W) * x V) W2, fc1 = [W; V] (Shazeer 2020; DINOv2 giant), vitlab.layers.SwiGLU; mlp_act unused
)
MLP_ACTS = (
    "gelu",  # exact erf GELU (the paper's code via flax is tanh, but timm, transformers and torchvision use erf)
    "gelu_tanh",  # the tanh approximation (flax's default: big_vision, SigLIP)
    "quick_gelu",  # x * sigmoid(1.702 x) (OpenAI CLIP)
    "relu",  # max(0, x), and
    "silu",  # x * sigmoid(x): what transformers' ViT family may be configured with (hidden_act)
)
# The paper's pre-logits layer's non-linearity (transformers' pooler_act; the paper's, and its default, is tanh):
REPRESENTATION_ACTS = ("tanh", "relu", "gelu", "silu")
# How a learned position table is resampled to another grid (paper Sec. 3.2), the way the weights' own code does it:
POS_RESAMPLES = (
    "bicubic_antialias",  # timm, OpenCLIP, transformers' Dinov2WithRegisters, original DINOv2 with registers
    "bicubic",  # transformers' ViT, DeiT, CLIP, SigLIP, ViT-MAE and Dinov2 (interpolate_pos_encoding)
    "bicubic_offset",  # original DINOv2: bicubic to the scale factor (n + 0.1) / n_old, no antialias
    "bicubic_align_corners",  # torchvision's interpolate_embeddings
)
# How the attention weights start (VisionTransformer.init_weights):
ATTN_INITS = (
    "trunc_normal",  # every Linear truncated normal, std 0.02 (the paper's code, timm)
    "mimetic",  # each head's W_q W_k^T ~ I and W_v W_proj ~ -I, as in trained ViTs (Trockman & Kolter 2023)
)


def _integer(value: Any, low: int) -> int | None:
    """``value`` as an int when it is an integer (not a bool) >= low, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        return None
    return int(value)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _img_size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)):
        pair = tuple(_integer(v, 1) for v in value)
        return pair if len(pair) == 2 and None not in pair else None  # type: ignore[return-value]
    side = _integer(value, 1)
    return None if side is None else (side, side)


def _blocks(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (list, tuple)):
        return None
    blocks = tuple(_integer(v, 0) for v in value)
    return None if None in blocks else blocks  # type: ignore[return-value]


def _positive(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _rate(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and 0.0 <= number < 1.0 else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


# What each field takes: (a function that returns the value normalised, or None when it is not valid; what it
# expects, for the message). The fields of a choice (pool, mlp_act, ...) are checked against their table above;
# the optional ones also take None (off).
_FIELDS: dict[str, tuple[Any, str]] = {
    "img_size": (_img_size, "an integer >= 1 or a (height, width) pair of them"),
    **{name: (lambda v: _integer(v, 1), "an integer >= 1")
       for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim")},
    "stem_depth": (lambda v: _integer(v, 0), "an integer >= 1"),  # 0 gets the conv stem's own message below
    **{name: (lambda v: _integer(v, 0), "an integer >= 0")
       for name in ("num_classes", "num_register_tokens", "stem_width", "attn_pool_heads", "attn_pool_mlp_dim")},
    **{name: (_bool, "true or false")
       for name in ("qkv_bias", "qk_norm", "patch_bias", "norm_pre", "class_token", "distill_token",
                    "no_embed_class", "fc_norm", "attn_inner_norm", "mlp_inner_norm", "final_norm",
                    "attn_pool_prefix", "attn_pool_mlp", "patch_norm", "proj_bias", "mlp_bias", "res_post_norm")},
    "layer_scale_init": (_positive, "a positive number, or None (no LayerScale)"),
    "norm_eps": (_positive, "a positive number"),
    "rope_theta": (_positive, "a positive number"),
    "rope_offset": (_number, "a number"),
    "rope_ref_grid": (_img_size, "a (height, width) pair of integers >= 1, or None"),
    "representation_size": (lambda v: _integer(v, 1), "an integer >= 1, or None (no pre-logits layer)"),
    **{name: (_rate, "a number in [0, 1)") for name in ("dropout", "attn_dropout", "drop_path_rate",
                                                        "patch_drop_rate")},
    "no_residual_blocks": (_blocks, "a list of block indices (integers >= 0)"),
}
_OPTIONAL = ("layer_scale_init", "representation_size", "rope_ref_grid")
_CHOICES = {
    "mlp_layer": MLP_LAYERS, "norm_layer": ("layernorm", "rmsnorm"), "rope": ROPES,
    "representation_act": REPRESENTATION_ACTS, "rope_axes": ("xy", "yx"),
    "pool": POOLS, "pos_embed": POS_EMBEDS, "stem": STEMS, "mlp_act": MLP_ACTS, "pos_resample": POS_RESAMPLES,
    "attn_init": ATTN_INITS,
}


def check_field(name: str, value: Any) -> Any:
    """One ViTConfig field on its own: its value normalised (img_size a pair, a number of a float field a float),
    or a one-line ConfigError naming the field, the value and what it takes. An unknown name is a ConfigError
    that lists the fields. What depends on other fields (heads dividing the width, ...) is checked by ViTConfig."""
    if name in _CHOICES:
        _check_choice(name, value, _CHOICES[name])
        return value
    if name not in _FIELDS:
        valid = ", ".join(f.name for f in dataclasses.fields(ViTConfig))
        raise ConfigError(f"{name!r} is not a ViTConfig field; the fields are {valid}")
    if value is None and name in _OPTIONAL:
        return None
    read, expected = _FIELDS[name]
    normalised = read(value)
    if normalised is None:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    return normalised


@dataclass(frozen=True)
class ViTConfig:
    # Input. img_size is the size the position embedding is laid out for; other sizes divisible by
    # patch_size still work at forward time (the table is resampled in 2D). It may leave a remainder (timm's
    # vit_so400m_patch14_siglip_384: 27 patches of 14 in 384 px): the patch convolution drops the last rows and
    # columns, as the weights' own code does, at that size only.
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16  # P; the paper's "/16"
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no head, forward returns the pooled features

    # Transformer size (paper Table 1: ViT-Base).
    embed_dim: int = 768  # D, "Hidden size"
    depth: int = 12  # L, "Layers"
    num_heads: int = 12  # "Heads"
    mlp_dim: int = 3072  # "MLP size" (4 D for every variant of Table 1); the gated hidden width with "swiglu"
    mlp_layer: str = "mlp"  # MLP_LAYERS: the paper's MLP, or SwiGLU (DINOv2 giant)
    norm_layer: str = "layernorm"  # every norm: "layernorm", or "rmsnorm" (no centring, no bias; AIMv2)
    patch_norm: bool = False  # a norm on each patch embedding, before the position embedding (AIMv2)
    proj_bias: bool = True  # the attention's output projection has a bias (AIMv2: none)
    mlp_bias: bool = True  # the MLP's layers have biases (AIMv2: none)
    # EVA-02's sub-LayerNorms: on the attention output before its projection, on the MLP's hidden layer (SwiGLU)
    attn_inner_norm: bool = False
    mlp_inner_norm: bool = False
    # Norm placement: False is the paper's pre-norm, x + f(norm(x)) (Eq. 2-3); True normalises each branch's output
    # instead, x + norm(f(x)) ("res-post-norm": Swin V2, Liu et al. 2022; timm's *_rpn_*, EVA-02 enormous)
    res_post_norm: bool = False
    qkv_bias: bool = True
    qk_norm: bool = False  # LayerNorm on q and k per head (Dehghani et al. 2023, ViT-22B)
    layer_scale_init: float | None = None  # LayerScale (Touvron et al. 2021, CaiT); None = off
    norm_eps: float = 1e-6  # official JAX code and timm; Hugging Face ViT defaults to 1e-12
    mlp_act: str = "gelu"
    patch_bias: bool = True  # False: the patch projection has no bias (OpenAI CLIP)
    norm_pre: bool = False  # a LayerNorm on the tokens before the first block (CLIP's ln_pre)

    # Tokens and pooling.
    pool: str = "token"
    class_token: bool = True  # a gap model may still carry (and ignore) a class token
    distill_token: bool = False  # DeiT's distillation token, after the class token (Touvron et al. 2021)
    num_register_tokens: int = 0  # learned extra tokens (Darcet et al. 2023), no position embedding
    pos_embed: str = "learned"
    # True: the position table has rows for the patches only, the class and distillation tokens get no position
    # (timm's no_embed_class: DeiT III, big_vision, timm's DINOv2 with registers).
    no_embed_class: bool = False
    pos_resample: str = "bicubic_antialias"
    rope: str = "none"  # ROPES: rotary position embeddings on q and k of the patch tokens
    # RoPE's base: axial frequencies theta^(-k/n), DINOv3's periods theta^(2k/(Dh/2)); mixed: the initial ones'
    rope_theta: float = 100.0
    rope_axes: str = "xy"  # axial: the channel blocks' order, [x; y] (timm's vit_*_rope_*, PE) or [y; x] (EVA-02)
    rope_ref_grid: tuple[int, int] | None = None  # axial: coordinates rescaled to this grid (EVA's ref_feat_shape)
    rope_offset: float = 0.0  # axial: the first patch's coordinate (Perception Encoder: 1)
    fc_norm: bool = False  # gap only: LayerNorm after pooling (timm) instead of on all tokens (paper)
    final_norm: bool = True  # False: no LayerNorm after the last block (Perception Encoder's spatial towers)
    attn_pool_heads: int = 0  # map: the attention pool's heads (0: num_heads; Perception Encoder: 8)
    attn_pool_prefix: bool = False  # map: the pool reads the class and register tokens too (timm's Eva, PE)
    attn_pool_mlp_dim: int = 0  # map: the pool's MLP width (0: mlp_dim; Perception Encoder gigantic: 4 D)
    attn_pool_mlp: bool = True  # map: a norm and a residual MLP after the pool's projection (AIMv2's pool: none)
    representation_size: int | None = None  # paper's pre-logits layer: Linear + tanh before the head
    representation_act: str = "tanh"  # REPRESENTATION_ACTS: its non-linearity (transformers' pooler_act)

    # Stem.
    stem: str = "patch"
    stem_width: int = 0  # conv stem: channels of its first conv (0 = embed_dim // 2^(n_convs - 1))
    # conv stem: 3x3 conv-BN-ReLU layers per stride-2 stage; 1 = Xiao et al.'s stem, more add stride-1 convs at the
    # stage's width (a deeper convolutional front, as the paper's hybrid takes ResNet stages)
    stem_depth: int = 1

    # Regularisation (paper App. B.1: dropout after every dense layer except qkv, and after adding
    # position embeddings; stochastic depth from DeiT).
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path_rate: float = 0.0
    # Training only: this fraction of the patch tokens is dropped at random, per image, after the position
    # embedding is added (FLIP, Li et al. 2023; timm's patch_drop_rate). Fewer tokens: faster steps.
    patch_drop_rate: float = 0.0

    # Initialisation only (the trained weights replace it): "mimetic" starts every head attending to the tokens most
    # like the query, which with sincos2d positions means its neighbours (a locality prior that stays a ViT).
    attn_init: str = "trunc_normal"

    # Ablation: blocks without their two residual connections (Raghu et al. 2021, Sec. 6), e.g. (3,).
    no_residual_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # each field's type and range, then how they fit together
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))
        for i in self.no_residual_blocks:
            if not 0 <= i < self.depth:
                raise ConfigError(f"no_residual_blocks: block {i} does not exist "
                                 f"(depth={self.depth}: 0..{self.depth - 1})")
        if self.no_residual_blocks and self.res_post_norm:
            raise ConfigError("no_residual_blocks (the skip-connection ablation) is written for pre-norm blocks; "
                              "set res_post_norm=False")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                "choose a head count that divides the width"
            )
        if self.pool == "token" and not self.class_token:
            raise ConfigError("pool='token' needs class_token=True; use pool='gap' for a model without one")
        if self.pool == "token_gap" and not self.class_token:
            raise ConfigError("pool='token_gap' needs class_token=True")
        if self.pool == "distill" and not (self.class_token and self.distill_token):
            raise ConfigError("pool='distill' needs class_token=True and distill_token=True")
        if self.distill_token and not self.class_token:
            raise ConfigError("distill_token=True needs class_token=True (DeiT's tokens are [class, distillation])")
        if self.fc_norm and self.pool != "gap":
            raise ConfigError("fc_norm=True only applies to pool='gap'")
        if self.representation_size and self.pool in ("map", "token_gap", "distill"):
            raise ConfigError(f"representation_size (the pre-logits layer) is not supported with pool={self.pool!r}")
        if self.pos_embed.startswith("sincos2d") and self.embed_dim % 4:
            raise ConfigError(f"pos_embed={self.pos_embed!r} needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.rope != "none" and (self.embed_dim // self.num_heads) % 4:
            raise ConfigError(f"rope={self.rope!r} turns channel pairs by x and y: the head width "
                              f"{self.embed_dim // self.num_heads} must be divisible by 4")
        if self.pool != "map" and (self.attn_pool_heads or self.attn_pool_prefix or self.attn_pool_mlp_dim
                                   or not self.attn_pool_mlp):
            raise ConfigError("attn_pool_heads, attn_pool_prefix, attn_pool_mlp_dim and attn_pool_mlp apply to "
                              "pool='map' only")
        if self.attn_pool_mlp_dim and not self.attn_pool_mlp:
            raise ConfigError("attn_pool_mlp_dim with attn_pool_mlp=False: the pool has no MLP to be that wide")
        if self.attn_pool_heads and self.embed_dim % self.attn_pool_heads:
            raise ConfigError(f"attn_pool_heads={self.attn_pool_heads} does not divide embed_dim={self.embed_dim}")
        if not self.final_norm and self.fc_norm:
            raise ConfigError("final_norm=False with fc_norm=True: fc_norm replaces the final norm already")
        if self.mlp_inner_norm and self.mlp_layer != "swiglu":
            raise ConfigError("mlp_inner_norm=True is EVA-02's norm inside its SwiGLU: it needs mlp_layer='swiglu'")
        if self.rope != "axial" and (self.rope_ref_grid is not None or self.rope_axes != "xy" or self.rope_offset):
            raise ConfigError("rope_ref_grid, rope_axes and rope_offset apply to rope='axial' only")
        if self.rope != "none" and self.patch_drop_rate:
            raise ConfigError("patch_drop_rate with rope is not supported (the dropped patches' rotations would have "
                              "to follow them); set patch_drop_rate=0")
        if self.stem_depth < 1 or (self.stem_depth > 1 and self.stem != "conv"):
            raise ConfigError(f"stem_depth={self.stem_depth}: convs per stage of the conv stem, >= 1, and only with "
                             f"stem='conv' (this config has stem={self.stem!r})")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"stem='conv' downsamples by stride-2 convs: patch_size must be a power of 2 >= 2, "
                             f"got {self.patch_size}")
        h, w = self.img_size
        if (h % self.patch_size or w % self.patch_size) and (self.stem != "patch" or min(h, w) < self.patch_size):
            raise ConfigError(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: [class, distillation, registers...]."""
        return int(self.class_token) + int(self.distill_token) + self.num_register_tokens

    @property
    def num_pos_prefix(self) -> int:
        """Rows of the learned position table before the grid: the class and distillation tokens' (registers and,
        with no_embed_class, every prefix token have none)."""
        return 0 if self.no_embed_class else int(self.class_token) + int(self.distill_token)

    @property
    def num_tokens(self) -> int:
        """N: tokens the encoder sees at img_size (patches + class + registers)."""
        return math.prod(self.grid_size) + self.num_prefix_tokens

    @property
    def conv_stem_channels(self) -> tuple[int, ...]:
        """Output channels of each 3x3 stride-2 conv of the conv stem (empty for stem='patch'): log2(P) convs, the
        first ``stem_width`` wide (default D / 2^(n_convs - 1), at least 8), doubling up to D (Xiao et al. 2021)."""
        if self.stem != "conv":
            return ()
        n_convs = self.patch_size.bit_length() - 1  # P = 2^n_convs
        width = self.stem_width or max(self.embed_dim // 2 ** (n_convs - 1), 8)
        return tuple(min(width * 2**i, self.embed_dim) for i in range(n_convs))

    @property
    def conv_stem_layers(self) -> tuple[tuple[int, int, int], ...]:
        """(c_in, c_out, stride) of every 3x3 conv of the conv stem, in order: per entry of
        :attr:`conv_stem_channels` one stride-2 conv, then ``stem_depth - 1`` stride-1 convs at that width."""
        layers, c_in = [], self.in_chans
        for c_out in self.conv_stem_channels:
            layers += [(c_in, c_out, 2)] + [(c_out, c_out, 1)] * (self.stem_depth - 1)
            c_in = c_out
        return tuple(layers)

    @property
    def num_features(self) -> int:
        """Width of the pooled features that the head reads."""
        if self.pool == "token_gap":
            return 2 * self.embed_dim
        return self.representation_size or self.embed_dim

    def replace(self, **changes: Any) -> ViTConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown ViTConfig field(s) {unknown}; valid fields: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        return cls().replace(**d)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}")
