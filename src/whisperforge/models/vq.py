"""The speech-tokenizer bottleneck: a vector-quantized layer between a frozen Whisper encoder
and its frozen decoder (WhisperVQ from WhisperSpeech, as Ichigo Whisper builds it).

Pipeline, for one 30 s window (``n_audio_ctx = 1500`` encoder frames at 50 Hz)::

    encoder states (b, 1500, d) --mean-pool x2--> (b, 750, d)            50 Hz -> 25 Hz
      --x + MLP(LN(x))--> --project_in--> (b, 750, codebook_dim)
      --cosine-sim VQ, EMA codebook--> codes (b, 750)                    padding -> mask code
      --project_out, repeat x2--> (b, 1500, d) --+ learned positions-->
      --rotary transformer block(s)--> --LN--> decoder features (b, 1500, d)

The codebook search, EMA updates, dead-code replacement and commitment loss come from
``vector_quantize_pytorch.VectorQuantize``. Padding frames (beyond the audio) never reach it:
their tokens are the *mask code*, a learned vector that stands for "no audio here", as
WhisperSpeech's ``mask_embs`` does. Only real frames update the codebook.

Token ids (the codebook layout): ``[0, codebook_size)`` the codes, ``codebook_size`` the mask,
then ``merged_codes`` codes appended by ``merge_codebooks`` (Ichigo: 2048 new codes + mask +
the 512 codes of the model it grew from = 2561 ids). The mask is never searched.

The module is pure: no teacher, no I/O, no device choice. ``forward`` takes encoder states, so a
trainer can run it on cached encoder outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from whisperforge.audio import CHUNK_LENGTH, N_SAMPLES_PER_TOKEN, TOKENS_PER_SECOND

N_AUDIO_CTX = CHUNK_LENGTH * TOKENS_PER_SECOND  # 1500 encoder frames per 30 s window
POSITION_INIT_STD = 0.02  # learned positions after the bottleneck (GPT-2's init)


@dataclass(frozen=True)
class VQConfig:
    """Sizes of a bottleneck; checked in ``__post_init__`` (the one place).

    Defaults are Ichigo Whisper's (whisper-medium width, 2048 codes of dimension 64, one
    transformer block); ``d_model`` must equal the Whisper model's width.
    """

    d_model: int = 1024  # Whisper width: tiny 384, base 512, small 768, medium 1024, large 1280
    n_heads: int = 16  # attention heads of the block(s) after the bottleneck
    n_layers: int = 1  # transformer blocks after the bottleneck
    ffn_mult: int = 4  # MLP hidden width = ffn_mult * d_model
    codebook_size: int = 2048  # searchable codes before any merge; also the mask code's id
    codebook_dim: int = 64  # dimension codes live in (cosine similarity there)
    merged_codes: int = 0  # codes appended after the mask by merge_codebooks
    downsample: int = 2  # encoder frames mean-pooled into one token (50 Hz -> 25 Hz)
    n_audio_ctx: int = N_AUDIO_CTX  # encoder frames per window
    rope_base: float = 10000.0
    ema_decay: float = 0.8  # codebook EMA decay (WhisperSpeech: 0.8)
    commitment_weight: float = 1.0
    threshold_ema_dead_code: float = 2.0  # codes whose EMA usage falls below are re-seeded
    kmeans_init: bool = False  # k-means on the first training batch
    use_cosine_sim: bool = True
    rotation_trick: bool = False  # gradients through VQ: rotation trick, else straight-through

    def __post_init__(self) -> None:
        positive = ("d_model", "n_heads", "n_layers", "ffn_mult", "codebook_size",
                    "codebook_dim", "downsample", "n_audio_ctx")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"VQConfig.{name} must be >= 1, not {getattr(self, name)}")
        if self.merged_codes < 0:
            raise ValueError(f"VQConfig.merged_codes must be >= 0, not {self.merged_codes}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model {self.d_model} must split into {self.n_heads} heads of even width "
                "(rotary positions rotate pairs of channels)"
            )
        if self.n_audio_ctx % self.downsample:
            raise ValueError(f"n_audio_ctx {self.n_audio_ctx} not divisible by {self.downsample}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), not {self.ema_decay}")

    @property
    def mask_id(self) -> int:
        """Token id of the mask (padding) code."""
        return self.codebook_size

    @property
    def n_ids(self) -> int:
        """Token ids in the layout: codes + mask + merged codes (2048 + 1 + 512 = 2561)."""
        return self.codebook_size + 1 + self.merged_codes

    @property
    def n_searchable(self) -> int:
        """Codes the quantizer picks from (every id but the mask)."""
        return self.codebook_size + self.merged_codes

    @property
    def tokens_per_window(self) -> int:
        return self.n_audio_ctx // self.downsample  # 750

    @property
    def tokens_per_second(self) -> float:
        return TOKENS_PER_SECOND / self.downsample  # 25.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


class RotaryEmbedding(nn.Module):
    """Rotary positions (Su et al., 2021, RoFormer) over ``(batch, heads, time, head_dim)``,
    channels rotated in two halves (the GPT-NeoX / Llama convention)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = torch.arange(x.shape[-2], device=x.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(t, self.inv_freq)  # (time, head_dim / 2)
        cos = angles.cos().repeat(1, 2).to(x.dtype)
        sin = angles.sin().repeat(1, 2).to(x.dtype)
        half1, half2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-half2, half1], dim=-1) * sin


