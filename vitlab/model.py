"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words"), to read beside the paper.

Shape letters, used in every shape comment below:
    B batch, C input channels, H x W image, P patch size, h x w patch grid (h = H / P, w = W / P),
    N tokens = class token + register tokens + h*w patches, D width, Nh heads, Dh = D / Nh head width,
    M MLP width.

The paper's equations (Sec. 3.1):
    Eq. 1  z_0  = [x_class; x_p^1 E; ...; x_p^hw E] + E_pos
    Eq. 2  z'_l = MSA(LN(z_{l-1})) + z_{l-1}
    Eq. 3  z_l  = MLP(LN(z'_l)) + z'_l
    Eq. 4  y    = LN(z_L^0)
Parameter names follow timm's, so a timm state dict loads with little renaming.

The paper's ViT is the default path. The options the ViT family added after it are config fields
(``vitlab.config.ViTConfig``), each marked where it acts: DeiT's distillation token, CLIP's LayerNorm before
the blocks and bias-free patch projection, QuickGELU, layer scale and registers (DINOv2), a position table
without prefix rows, and the heads: class token, average, [class; average] and attention pooling (SigLIP). The
modern ViTs' pieces live in ``vitlab.layers``: the SwiGLU MLP and rotary position embeddings (RoPE: DINOv3, EVA-02,
Perception Encoder), which rotate each head's queries and keys by the patch's position instead of adding E_pos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vitlab.config import ViTConfig
from vitlab.errors import UsageError
from vitlab.layers import SwiGLU
from vitlab.layers.rope import RotaryEmbedding2d, RotaryEmbeddingMixed, apply_rope
from vitlab.pos_embed import resample_pos_embed, sincos_2d

# RoPE's (sin, cos) tables of the patch grid for one block, (h*w, Dh) each, or (Nh, h*w, Dh) with RoPE-Mixed
Rope = tuple[torch.Tensor, torch.Tensor]


def norm_layer(cfg: ViTConfig, dim: int) -> nn.Module:
    """The model's normalisation over the last ``dim`` features: LayerNorm (the paper's LN), or RMSNorm (Zhang &
    Sennrich 2019: no centring, no bias; AIMv2)."""
    if cfg.norm_layer == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def _trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def _factor_(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), both (D, rank), with L R^T the best rank-``rank`` approximation of m (D, D): the SVD split evenly."""
    u, s, vh = torch.linalg.svd(m)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


@torch.no_grad()
def mimetic_init_(attn: Attention, qk: float = 0.7, vproj: float = 0.4) -> None:
    """Mimetic initialisation (Trockman & Kolter 2023): trained ViTs' heads have W_q W_k^T close to a positive
    multiple of the identity and W_v W_proj close to a negative one. Each head h gets W_q^h W_k^h^T = the rank-Dh
    part of qk (Z + I), and W_v W_proj = vproj (Z' - I), Z and Z' with N(0, 1/D) entries (x W in the paper's row-vector
    convention; a Linear's weight is W^T). A token then attends most to tokens that look like it."""
    D, Dh = attn.proj.weight.shape[0], attn.head_dim
    eye = torch.eye(D)
    w = attn.qkv.weight  # (3D, D): rows [q; k; v], head h at rows h*Dh:(h+1)*Dh of each
    for h in range(attn.num_heads):
        wq, wk = _factor_(qk * (torch.randn(D, D) / D**0.5 + eye), Dh)  # x W_q^h (W_k^h)^T y ~ qk * x.y
        rows = slice(h * Dh, (h + 1) * Dh)
        w[rows] = wq.T
        w[D:][rows] = wk.T
    wv, wp = _factor_(vproj * (torch.randn(D, D) / D**0.5 - eye), D)  # x W_v W_proj ~ -vproj * x
    w[2 * D:] = wv.T
    attn.proj.weight.copy_(wp)


class PatchEmbed(nn.Module):
    """Eq. 1's x_p E: a Conv2d with kernel = stride = P is the linear map of each flattened patch."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                              bias=cfg.patch_bias)  # OpenAI CLIP: no bias
        self.norm = norm_layer(cfg, cfg.embed_dim) if cfg.patch_norm else nn.Identity()  # AIMv2, on each patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, h, w)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # normed over D


class ConvStem(nn.Module):
    """Hybrid input (paper Sec. 3.1) as in Xiao et al. 2021: log2(P) conv3x3-BN-ReLU layers of stride 2,
    channels doubling up to D (each followed by ``stem_depth - 1`` stride-1 ones), then a 1x1 projection to D.
    Helps ViTs trained on small data."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        layers = []
        for c_in, c_out, stride in cfg.conv_stem_layers:  # log2(P) stages of stem_depth convs
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_out, cfg.embed_dim, kernel_size=1)  # from the last conv's width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))  # (B, C, H, W) -> (B, D, h, w)


class Attention(nn.Module):
    """Multi-head self-attention (paper App. A). One fused qkv Linear; the fused kernel by default, and an
    explicit path that also returns the softmax probabilities when asked."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.rope_kind = cfg.rope
        self.fused = True  # False: use the explicit path everywhere (see VisionTransformer.set_fused_attn)
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.q_norm = norm_layer(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = norm_layer(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        # EVA-02 CLIP's sub-LayerNorm on the heads' concatenated output, before the projection
        self.norm = norm_layer(cfg, cfg.embed_dim) if cfg.attn_inner_norm else nn.Identity()
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.proj_bias)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False, rope: Rope | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, Nh, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, Nh, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # rotate the patch tokens' queries and keys; the prefix tokens keep theirs
            sin, cos = rope  # (h*w, Dh) or (Nh, h*w, Dh) each
            n = N - sin.shape[-2]  # prefix tokens
            q = torch.cat([q[:, :, :n], apply_rope(q[:, :, n:], sin, cos, self.rope_kind)], dim=2)
            k = torch.cat([k[:, :, :n], apply_rope(k[:, :, n:], sin, cos, self.rope_kind)], dim=2)
        probs = None
        # Training in bf16 on the CPU, torch's flash kernel is slower than the written-out product up to a few
        # hundred tokens (its backward most: 6x for 128 images x 3 heads x 32 tokens, 1.1x at 257 tokens; slower
        # beyond), so such steps take the explicit path; inference keeps the kernel (docs/recipes-log.md, issue 16).
        slow_fused = q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad and N <= 256
        if self.fused and not return_attention and not slow_fused:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:  # softmax(q k^T / sqrt(Dh)) v, written out
            probs = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # (B, Nh, N, N)
            x = self.attn_drop(probs) @ v  # (B, Nh, N, Dh)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, Nh*Dh)
        return self.proj_drop(self.proj(self.norm(x))), probs


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the sigmoid approximation of GELU that OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """The block's MLP: two layers with a GELU non-linearity (paper Sec. 3.1)."""

    def __init__(self, cfg: ViTConfig, width: int | None = None):
        super().__init__()
        width = width or cfg.mlp_dim
        self.fc1 = nn.Linear(cfg.embed_dim, width, bias=cfg.mlp_bias)
        if cfg.mlp_act == "quick_gelu":
            self.act = QuickGELU()
        elif cfg.mlp_act in ("relu", "silu"):
            self.act = nn.ReLU() if cfg.mlp_act == "relu" else nn.SiLU()
        else:
            self.act = nn.GELU(approximate="tanh" if cfg.mlp_act == "gelu_tanh" else "none")
        self.drop1 = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(width, cfg.embed_dim, bias=cfg.mlp_bias)
        self.drop2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))  # (B, N, D) -> (B, N, M) -> (B, N, D)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p (Huang et al. 2016)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        ls = cfg.layer_scale_init
        self.norm1 = norm_layer(cfg, cfg.embed_dim)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.embed_dim, ls) if ls is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(cfg, cfg.embed_dim)
        if cfg.mlp_layer == "swiglu":
            self.mlp = SwiGLU(cfg.embed_dim, cfg.mlp_dim, cfg.dropout, cfg.norm_eps if cfg.mlp_inner_norm else None,
                              bias=cfg.mlp_bias)
        else:
            self.mlp = Mlp(cfg)
        self.ls2 = LayerScale(cfg.embed_dim, ls) if ls is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.residual = True  # False: the ablation of Raghu et al. 2021 (see ViTConfig.no_residual_blocks)
        self.res_post_norm = cfg.res_post_norm

    def forward(self, x: torch.Tensor, return_attention: bool = False, rope: Rope | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.res_post_norm:  # Swin V2's res-post-norm: x + norm(f(x)), each branch's output normalised
            y, probs = self.attn(x, return_attention, rope)
            x = x + self.drop_path1(self.ls1(self.norm1(y)))
            return x + self.drop_path2(self.ls2(self.norm2(self.mlp(x)))), probs
        y, probs = self.attn(self.norm1(x), return_attention, rope)
        if not self.residual:  # skip-connection ablation (ViTConfig.no_residual_blocks): no identity paths
            x = self.drop_path1(self.ls1(y))
            return self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), probs
        x = x + self.drop_path1(self.ls1(y))  # Eq. 2
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))  # Eq. 3
        return x, probs