class RotaryBlock(nn.Module):
    """Pre-LN transformer block, bidirectional self-attention with rotary q/k, GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, rope_base: float):
        super().__init__()
        self.n_heads = n_heads
        self.attn_ln = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(d_model // n_heads, rope_base)
        self.mlp_ln = nn.LayerNorm(d_model)
        self.mlp = _mlp(d_model, ffn_mult)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, time, d_model)`` -> same shape."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.n_heads, -1).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        a = F.scaled_dot_product_attention(self.rotary(q), self.rotary(k), v)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.mlp_ln(x))


def _mlp(d_model: int, ffn_mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model)
    )


def _vector_quantize(config: VQConfig) -> nn.Module:
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as error:
        raise ImportError(
            "speech tokenizers need vector-quantize-pytorch; "
            "run: pip install 'whisperforge[tokens]'"
        ) from error
    return VectorQuantize(
        dim=config.d_model,
        codebook_size=config.n_searchable,
        codebook_dim=config.codebook_dim,
        use_cosine_sim=config.use_cosine_sim,
        decay=config.ema_decay,
        commitment_weight=config.commitment_weight,
        threshold_ema_dead_code=config.threshold_ema_dead_code,
        kmeans_init=config.kmeans_init,
        rotation_trick=config.rotation_trick,
    )


@dataclass
class VQOutput:
    """One forward pass. ``features``: ``(batch, n_audio_ctx, d_model)`` for the decoder's
    cross-attention; ``codes``: ``(batch, tokens_per_window)`` token ids, the mask id where
    ``token_mask`` is False; ``loss``: the quantizer's weighted loss (commitment * weight);
    ``commitment``: the unweighted commitment loss; both scalars over real tokens only."""

    features: Tensor
    codes: Tensor
    loss: Tensor
    commitment: Tensor
    token_mask: Tensor


class WhisperVQ(nn.Module):
    """The bottleneck (module docstring). ``frame_mask`` arguments: ``(batch, n_audio_ctx)``
    bool, True on encoder frames that hold audio; None means every frame does."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.mlp_ln = nn.LayerNorm(d)
        self.mlp = _mlp(d, config.ffn_mult)
        self.vq = _vector_quantize(config)
        self.mask_code = nn.Parameter(
            torch.randn(config.codebook_dim) / math.sqrt(config.codebook_dim)
        )
        self.positions = nn.Embedding(config.n_audio_ctx, d)
        # small, as GPT-2 initialises learned positions: at nn.Embedding's N(0, 1) they are
        # ~14x the projected codes and the block after the bottleneck barely sees the codes
        nn.init.normal_(self.positions.weight, std=POSITION_INIT_STD)
        self.blocks = nn.ModuleList(
            RotaryBlock(d, config.n_heads, config.ffn_mult, config.rope_base)
            for _ in range(config.n_layers)
        )
        self.ln_post = nn.LayerNorm(d)

    # token ids <-> rows of the library's codebook (which has no mask row)
    def _rows_to_ids(self, rows: Tensor) -> Tensor:
        return rows + (rows >= self.config.mask_id).long()

    def _ids_to_rows(self, ids: Tensor) -> Tensor:
        return ids - (ids > self.config.mask_id).long()

    @property
    def codebook(self) -> Tensor:
        """``(n_ids, codebook_dim)`` every token's code vector, in token-id order."""
        codes = self.vq.codebook
        m = self.config.mask_id
        return torch.cat([codes[:m], self.mask_code[None].to(codes.dtype), codes[m:]])

    def token_mask(self, frame_mask: Tensor | None, batch: int, device) -> Tensor:
        """``(batch, tokens_per_window)`` True where a token covers at least one real frame."""
        n = self.config.tokens_per_window
        if frame_mask is None:
            return torch.ones(batch, n, dtype=torch.bool, device=device)
        return frame_mask.view(batch, n, self.config.downsample).any(-1)

    def _pool(self, states: Tensor) -> Tensor:
        """``(b, n_audio_ctx, d)`` -> ``(b, tokens_per_window, d)``: mean-pool, residual MLP."""
        b, t, d = states.shape
        if t != self.config.n_audio_ctx or d != self.config.d_model:
            raise ValueError(
                f"expected encoder states (batch, {self.config.n_audio_ctx}, "
                f"{self.config.d_model}), got {tuple(states.shape)}"
            )
        x = states.view(b, t // self.config.downsample, self.config.downsample, d).mean(2)
        return x + self.mlp(self.mlp_ln(x))

    def _quantize(self, x: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Real tokens through the library's VQ; padding gets the mask code."""
        b, n, _ = x.shape
        quantized = self._mask_vector().to(x.dtype).expand(b, n, -1).clone()
        codes = torch.full((b, n), self.config.mask_id, dtype=torch.long, device=x.device)
        zero = x.new_zeros(())
        if not token_mask.any():
            return quantized, codes, zero, zero
        q, rows, loss, breakdown = self.vq(x[token_mask][None], return_loss_breakdown=True)
        quantized[token_mask] = q[0].to(x.dtype)
        codes[token_mask] = self._rows_to_ids(rows[0])
        return quantized, codes, loss, breakdown.commitment

    def _mask_vector(self) -> Tensor:
        return self.vq.project_out(self.mask_code)

    def _expand(self, z: Tensor) -> Tensor:
        """``(b, tokens_per_window, d)`` -> decoder features ``(b, n_audio_ctx, d)``."""
        x = z.repeat_interleave(self.config.downsample, dim=1)
        x = x + self.positions.weight[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)

    def forward(
        self, encoder_states: Tensor, frame_mask: Tensor | None = None, swap: float = 0.0
    ) -> VQOutput:
        """Encoder states ``(batch, n_audio_ctx, d_model)`` -> features, codes and VQ losses.

        In training mode the codebook's EMA and dead-code replacement update (real tokens
        only) and gradients pass the quantizer straight-through (or by the rotation trick).
        ``swap`` (training mode only): the share of real tokens the block after the bottleneck
        reads as their nearest *other* code (``swap_to_neighbours``); ``codes`` stay the
        nearest ones.
        """
        mask = self.token_mask(frame_mask, encoder_states.shape[0], encoder_states.device)
        x = self._pool(encoder_states)
        quantized, codes, loss, commitment = self._quantize(x, mask)
        if swap > 0 and self.training:
            quantized = self.swap_to_neighbours(x, quantized, codes, mask, swap)
        return VQOutput(self._expand(quantized), codes, loss, commitment, mask)

    def swap_to_neighbours(
        self, x: Tensor, quantized: Tensor, codes: Tensor, token_mask: Tensor, share: float
    ) -> Tensor:
        """``quantized`` with a random ``share`` of its real tokens replaced by the vector of
        the code nearest to ``x`` after their own code (``codes``): the codes a small shift
        of the encoder states, as another voice brings, would pick instead. The value changes
        and the gradient to ``x`` stays the straight-through one."""
        if not 0 <= share <= 1:
            raise ValueError(f"swap share must be in [0, 1], not {share}")
        rows = token_mask & (torch.rand(token_mask.shape, device=x.device) < share)
        if not rows.any():
            return quantized
        with torch.no_grad():
            own = self._ids_to_rows(codes[rows])
            z = F.normalize(self.vq.project_in(x[rows].float()), dim=-1)
            sims = z @ F.normalize(self.vq.codebook.float(), dim=-1).T
            sims[torch.arange(len(own), device=x.device), own] = -math.inf
            delta = self.vq.get_output_from_indices(sims.argmax(-1))
            delta = delta - self.vq.get_output_from_indices(own)
        out = quantized.clone()
        out[rows] = quantized[rows] + delta.to(quantized.dtype)
        return out

    @torch.no_grad()
    def quantize(self, encoder_states: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """Encoder states -> token ids ``(batch, tokens_per_window)``, mask id on padding.

        Never updates the codebook (use ``forward`` in training mode for that)."""
        mask = self.token_mask(frame_mask, encoder_states.shape[0], encoder_states.device)
        x = self._pool(encoder_states)
        codes = torch.full(mask.shape, self.config.mask_id, dtype=torch.long, device=x.device)
        if mask.any():
            codes[mask] = self._rows_to_ids(self._search(x[mask]))
        return codes

    def _search(self, x: Tensor) -> Tensor:
        """Nearest code rows ``(n,)`` for ``(n, d_model)`` vectors; the EMA state stays as is
        (the library updates it only in training mode)."""
        was_training = self.vq.training
        self.vq.eval()
        try:
            _, rows, _ = self.vq(x[None])
        finally:
            self.vq.train(was_training)
        return rows[0]

    def embed_ids(self, ids: Tensor) -> Tensor:
        """Token ids ``(...)`` -> their vectors after ``project_out`` ``(..., d_model)``."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.n_ids):
            raise ValueError(
                f"token ids must be in [0, {self.config.n_ids}), got "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        is_mask = ids == self.config.mask_id
        rows = self._ids_to_rows(ids.masked_fill(is_mask, 0))
        out = self.vq.get_output_from_indices(rows)
        return torch.where(is_mask[..., None], self._mask_vector().to(out.dtype), out)

    def dequantize(self, ids: Tensor) -> Tensor:
        """Token ids ``(batch, n <= tokens_per_window)`` -> decoder features ``(batch,
        n_audio_ctx, d_model)``; a short row is padded with the mask code to a full window."""
        n = self.config.tokens_per_window
        if ids.ndim != 2 or ids.shape[1] > n:
            raise ValueError(f"expected token ids (batch, <= {n}), got {tuple(ids.shape)}")
        ids = F.pad(ids.long(), (0, n - ids.shape[1]), value=self.config.mask_id)
        return self._expand(self.embed_ids(ids))


QUANTIZER_SETTINGS = ("ema_decay", "commitment_weight", "threshold_ema_dead_code")


BOTTLENECK_PARTS = {
    "before_codes": ("mlp_ln.", "mlp.", "vq.project_in."),
    "after_codes": ("vq.project_out.", "mask_code", "positions.", "blocks.", "ln_post."),
}
"""Trained weights on either side of the codebook, by parameter-name prefix: what maps encoder
states to codes, and what rebuilds decoder features from them. The codes themselves follow
their EMA and belong to neither."""


def freeze_parts(vq: WhisperVQ, parts: tuple[str, ...] | list[str]) -> int:
    """Stop gradients to the named ``BOTTLENECK_PARTS``; returns the weights left trainable."""
    unknown = sorted(set(parts) - set(BOTTLENECK_PARTS))
    if unknown:
        raise ValueError(f"unknown bottleneck parts {unknown}; choose from "
                         f"{list(BOTTLENECK_PARTS)}")  # fmt: skip
    prefixes = tuple(p for part in parts for p in BOTTLENECK_PARTS[part])
    for name, weight in vq.named_parameters():
        if name.startswith(prefixes):
            weight.requires_grad_(False)
    return sum(w.numel() for w in vq.parameters() if w.requires_grad)


def with_quantizer_settings(vq: WhisperVQ, **settings: float) -> WhisperVQ:
    """A copy of ``vq`` whose quantizer trains with other ``QUANTIZER_SETTINGS`` (EMA decay,
    commitment weight, dead-code threshold); weights and codebook state are ``vq``'s, so its
    ids are unchanged. For continuing a trained tokenizer with other settings."""
    unknown = sorted(set(settings) - set(QUANTIZER_SETTINGS))
    if unknown:
        raise ValueError(f"not quantizer settings: {unknown}; choose from {QUANTIZER_SETTINGS}")
    copy = WhisperVQ(replace(vq.config, **settings)).to(next(vq.parameters()).device)
    copy.load_state_dict(vq.state_dict())
    return copy.train(vq.training)


def frame_mask(n_samples: Tensor, n_audio_ctx: int = N_AUDIO_CTX) -> Tensor:
    """``(batch,)`` audio lengths in 16 kHz samples -> ``(batch, n_audio_ctx)`` bool mask of
    the encoder frames (50 Hz) that hold audio: ``ceil(n_samples / 320)`` per row."""
    frames = audio_frames(n_samples)
    return torch.arange(n_audio_ctx, device=n_samples.device)[None] < frames[:, None]


def audio_frames(n_samples: Tensor | int) -> Tensor | int:
    """Encoder frames (50 Hz) covering ``n_samples`` samples: ``ceil(n / 320)``."""
    return -(-n_samples // N_SAMPLES_PER_TOKEN)


def tokens_for_samples(n_samples: int, downsample: int = 2) -> int:
    """Speech tokens for ``n_samples`` samples of one window: ``ceil(frames / downsample)``
    (11.0 s -> 550 frames -> 275 tokens)."""
    return -(-audio_frames(n_samples) // downsample)


@dataclass(frozen=True)
class CodebookUsage:
    """How a set of token ids uses a codebook of ``n_codes`` searchable codes."""

    n_tokens: int  # ids counted (mask ids excluded)
    used: int  # distinct codes seen
    utilisation: float  # used / n_codes
    perplexity: float  # exp(entropy of the code histogram), between 1 and n_codes
    dead_codes: int  # codes never seen


def codebook_usage(codes: Tensor, n_ids: int, mask_id: int | None = None) -> CodebookUsage:
    """Usage statistics of token ids ``codes`` (any shape) over ids ``[0, n_ids)``; the
    ``mask_id`` (padding) and negative ids are not counted. A pure function of the ids."""
    flat = codes.reshape(-1).long()
    keep = flat >= 0
    if mask_id is not None:
        keep &= flat != mask_id
    counts = torch.bincount(flat[keep], minlength=n_ids).double()
    if mask_id is not None:
        counts = torch.cat([counts[:mask_id], counts[mask_id + 1 :]])
    n_codes, total = counts.numel(), int(counts.sum())
    used = int((counts > 0).sum())
    if total == 0:
        return CodebookUsage(0, 0, 0.0, 0.0, n_codes)
    p = counts[counts > 0] / total
    perplexity = float(torch.exp(-(p * p.log()).sum()))
    return CodebookUsage(total, used, used / n_codes, perplexity, n_codes - used)


# ---------------------------------------------------------------- presets (Whisper widths)

_WIDTHS = {"tiny": 384, "base": 512, "small": 768, "medium": 1024, "large-v3": 1280}


def _preset(name: str) -> Callable[..., WhisperVQ]:
    d_model = _WIDTHS[name]

    def build(**overrides) -> WhisperVQ:
        return WhisperVQ(preset_config(name, **overrides))

    build.__name__ = f"whisper_vq_{name.replace('-', '_')}"
    build.__doc__ = (
        f"A bottleneck for Whisper {name} (width {d_model}, {d_model // 64} heads of 64); "
        "keyword overrides replace VQConfig fields."
    )
    return build


whisper_vq_tiny = _preset("tiny")
whisper_vq_base = _preset("base")
whisper_vq_small = _preset("small")
whisper_vq_medium = _preset("medium")  # Ichigo Whisper's size (about 22M parameters)
whisper_vq_large_v3 = _preset("large-v3")
VQ_PRESETS: dict[str, Callable[..., WhisperVQ]] = {
    "tiny": whisper_vq_tiny,
    "base": whisper_vq_base,
    "small": whisper_vq_small,
    "medium": whisper_vq_medium,
    "large-v3": whisper_vq_large_v3,
}


def preset_config(name: str, **overrides) -> VQConfig:
    """The ``VQConfig`` of preset ``name`` (``tiny`` ... ``large-v3``) with overrides."""
    if name not in _WIDTHS:
        raise ValueError(f"unknown bottleneck preset {name!r}; available: {', '.join(_WIDTHS)}")
    d_model = _WIDTHS[name]
    return replace(VQConfig(d_model=d_model, n_heads=d_model // 64), **overrides)


def preset_for_width(d_model: int) -> str:
    """The preset whose width is ``d_model`` (e.g. a Whisper model's ``config.d_model``)."""
    for name, width in _WIDTHS.items():
        if width == d_model:
            return name
    raise ValueError(f"no bottleneck preset has width {d_model}; widths: {_WIDTHS}")


# ------------------------------------------ data-driven initialisation (from encoder states)


def _kmeans_cosine(
    x: Tensor, k: int, iters: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Spherical k-means of unit rows ``x`` ``(n, d)``: ``(centroids (k, d), counts (k,))``;
    an empty cluster is re-seeded from a random row."""
    pick = torch.randperm(x.shape[0], generator=generator)[:k]
    if len(pick) < k:  # fewer vectors than codes: repeat some
        pick = torch.cat(
            [pick, torch.randint(0, x.shape[0], (k - len(pick),), generator=generator)]
        )
    centroids = x[pick].clone()
    counts = torch.zeros(k, dtype=x.dtype)
    for _ in range(iters):
        assign = torch.cat([(part @ centroids.T).argmax(1) for part in x.split(8192)])
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        spare = x[torch.randint(0, x.shape[0], (k,), generator=generator)]
        centroids = F.normalize(torch.where(empty[:, None], spare, sums), dim=-1)
    return centroids, counts


@torch.no_grad()
def init_from_states(
    model: WhisperVQ,
    states: Tensor,
    frame_mask: Tensor,
    tokens_per_step: float | None = None,
    kmeans_iters: int = 20,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Start a new bottleneck close to a linear code of the encoder ``states`` ``(n_windows,
    n_audio_ctx, d_model)`` (``frame_mask``: True on real frames) instead of at random.

    The frozen decoder reads *where* a frame is from a small positional component of the
    encoder states (the mean state at each frame index: ~5 % of the variance, yet without it
    even a 128-dimensional reconstruction decodes to nothing). So, in the space of the output
    LayerNorm (``ln_post``, a copy of the encoder's final norm: ``n = (states - beta) /
    gamma``):

    - ``positions`` = the mean of ``n`` at each frame index;
    - ``project_in`` = the top ``codebook_dim`` principal directions of what is left at real
      frames (applied to the pooled states; the residual MLP and the blocks' output
      projections start at zero, so both are identities), ``project_out`` = the same
      directions scaled by the mean length of the codes (codes are unit vectors);
    - the codebook = spherical k-means of the real tokens' directions, its EMA usage the
      cluster shares of ``tokens_per_step`` (so nothing is re-seeded as dead at the start);
    - the mask code = the padding frames' mean residual.

    Returns a few figures of the fit (variance kept, codes used). Pure: the caller supplies
    the states (e.g. from the encoder cache).
    """
    cfg = model.config
    if cfg.merged_codes:
        raise ValueError("initialise a new bottleneck, not a merged one")
    generator = generator or torch.Generator().manual_seed(0)
    gamma = model.ln_post.weight.detach().float()
    beta = model.ln_post.bias.detach().float()
    n = (states.float() - beta) / gamma  # (w, t, d)
    positions = n.mean(0)
    residual = n - positions
    real = frame_mask.bool()
    b, t, d = n.shape
    token_real = real.view(b, t // cfg.downsample, cfg.downsample).any(-1)
    pooled = n.view(b, t // cfg.downsample, cfg.downsample, d).mean(2)  # what project_in sees
    rows = residual[real]
    offset = rows.mean(0)
    centred = rows - offset
    _, _, directions = torch.linalg.svd(
        centred[:: max(1, len(centred) // 50000)], full_matrices=False
    )
    basis = directions[: cfg.codebook_dim].T  # (d, codebook_dim)
    kept = float((centred @ basis).pow(2).sum() / centred.pow(2).sum())
    mean_pooled = pooled[token_real].mean(0)
    coords = (pooled[token_real] - mean_pooled) @ basis  # (tokens, codebook_dim)
    scale = coords.norm(dim=1).mean()
    # project_in acts on the raw pooled states x: n = (x - beta) / gamma
    model.vq.project_in.weight.copy_((basis.T / gamma[None]).to(model.vq.project_in.weight))
    model.vq.project_in.bias.copy_(
        -(basis.T @ (beta / gamma + mean_pooled)).to(model.vq.project_in.bias)
    )
    model.vq.project_out.weight.copy_((basis * scale).to(model.vq.project_out.weight))
    model.vq.project_out.bias.copy_(offset.to(model.vq.project_out.bias))
    model.positions.weight.copy_(positions.to(model.positions.weight))
    pad_rows = residual[~real]
    pad_mean = pad_rows.mean(0) if len(pad_rows) else offset
    model.mask_code.copy_(((pad_mean - offset) @ basis / scale).to(model.mask_code))
    for layer in (
        model.mlp[-1],
        *(blk.out for blk in model.blocks),
        *(blk.mlp[-1] for blk in model.blocks),
    ):
        layer.weight.zero_()
        layer.bias.zero_()
    units = F.normalize(coords, dim=-1)
    codes, counts = _kmeans_cosine(units, cfg.n_searchable, kmeans_iters, generator)
    per_step = tokens_per_step if tokens_per_step is not None else float(len(units))
    _set_codebook(model, codes, counts / counts.sum() * per_step)
    return {"variance_kept": kept, "code_scale": float(scale), "tokens": len(units),
            "codes_used": int((counts > 0).sum()), "windows": b}  # fmt: skip


# ------------------------------------------------- codebook growth and merge (Ichigo Whisper)

_CODEBOOK_PREFIX = "vq._codebook."


def _copy_all_but_codebook(source: WhisperVQ, target: WhisperVQ) -> None:
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(_CODEBOOK_PREFIX)}
    _load_all_but_codebook(state, target)


def _load_all_but_codebook(state: dict[str, Tensor], target: WhisperVQ) -> None:
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_CODEBOOK_PREFIX)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"bottlenecks differ beyond the codebook: {missing or result.unexpected_keys}"
        )


@torch.no_grad()
def _set_codebook(model: WhisperVQ, codes: Tensor, cluster_size: Tensor) -> None:
    """Install ``(n_searchable, codebook_dim)`` codes with their EMA usage ``(n_searchable,)``,
    marked initialised (so k-means init never overwrites them)."""
    book = model.vq._codebook
    book.embed.copy_(codes[None])
    book.cluster_size.copy_(cluster_size[None])
    book.embed_avg.copy_(codes[None] * cluster_size[None, :, None])
    book.initted.fill_(True)


def grow_codebook(
    small: WhisperVQ,
    codebook_size: int,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> WhisperVQ:
    """A bottleneck with ``codebook_size`` codes, initialised from a trained ``small`` one.

    Ichigo Whisper's initialisation: code ``i`` is ``small``'s code ``i % n`` plus Gaussian
    noise of std ``noise`` (in code space; re-normalised for cosine codebooks); each copy
    inherits an equal share of its parent's EMA usage. Every other weight (MLP, projections,
    mask code, positions, blocks) is copied, so the grown model starts where ``small`` was.
    """
    cfg = small.config
    if cfg.merged_codes:
        raise ValueError("grow from a bottleneck that has not been merged (merged_codes == 0)")
    if codebook_size < cfg.codebook_size:
        raise ValueError(f"codebook_size {codebook_size} is below the source's {cfg.codebook_size}")
    big = WhisperVQ(replace(cfg, codebook_size=codebook_size, kmeans_init=False))
    _copy_all_but_codebook(small, big)
    parent = torch.arange(codebook_size) % cfg.codebook_size
    codes = small.vq.codebook.detach()[parent]
    codes = codes + noise * torch.randn(codes.shape, generator=generator).to(codes)
    if cfg.use_cosine_sim:
        codes = F.normalize(codes, dim=-1)
    copies = torch.bincount(parent, minlength=cfg.codebook_size).to(codes)
    usage = small.vq._codebook.cluster_size[0].detach()
    _set_codebook(big, codes, (usage / copies)[parent])
    return big


def deepen(vq: WhisperVQ, n_layers: int, generator: torch.Generator | None = None) -> WhisperVQ:
    """``vq`` with ``n_layers`` transformer blocks after the bottleneck: its own blocks, then
    new ones whose output projections (attention and MLP) start at zero, so each new block is
    the identity and the deeper model gives exactly ``vq``'s features until it trains.

    Everything else (codebook and its EMA state, mask code, positions, projections) is
    ``vq``'s, so its ids are unchanged. For continuing a trained tokenizer with more capacity
    to rebuild encoder states from codes.
    """
    have = vq.config.n_layers
    if n_layers < have:
        raise ValueError(f"n_layers {n_layers} is below the source's {have}; blocks only grow")
    seed = int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        deep = WhisperVQ(replace(vq.config, n_layers=n_layers))
    loaded = deep.load_state_dict(vq.state_dict(), strict=False)
    new = tuple(f"blocks.{i}." for i in range(have, n_layers))
    if loaded.unexpected_keys or not all(k.startswith(new) for k in loaded.missing_keys):
        raise ValueError(f"bottlenecks differ beyond the blocks: {loaded}")
    with torch.no_grad():
        for block in deep.blocks[have:]:
            for layer in (block.out, block.mlp[2]):
                layer.weight.zero_(), layer.bias.zero_()
    return deep.to(next(vq.parameters()).device).train(vq.training)


def merge_codebooks(large: WhisperVQ, small: WhisperVQ) -> WhisperVQ:
    """``large``'s codes and mask first, then ``small``'s codes: ids ``[0, N)`` are ``large``'s
    codes, ``N`` the mask, ``N + 1 + j`` ``small``'s code ``j`` (2048 + 1 + 512 = 2561 ids).

    Every other weight is ``large``'s (it was grown from ``small`` and trained on).
    """
    a, b = large.config, small.config
    if a.merged_codes or b.merged_codes:
        raise ValueError("merge two bottlenecks that have not been merged before")
    for name in ("d_model", "codebook_dim", "use_cosine_sim", "downsample", "n_audio_ctx"):
        if getattr(a, name) != getattr(b, name):
            raise ValueError(
                f"cannot merge: {name} differs ({getattr(a, name)} vs {getattr(b, name)})"
            )
    merged = WhisperVQ(replace(a, merged_codes=b.codebook_size, kmeans_init=False))
    _copy_all_but_codebook(large, merged)
    codes = torch.cat([large.vq.codebook.detach(), small.vq.codebook.detach()])
    usage = torch.cat([m.vq._codebook.cluster_size[0].detach() for m in (large, small)])
    _set_codebook(merged, codes, usage)
    return merged


@torch.no_grad()
def code_space(vq: WhisperVQ, encoder_states: Tensor, frame_mask: Tensor | None = None) -> Tensor:
    """``(n, codebook_dim)`` the vectors the codebook is searched with, one per real token of
    ``encoder_states`` (``forward``'s arguments), in order: pooled, through the MLP and
    ``project_in``, and unit length for a cosine codebook. Float32, no graph."""
    mask = vq.token_mask(frame_mask, encoder_states.shape[0], encoder_states.device)
    z = vq.vq.project_in(vq._pool(encoder_states.float())[mask]).float()
    return F.normalize(z, dim=-1) if vq.config.use_cosine_sim else z


@dataclass
class CodebookRefinement:
    """What ``refine_codebook`` did: ``vectors`` searched, ``iterations`` run, the mean
    squared distance from each vector to its nearest code before and after (for unit
    vectors, 2 - 2 cos), ``codes_moved`` (codes nearest to at least one vector in the last
    iteration; the others stay where they were) and ``ids_changed``, the share of vectors
    whose nearest code is a different id afterwards."""

    vectors: int
    iterations: int
    error_before: float
    error_after: float
    codes_moved: int
    ids_changed: float

    def to_dict(self) -> dict:
        return asdict(self)


def _nearest(vectors: Tensor, codes: Tensor, cosine: bool, chunk: int = 32768):
    """Squared distance to, and row of, each vector's nearest code."""
    distance = [vectors.new_zeros(0, dtype=torch.float32)]
    rows = [torch.zeros(0, dtype=torch.long, device=vectors.device)]
    for start in range(0, len(vectors), chunk):
        v = vectors[start : start + chunk].float()
        if cosine:
            best = (v @ codes.T).max(-1)
            distance.append(2 - 2 * best.values)
        else:
            best = torch.cdist(v, codes).min(-1)
            distance.append(best.values.square())
        rows.append(best.indices)
    return torch.cat(distance), torch.cat(rows)


@torch.no_grad()
def refine_codebook(
    vq: WhisperVQ,
    vectors: Tensor,
    iterations: int = 1,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> CodebookRefinement:
    """Lloyd (k-means) steps on ``vq``'s codebook in place: each code moves to the mean of the
    ``vectors`` (``code_space`` of training data) nearest to it, re-normalised for a cosine
    codebook; a code nearest to none stays. Neither step can raise the mean distance from a
    vector to its code.

    Training leaves every code an exponential moving average of the last few batches' vectors
    (decay 0.8 by default: about five batches, one or two vectors each at 2048 codes), so the
    codes sit near, not at, the means of what they stand for; one step over the whole training
    set puts them there. Ids change where a vector now lies nearer another code. The EMA usage
    stays as it was, so training can go on from the result.

    ``reduce`` (for data split over processes, e.g. ``accelerator.reduce(t, "sum")``) sums a
    tensor over the processes: each passes its own share of the vectors, and all of them end
    with the same codebook, that of the vectors together."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    if vectors.ndim != 2 or vectors.shape[1] != vq.config.codebook_dim:
        raise ValueError(
            f"expected vectors (n > 0, {vq.config.codebook_dim}), got {tuple(vectors.shape)}"
        )
    total = reduce or (lambda t: t)
    n = int(total(torch.tensor(float(len(vectors)), device=vectors.device)))
    if not n:
        raise ValueError(f"expected vectors (n > 0, {vq.config.codebook_dim}), got none")
    cosine = vq.config.use_cosine_sim
    codes = vq.vq.codebook.detach().float().clone().to(vectors.device)
    if cosine:
        codes = F.normalize(codes, dim=-1)
    before, first = _nearest(vectors, codes, cosine)
    rows = first
    for _ in range(iterations):
        sums = total(torch.zeros_like(codes).index_add_(0, rows, vectors.float()))
        counts = total(torch.bincount(rows, minlength=len(codes)).float())
        means = F.normalize(sums, dim=-1) if cosine else sums / counts.clamp(min=1)[:, None]
        codes = torch.where(counts[:, None] > 0, means, codes)
        after, rows = _nearest(vectors, codes, cosine)
    book = vq.vq._codebook
    _set_codebook(vq, codes.to(book.embed), book.cluster_size[0].detach().clone())
    mean = lambda t: float(total(t.sum()) / n)  # noqa: E731
    return CodebookRefinement(
        vectors=n, iterations=iterations, error_before=mean(before), error_after=mean(after),
        codes_moved=int((counts > 0).sum()), ids_changed=mean((rows != first).float()),
    )  # fmt: skip


DRIFTED_BELOW = 0.5  # cosine between a code and its counterpart: below, it was re-seeded


@torch.no_grad()
def average_bottlenecks(
    models: list[WhisperVQ],
    weights: list[float] | None = None,
    drifted: Literal["last", "mean"] = "last",
) -> WhisperVQ:
    """The weighted average of bottlenecks trained from one start (checkpoint averaging, or
    WiSE-FT's interpolation between a model and its fine-tuned copy): every weight is averaged,
    codes index by index (re-normalised for cosine codebooks) with their EMA usage.

    Meaningful only where the models share an origin, so that code ``i`` is the same code in
    each: ``code_agreement`` says how far apart they drifted. A code whose cosine to the last
    model's falls below ``DRIFTED_BELOW`` in any model was re-seeded in between (dead-code
    replacement puts an unrelated code at the index): ``drifted="last"`` takes it, and its
    usage, from the last model instead of averaging codes that have nothing in common;
    ``"mean"`` averages every code. ``weights`` (default equal) must be positive; they are
    normalised to sum to 1.
    """
    if drifted not in ("last", "mean"):
        raise ValueError(f"drifted must be 'last' or 'mean', not {drifted!r}")
    if len(models) < 2:
        raise ValueError("averaging needs at least two bottlenecks")
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError(f"{len(weights)} weights for {len(models)} bottlenecks")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    first = models[0].config.to_dict()
    for index, model in enumerate(models[1:], 1):
        other = model.config.to_dict()
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise ValueError(
                f"bottleneck {index} differs from bottleneck 0 in {', '.join(differ)}: only "
                "bottlenecks of one architecture and codebook layout can be averaged"
            )  # fmt: skip
    total = sum(weights)
    shares = [w / total for w in weights]
    averaged = WhisperVQ(replace(models[0].config, kmeans_init=False))
    states = [m.state_dict() for m in models]
    state = {
        key: sum(s * st[key].float() for s, st in zip(shares, states)).to(value.dtype)
        if value.is_floating_point() else value
        for key, value in states[0].items()
        if not key.startswith(_CODEBOOK_PREFIX)
    }  # fmt: skip
    _load_all_but_codebook(state, averaged)
    codes = sum(s * m.vq.codebook.detach().float() for s, m in zip(shares, models))
    if models[0].config.use_cosine_sim:
        codes = F.normalize(codes, dim=-1)
    usage = sum(s * m.vq._codebook.cluster_size[0].detach().float() for s, m in zip(shares, models))
    if drifted == "last":
        last, moved = models[-1], reseeded_codes(models)
        codes = torch.where(moved[:, None], last.vq.codebook.detach().float(), codes)
        usage = torch.where(moved, last.vq._codebook.cluster_size[0].detach().float(), usage)
    _set_codebook(averaged, codes, usage)
    return averaged.eval()


@torch.no_grad()
def reseeded_codes(models: list[WhisperVQ]) -> Tensor:
    """``(n_searchable,)`` True where some model's code lies below ``DRIFTED_BELOW`` cosine
    from the last model's at that index (re-seeded in between, or trained apart)."""
    agreement = torch.stack([code_agreement(models[-1], m) for m in models])
    return agreement.min(0).values < DRIFTED_BELOW


@torch.no_grad()
def code_agreement(a: WhisperVQ, b: WhisperVQ) -> Tensor:
    """``(n_searchable,)`` cosine similarity between code ``i`` of ``a`` and of ``b``: near 1
    where both kept the code (fine-tuned copies), low where dead-code replacement or separate
    training put different codes at an index (averaging those makes codes neither had)."""
    return F.cosine_similarity(a.vq.codebook.float(), b.vq.codebook.float(), dim=-1)