class AttentionPool(nn.Module):
    """Multihead attention pooling (MAP; big_vision, SigLIP): one learned query attends over the tokens, then a
    residual MLP. Names as timm's AttentionPoolLatent. (B, N, D) -> (B, D), and the (B, Nh, N) attention on request."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.attn_pool_heads or cfg.num_heads
        self.head_dim = cfg.embed_dim // self.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))  # the learned query ("probe")
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.kv = nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.norm = norm_layer(cfg, cfg.embed_dim) if cfg.attn_pool_mlp else None
        self.mlp = Mlp(cfg, cfg.attn_pool_mlp_dim or cfg.mlp_dim) if cfg.attn_pool_mlp else None

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, D = x.shape
        q = self.q(self.latent).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (1, Nh, 1, Dh)
        q = q.expand(B, -1, -1, -1)  # (B, Nh, 1, Dh)
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim)  # (B, N, 2, Nh, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, Nh, N, Dh)
        probs = None
        if return_attention:
            probs = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # (B, Nh, 1, N)
            x = probs @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, Nh, 1, Dh)
        x = self.proj(x.transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        if self.mlp is not None:
            x = x + self.mlp(self.norm(x))
        return x[:, 0], None if probs is None else probs[:, :, 0]  # (B, D), (B, Nh, N)


@dataclass
class Intermediates:
    """What ``forward_intermediates`` returns, for a ``VisionTransformer`` and for the ResNet baseline
    (``vitlab.cnn``) alike.

    tokens:    block index -> (B, N, D), the residual stream after that block (before the final LN).
               A ResNet: (B, h_l*w_l, C_l), the block's feature map as one token per position (row-major).
    attention: block index -> (B, Nh, N, N) softmax probabilities (rows: queries, columns: keys);
               filled only with return_attention=True, for the requested blocks (a ResNet has none).
    features:  the output of ``forward_features``, which ``forward_head`` reads: (B, N, D) tokens, or a
               ResNet's last feature map (B, C, h, w).
    grid_size: (h, w) of the patch grid for this input (a ResNet: of its last block; earlier stages are finer).
    num_prefix_tokens: class, distillation and register tokens before the patches (0 for a ResNet).
               Token order: [class, distillation, registers..., patches].
    pool_attention: pool='map' with return_attention=True: (B, Nh, h*w), the attention pool's query over the
               patch tokens (the map that decides what the head sees); else None.
    """

    tokens: dict[int, torch.Tensor]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
    grid_size: tuple[int, int] = (0, 0)
    num_prefix_tokens: int = 0
    pool_attention: torch.Tensor | None = None

    def patch_tokens(self, layer: int) -> torch.Tensor:
        """The patch tokens of a block as a grid, (B, h, w, D)."""
        x = self.tokens[layer][:, self.num_prefix_tokens:]
        h, w = self.grid_size
        if x.shape[1] != h * w:
            raise UsageError(f"block {layer} has {x.shape[1]} patch tokens, not the {h}x{w} grid of grid_size "
                             "(a ResNet's stages before the last have finer grids)")
        return x.reshape(x.shape[0], h, w, x.shape[-1])


def layer_indices(layers: int | Sequence[int] | None, depth: int) -> set[int]:
    """The block indices ``forward_intermediates(layers=...)`` keeps, of a model of ``depth`` blocks: None = every
    block; an int n = the last n blocks; a sequence = those indices (negative counts from the end)."""
    if layers is None:
        return set(range(depth))
    if isinstance(layers, int):
        if not 0 < layers <= depth:
            raise UsageError(f"layers={layers}: as an int it means the last n blocks, 1 <= n <= {depth}")
        return set(range(depth - layers, depth))
    out = set()
    for i in layers:
        if not -depth <= i < depth:
            raise UsageError(f"layer index {i} is out of range for a model of {depth} blocks "
                             f"(valid: {-depth}..{depth - 1})")
        out.add(i % depth)
    return out


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg) if cfg.stem == "patch" else ConvStem(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distill_token else None  # DeiT
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, D)) if cfg.num_register_tokens else None
        # E_pos of Eq. 1: a row for the class (and distillation) token, then the h x w grid. Registers get no
        # position; with no_embed_class no prefix token does.
        n_pos = cfg.num_pos_prefix + cfg.grid_size[0] * cfg.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, D)) if cfg.pos_embed == "learned" else None
        self.pos_drop = nn.Dropout(cfg.dropout)
        # RoPE (vitlab.layers.rope): its tables computed for each input's grid; RoPE-Mixed's frequencies are learned
        self.rope = None
        if cfg.rope == "mixed":
            self.rope = RotaryEmbeddingMixed(cfg.depth, cfg.num_heads, cfg.head_dim, cfg.rope_theta)
        elif cfg.rope != "none":
            self.rope = RotaryEmbedding2d(cfg.rope, cfg.head_dim, cfg.rope_theta, cfg.rope_axes, cfg.rope_ref_grid,
                                          cfg.rope_offset)
        self.norm_pre = norm_layer(cfg, D) if cfg.norm_pre else nn.Identity()  # CLIP's ln_pre
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # grows with depth
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        for i in cfg.no_residual_blocks:
            self.blocks[i].residual = False
        self.norm = nn.Identity() if cfg.fc_norm or not cfg.final_norm else norm_layer(cfg, D)
        self.fc_norm = norm_layer(cfg, D) if cfg.fc_norm else nn.Identity()
        self.attn_pool = AttentionPool(cfg) if cfg.pool == "map" else None
        if cfg.representation_size:
            act = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[cfg.representation_act]
            self.pre_logits = nn.Sequential(nn.Linear(D, cfg.representation_size), act())
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_dist = None  # DeiT: the distillation token's own head
        if cfg.pool == "distill":
            self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # pool "distill" in training: True = forward returns both heads' logits, (class, distillation), as DeiT
        # trains them (each its own loss; vitlab.train's distill section sets it); False = their average.
        self.distilled_training = False
        self.grad_checkpointing = False
        # Metadata that travels with weights; set by vitlab.load / vitlab.create_model.
        self.preprocessing = None  # vitlab.Preprocessing
        self.class_names: list[str] | None = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every tensor as the official JAX implementation and timm do.

        "Truncated normal" is cut at +-2 std.
        Linear weights (qkv, proj, fc1, fc2, pre_logits): truncated normal, std 0.02; their biases: 0.
        Patch projection: LeCun normal (std = 1/sqrt(P*P*C)), flax's default for the official Conv; bias 0.
        Conv stem: Kaiming normal (fan_out, ReLU), BatchNorm weight 1, bias 0.
        Position embedding: truncated normal, std 0.02. Class token: 0 (official). Registers: normal,
        std 1e-6 (timm; must differ from each other). Distillation token: truncated normal, std 0.02 (DeiT).
        Attention-pool query: truncated normal, std D^-0.5 (timm). LayerNorm: weight 1, bias 0. LayerScale: the
        configured init. RoPE-Mixed's frequencies: the paper's random directions (vitlab.layers.rope).
        Heads: weight and bias 0 (official: the first steps train the head only).
        ``attn_init="mimetic"``: then every block's qkv and proj weights as :func:`mimetic_init_`.
        """
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and name == "patch_embed.proj" and isinstance(self.patch_embed, PatchEmbed):
                _trunc_normal_(m.weight, std=m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.RMSNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, self.config.layer_scale_init)
        if self.pos_embed is not None:
            _trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.dist_token is not None:
            _trunc_normal_(self.dist_token, std=0.02)
        if self.attn_pool is not None:
            _trunc_normal_(self.attn_pool.latent, std=self.config.embed_dim**-0.5)
        if isinstance(self.rope, RotaryEmbeddingMixed):
            self.rope.reset_parameters()
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        if self.config.attn_init == "mimetic":
            for block in self.blocks:
                mimetic_init_(block.attn)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 4:
            raise UsageError(f"expected images of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_chans:
            raise UsageError(f"expected {cfg.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             "convert the images (e.g. grayscale/RGBA to RGB) or build the model with in_chans=...")
        H, W = x.shape[-2:]
        if (H % cfg.patch_size or W % cfg.patch_size) and (H, W) != tuple(cfg.img_size):
            h, w = (n * cfg.patch_size for n in cfg.grid_size)
            raise UsageError(f"image size {H}x{W} is not divisible by the patch size {cfg.patch_size}; "
                             f"resize or crop to a multiple of {cfg.patch_size} (e.g. {h}x{w})")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: images (B, C, H, W) -> tokens z_0 (B, N, D). Any H, W divisible by P."""
        self._check_input(x)
        x = self.patch_embed(x)  # (B, D, h, w)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        cfg = self.config
        n_pos = cfg.num_pos_prefix  # the class and distillation tokens' rows, if the table has them
        prefix_pos = None
        if self.pos_embed is not None:  # learned E_pos, resampled in 2D when (h, w) differs from training
            pos = resample_pos_embed(self.pos_embed, (h, w), cfg.grid_size, num_prefix=n_pos, method=cfg.pos_resample)
            prefix_pos, x = pos[:, :n_pos], x + pos[:, n_pos:]
        elif self.config.pos_embed.startswith("sincos2d"):
            x = x + sincos_2d((h, w), D, mae=self.config.pos_embed == "sincos2d_mae").to(x)
        if self.training and self.config.patch_drop_rate > 0:  # keep a random subset of patches per image
            keep = max(1, round((1 - self.config.patch_drop_rate) * h * w))
            idx = torch.rand(B, h * w, device=x.device).argsort(dim=1)[:, :keep]  # (B, keep)
            x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))  # (B, keep, D)
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]  # each (1, 1, D)
        if prefix_pos is not None and n_pos:  # the class (and distillation) token's position
            prefix = [t + prefix_pos[:, i:i + 1] for i, t in enumerate(prefix)]
        if self.reg_token is not None:
            prefix.append(self.reg_token)  # (1, R, D)
        x = torch.cat([t.expand(B, -1, -1) for t in prefix] + [x], dim=1)  # (B, N, D)
        return self.norm_pre(self.pos_drop(x))  # norm_pre: CLIP's ln_pre (identity otherwise)

    def rope_tables(self, x: torch.Tensor) -> list[Rope | None]:
        """Each block's RoPE (sin, cos) for images x (B, C, H, W); None for a model without RoPE."""
        if self.rope is None:
            return [None] * len(self.blocks)
        P = self.config.patch_size
        tables = self.rope((x.shape[-2] // P, x.shape[-1] // P), x.device)
        return tables if isinstance(tables, list) else [tables] * len(self.blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final tokens (B, N, D), after the last LayerNorm (unless fc_norm)."""
        ropes = self.rope_tables(x)
        x = self.embed(x)
        for blk, rope in zip(self.blocks, ropes, strict=True):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, _ = checkpoint(blk, x, False, rope, use_reentrant=False)
            else:
                x, _ = blk(x, rope=rope)
        return self.norm(x)  # Eq. 4's LN

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, D) -> logits (B, num_classes), or the pooled features (B, num_features)."""
        pool, patches = self.config.pool, x[:, self.config.num_prefix_tokens:]  # (B, h*w, D)
        if pool == "distill":  # DeiT: each token through its own head, averaged (timm's pre_logits: the mean token)
            if pre_logits:
                return (x[:, 0] + x[:, 1]) / 2
            if self.distilled_training and self.training:
                return self.head(x[:, 0]), self.head_dist(x[:, 1])  # type: ignore[return-value]
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        if pool == "token":
            x = x[:, 0]  # z_L^0, the class token (Eq. 4)
        elif pool == "gap":
            x = patches.mean(dim=1)  # global average of the patch tokens
        elif pool == "token_gap":
            x = torch.cat([x[:, 0], patches.mean(dim=1)], dim=-1)  # (B, 2D)
        else:  # map
            x, _ = self.attn_pool(x if self.config.attn_pool_prefix else patches)
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] | None = None, return_attention: bool = False
    ) -> Intermediates:
        """Run the model and keep the tokens of the requested blocks (and their attention probabilities).

        layers: None = every block; an int n = the last n blocks; a sequence = those block indices
        (negative counts from the end). Only the requested blocks compute explicit attention; every
        other block keeps the fused kernel. See :class:`Intermediates` for what comes back.
        """
        keep = layer_indices(layers, len(self.blocks))
        grid = (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)
        tokens, attention = {}, {}
        ropes = self.rope_tables(x)
        x = self.embed(x)
        for i, blk in enumerate(self.blocks):
            x, probs = blk(x, return_attention=return_attention and i in keep, rope=ropes[i])
            if i in keep:
                tokens[i] = x
                if probs is not None:
                    attention[i] = probs
        x = self.norm(x)
        pool_attention = None
        if return_attention and self.attn_pool is not None:
            pooled = x if self.config.attn_pool_prefix else x[:, self.config.num_prefix_tokens:]
            _, pool_attention = self.attn_pool(pooled, return_attention=True)
        return Intermediates(tokens, attention, x, grid, self.config.num_prefix_tokens, pool_attention)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and DeiT's distillation head) with fresh zero-initialised ones (0 = no head)."""
        self.config = self.config.replace(num_classes=num_classes)
        device = next(self.parameters()).device  # the new heads go where the model's parameters are
        def new_head(width: int) -> nn.Module:
            return nn.Linear(width, num_classes, device=device) if num_classes else nn.Identity()

        self.head = new_head(self.config.num_features)
        if self.head_dist is not None:
            self.head_dist = new_head(self.config.embed_dim)
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_fused_attn(self, enable: bool = True) -> None:
        """Fused scaled-dot-product attention (default) or the explicit softmax path in every block."""
        for blk in self.blocks:
            blk.attn.fused = enable
