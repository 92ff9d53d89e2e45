"""A lean incremental forward pass over a Hugging Face Whisper model's own weights.

``transformers``' generic ``generate`` spends most of a CPU decoding step in Python
bookkeeping. This module runs the same arithmetic with fused q/k/v projections, a
preallocated key/value cache and cross-attention keys/values computed once per window, and
reads its weights from the ``WhisperForConditionalGeneration`` it wraps (no copy on disk,
so students and fine-tuned models decode the same way). Outputs match the transformers
forward pass to float32 rounding (tested).

Rows of a batch may have prompts of different lengths: prompts are right-aligned in the
cache, each token keeps its own learned position, and the empty slots on the left are
masked. Shapes: ``(batch, n_mels, 3000)`` features -> ``(batch, 1500, d_model)`` encoder
states (fewer frames give fewer states: a shortened audio context, ``encoder_states``);
decoder steps take ``(batch, n_new)`` tokens and return ``(batch, n_new, vocab)``.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from whisperforge.models import presets


@dataclass
class _Layer:
    ln1: tuple[Tensor, Tensor]
    qkv_w: Tensor
    qkv_b: Tensor
    out_w: Tensor
    out_b: Tensor
    ln2: tuple[Tensor, Tensor]
    cq_w: Tensor
    cq_b: Tensor
    ckv_w: Tensor
    ckv_b: Tensor
    cout_w: Tensor
    cout_b: Tensor
    ln3: tuple[Tensor, Tensor]
    fc1_w: Tensor
    fc1_b: Tensor
    fc2_w: Tensor
    fc2_b: Tensor


def _ln(module) -> tuple[Tensor, Tensor]:
    return module.weight, module.bias


def _fuse_layer(layer) -> _Layer:
    sa, ca = layer.self_attn, layer.encoder_attn
    zeros = torch.zeros_like(sa.q_proj.bias)
    return _Layer(
        ln1=_ln(layer.self_attn_layer_norm),
        qkv_w=torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]),
        qkv_b=torch.cat([sa.q_proj.bias, zeros, sa.v_proj.bias]),
        out_w=sa.out_proj.weight,
        out_b=sa.out_proj.bias,
        ln2=_ln(layer.encoder_attn_layer_norm),
        cq_w=ca.q_proj.weight,
        cq_b=ca.q_proj.bias,
        ckv_w=torch.cat([ca.k_proj.weight, ca.v_proj.weight]),
        ckv_b=torch.cat([zeros, ca.v_proj.bias]),
        cout_w=ca.out_proj.weight,
        cout_b=ca.out_proj.bias,
        ln3=_ln(layer.final_layer_norm),
        fc1_w=layer.fc1.weight,
        fc1_b=layer.fc1.bias,
        fc2_w=layer.fc2.weight,
        fc2_b=layer.fc2.bias,
    )


@dataclass
class DecoderState:
    """Caches of one batch of decoding rows.

    ``self_k``/``self_v``: per layer ``(rows, heads, max_slots, head_dim)``; ``cross``: per
    layer ``(k, v)`` each ``(rows, heads, n_audio_ctx, head_dim)``; ``pad``: ``(rows,
    max_slots)`` True where a slot is empty; ``length``: slots used so far (same for all
    rows); ``positions``: ``(rows,)`` next learned position of each row.
    """

    self_k: list[Tensor]
    self_v: list[Tensor]
    cross: list[tuple[Tensor, Tensor]]
    pad: Tensor
    length: int
    positions: Tensor

    def select(self, index: Tensor) -> DecoderState:
        """Keep (and reorder, repeat) rows ``index``: beam search and finished-row pruning."""
        return DecoderState(
            [k.index_select(0, index) for k in self.self_k],
            [v.index_select(0, index) for v in self.self_v],
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross],
            self.pad.index_select(0, index),
            self.length,
            self.positions.index_select(0, index),
        )


def encoder_states(encoder: torch.nn.Module, features: Tensor) -> Tensor:
    """A Whisper encoder's ``(batch, frames // 2, d_model)`` states for ``(batch, n_mels,
    frames)`` log-mel with any even number of frames up to 30 s (3000).

    30 s goes through the transformers forward; fewer frames through the same modules with
    the first ``frames // 2`` learned positions (transformers insists on 3000 frames). The
    states then differ from the first rows of the 30 s states, since attention sees less
    padding: models are trained for it (``audio_context: dynamic``, docs/distill.md)."""
    full = encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    frames = features.shape[-1]
    if frames == full:
        return encoder(features).last_hidden_state
    if frames > full or frames % 2 or frames < 2:
        raise ValueError(f"the encoder takes an even number of frames up to {full}, not {frames}")
    x = F.gelu(encoder.conv1(features))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        out = layer(x, None, **_layer_kwargs(type(layer)))
        x = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
    return encoder.layer_norm(x)


@functools.cache
def _layer_kwargs(layer_class: type) -> dict:
    """transformers 4's encoder layers take a required ``layer_head_mask`` (read once a class)."""
    params = inspect.signature(layer_class.forward).parameters
    return {"layer_head_mask": None} if "layer_head_mask" in params else {}


ENCODER_DTYPES = {name: getattr(torch, name) for name in presets.ENCODER_DTYPES}


def encoder_dtype_of(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` (or a ``torch.dtype``) -> ``torch.bfloat16``; None stays None; anything
    outside ``ENCODER_DTYPES`` is a ValueError naming the choices."""
    if name is None or isinstance(name, torch.dtype) and name in ENCODER_DTYPES.values():
        return name
    if isinstance(name, str) and name in ENCODER_DTYPES:
        return ENCODER_DTYPES[name]
    raise ValueError(f"encoder dtype must be one of {', '.join(ENCODER_DTYPES)}, not {name!r}")


# encoder states per CPU encoder call: larger batches spill the caches and run slower per row
CPU_ENCODER_STATES = 1500


def cpu_encoder_rows(n_frames: int) -> int:
    """How many windows of ``n_frames`` log-mel frames the encoder takes at once on CPU.

    A CPU encodes a batch of windows faster one group of about ``CPU_ENCODER_STATES``
    states at a time than all at once: past that the activations of a layer (a 30 s
    window's MLP alone holds 12 MB) no longer stay in cache. On 2 threads of an AMD EPYC,
    whisper-base took 0.576 s a 30 s window one at a time against 0.655 s in a batch of 8,
    0.371 s against 0.407 s a 21 s window; 10 s and 5 s windows, in groups of 3 and 6, as
    long as in one call (``benchmarks/bench_encoder.py``, BENCHMARKS.md)."""
    return max(1, CPU_ENCODER_STATES // max(1, n_frames // 2))


# exact (float32) logits for each row's this many best text tokens of the bfloat16 screen
SCREEN_EXACT = 32


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware: AVX512-BF16 (AMD Zen 4 and
    later, Intel Cooper Lake) or AMX tiles (Intel Sapphire Rapids and later). There bf16
    matrix products run faster than float32 (training autocast, the vocabulary screen); on
    other CPUs bf16 is emulated and slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_shared_session(session: InferenceSession, hf_model: torch.nn.Module,
                         encoder_dtype=None, vocab_screen: bool | None = None) -> None:  # fmt: skip
    """Refuse to share ``session`` with a user of ``hf_model`` unless it runs over those very
    weights, and unless the user leaves the session's precision settings alone."""
    if session.hf_model is not hf_model:
        raise ValueError("session must be one over the given ModelBundle's model")
    if encoder_dtype is not None or vocab_screen is not None:
        raise ValueError("a shared session keeps its own encoder_dtype and vocab_screen")


class InferenceSession:
    """Encoder + incremental decoder over a ``WhisperForConditionalGeneration``'s weights.

    ``encoder_dtype`` runs the encoder in another precision than the model's (a converted
    copy of the encoder; the model itself is untouched) and hands its states back in the
    model's dtype. On CPUs with bfloat16 matrix instructions (AVX512-BF16, AMX) a bfloat16
    encoder is the one large speed-up for long audio, where the encoder's 30 s windows
    dominate; the decoder's few-row steps stay in the model's precision, where bfloat16 makes
    them slower on CPU (docs/transcribe.md, "Encoder precision").

    ``vocab_screen`` computes the vocabulary projection of decoding steps through a
    bfloat16 copy of the token embedding, then exactly (float32) for each row's
    ``SCREEN_EXACT`` best text tokens and for every special and timestamp token (``logits``).
    None (default): on for a float32 model on a CPU with bfloat16 matrix instructions
    (``cpu_has_bf16_matmul``), where it reads half the bytes of the largest product of a step.
    """

    def __init__(
        self,
        hf_model: torch.nn.Module,
        encoder_dtype: str | torch.dtype | None = None,
        vocab_screen: bool | None = None,
    ):
        self.hf_model = hf_model
        decoder = hf_model.model.decoder
        self.encoder = hf_model.model.encoder
        self.embed = decoder.embed_tokens.weight
        wanted = encoder_dtype_of(encoder_dtype)
        self.encoder_dtype = self.embed.dtype if wanted is None else wanted
        if self.encoder_dtype != self.embed.dtype:
            self.encoder = copy.deepcopy(self.encoder).to(self.encoder_dtype)
        self.positions = decoder.embed_positions.weight
        self.final_ln = _ln(decoder.layer_norm)
        self.n_heads = hf_model.config.decoder_attention_heads
        self.d_model = hf_model.config.d_model
        self.n_text_ctx = hf_model.config.max_target_positions
        with torch.no_grad():
            self.layers = [_fuse_layer(layer) for layer in decoder.layers]
        # ids from the end token on are specials and timestamps, never screened
        self.text_vocab = hf_model.config.eos_token_id
        self.screen = self._screen(vocab_screen)

    def _screen(self, wanted: bool | None) -> Tensor | None:
        """The bfloat16 copy of the embedding ``logits`` screens with, or None."""
        usable = (
            isinstance(self.text_vocab, int)
            and SCREEN_EXACT < self.text_vocab < self.embed.shape[0]
            and self.embed.dtype == torch.float32
        )
        if wanted is None:
            wanted = usable and self.embed.device.type == "cpu" and cpu_has_bf16_matmul()
        elif wanted and not usable:
            raise ValueError("the vocabulary screen needs a float32 model with an end token")
        return self.embed.detach().to(torch.bfloat16) if wanted else None

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def encoder_dtype_name(self) -> str:
        """The precision the encoder runs in, by name (``"float32"``, ``"bfloat16"``)."""
        return str(self.encoder_dtype).removeprefix("torch.")

    @torch.inference_mode()
    def encode(self, features: Tensor) -> Tensor:
        """``(batch, n_mels, n_frames)`` log-mel -> ``(batch, n_frames // 2, d_model)``
        (30 s: 3000 frames -> 1500 states).

        On CPU the rows go through the encoder in groups of ``cpu_encoder_rows`` (each
        row's states do not depend on the others in its batch)."""
        features = features.to(device=self.embed.device, dtype=self.encoder_dtype)
        group = features.shape[0]
        if features.device.type == "cpu":
            group = cpu_encoder_rows(features.shape[-1])
        parts = [encoder_states(self.encoder, part) for part in features.split(group)]
        states = parts[0] if len(parts) == 1 else torch.cat(parts)
        return states.to(self.dtype)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, -1).transpose(1, 2)

    @torch.inference_mode()
    def start(
        self, audio_features: Tensor, prompt_lengths: list[int], max_new: int
    ) -> DecoderState:
        """Allocate caches for rows whose prompts have ``prompt_lengths`` tokens."""
        rows = audio_features.shape[0]
        slots = max(prompt_lengths) + max_new
        dh = self.d_model // self.n_heads
        kw = dict(device=audio_features.device, dtype=audio_features.dtype)
        cross = []
        for layer in self.layers:
            kv = F.linear(audio_features, layer.ckv_w, layer.ckv_b)
            k, v = kv.chunk(2, dim=-1)
            cross.append((self._heads(k).contiguous(), self._heads(v).contiguous()))
        width = max(prompt_lengths)
        pad = torch.ones(rows, slots, dtype=torch.bool, device=audio_features.device)
        for i, n in enumerate(prompt_lengths):
            pad[i, width - n :] = False
        return DecoderState(
            [torch.zeros(rows, self.n_heads, slots, dh, **kw) for _ in self.layers],
            [torch.zeros(rows, self.n_heads, slots, dh, **kw) for _ in self.layers],
            cross,
            pad,
            0,
            torch.zeros(rows, dtype=torch.long, device=audio_features.device),
        )

    @torch.inference_mode()
    def prompt(self, state: DecoderState, prompts: list[list[int]]) -> Tensor:
        """Run the (right-aligned) prompts; returns hidden states ``(rows, width, d_model)``."""
        width = max(len(p) for p in prompts)
        device = state.pad.device
        tokens = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        pos = torch.zeros_like(tokens)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            pos[i, width - len(p) :] = torch.arange(len(p))
        state.positions = torch.tensor([len(p) for p in prompts], device=device)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        allowed = causal[None] & ~state.pad[:, None, :width]
        # a padded query row attends nowhere; let it see itself so softmax stays finite
        allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]
        return self._run(state, tokens, pos, allowed[:, None])

    @torch.inference_mode()
    def step(self, state: DecoderState, tokens: Tensor) -> Tensor:
        """One new token per row ``(rows,)``; returns hidden states ``(rows, 1, d_model)``."""
        pos = state.positions[:, None]
        state.positions = state.positions + 1
        allowed = ~state.pad[:, None, None, : state.length + 1]
        allowed[..., state.length] = True
        return self._run(state, tokens[:, None], pos, allowed)

    @torch.inference_mode()
    def extend(self, state: DecoderState, tokens: Tensor) -> Tensor:
        """Several new tokens per row ``(rows, n)``, causal among themselves; returns hidden
        states ``(rows, n, d_model)``. Speculative decoding verifies a draft this way."""
        n = tokens.shape[1]
        pos = state.positions[:, None] + torch.arange(n, device=tokens.device)
        state.positions = state.positions + n
        length = state.length
        allowed = (~state.pad[:, None, None, : length + n]).repeat(1, 1, n, 1)
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
        allowed[..., length:] = causal
        return self._run(state, tokens, pos, allowed)

    @staticmethod
    def rewind(state: DecoderState, n_tokens: int) -> None:
        """Forget the last ``n_tokens`` fed to every row (their cache slots get overwritten)."""
        state.length -= n_tokens
        state.positions = state.positions - n_tokens

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        """``(..., d_model)`` final hidden states -> ``(..., vocab)`` float32 logits.

        The vocabulary projection reads the whole ``(vocab, d_model)`` embedding for a few
        rows. Computed as ``embed @ hidden.T`` (one tall matrix product) it runs well ahead of
        ``F.linear``'s ``hidden @ embed.T`` on CPU BLAS for the 1-16 rows of a decoding step
        (``benchmarks/bench_head.py``), with no transposed copy of the weight. A single row is
        doubled: the matrix-vector path is the slow one.

        With the vocabulary screen (``vocab_screen``) the product runs on the bfloat16 copy
        (half the bytes to read; logits within a few hundredths of float32's), and then each row's
        ``SCREEN_EXACT`` best text tokens and every token from the end token on (language,
        task, no-speech, timestamps) are computed again in float32. What decoding decides
        from (the best tokens, timestamps against text, language and no-speech scores) is
        float32's unless a row's best text token is not among its screen's 32 best; the
        rest of the vocabulary, which only adds to softmax normalisers, keeps bfloat16 values.
        """
        lead, d = hidden.shape[:-1], hidden.shape[-1]
        rows = hidden.reshape(-1, d)
        n = rows.shape[0]
        # a real copy: a stride-0 view takes the slow path too
        both = rows.repeat(2, 1) if n == 1 else rows
        if self.screen is None:
            out = torch.mm(self.embed, both.t())[:, :n].t()
            return out.float().contiguous().reshape(*lead, -1)
        text = self.text_vocab
        out = torch.mm(self.screen, both.to(torch.bfloat16).t())[:, :n].t().float().contiguous()
        best = out[:, :text].topk(SCREEN_EXACT, dim=-1).indices
        out.scatter_(1, best, torch.einsum("nkd,nd->nk", self.embed[best], rows))
        out[:, text:] = torch.mm(self.embed[text:], both.t())[:, :n].t()
        return out.reshape(*lead, -1)

    @torch.inference_mode()
    def cross_attention(
        self, audio_features: Tensor, tokens: Tensor, heads: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """One teacher-forced (causal) pass over ``tokens`` ``(rows, n)`` without a cache:
        the cross-attention weights of ``heads`` (``(layer, head)`` pairs) ``(rows,
        len(heads), n, n_audio_ctx)``, softmax over ``audio_features``' frames, and the
        logits ``(rows, n, vocab)``. Word timestamps read the weights (``timing``)."""
        n = tokens.shape[1]
        x = F.embedding(tokens, self.embed) + self.positions[:n]
        wanted: dict[int, list[int]] = {}
        for layer, head in heads:
            wanted.setdefault(layer, []).append(head)
        found: dict[tuple[int, int], Tensor] = {}
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (self.d_model,), *layer.ln1)
            q, k, v = map(self._heads, F.linear(h, layer.qkv_w, layer.qkv_b).chunk(3, dim=-1))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.linear(self._merge(a), layer.out_w, layer.out_b)
            h = F.layer_norm(x, (self.d_model,), *layer.ln2)
            q = self._heads(F.linear(h, layer.cq_w, layer.cq_b))
            k, v = map(self._heads, F.linear(audio_features, layer.ckv_w, layer.ckv_b).chunk(2, -1))
            if i in wanted:
                weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
                a = weights @ v
                found.update({(i, hd): weights[:, hd] for hd in wanted[i]})
            else:
                a = F.scaled_dot_product_attention(q, k, v)
            x = x + F.linear(self._merge(a), layer.cout_w, layer.cout_b)
            h = F.layer_norm(x, (self.d_model,), *layer.ln3)
            x = x + F.linear(
                F.gelu(F.linear(h, layer.fc1_w, layer.fc1_b)), layer.fc2_w, layer.fc2_b
            )
        logits = self.logits(F.layer_norm(x, (self.d_model,), *self.final_ln))
        return torch.stack([found[tuple(pair)] for pair in heads], dim=1), logits

    def _run(self, state: DecoderState, tokens: Tensor, pos: Tensor, allowed: Tensor) -> Tensor:
        t = tokens.shape[1]
        lo, hi = state.length, state.length + t
        x = F.embedding(tokens, self.embed) + F.embedding(pos, self.positions)
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, (self.d_model,), *layer.ln1)
            q, k, v = map(self._heads, F.linear(h, layer.qkv_w, layer.qkv_b).chunk(3, dim=-1))
            state.self_k[i][:, :, lo:hi] = k
            state.self_v[i][:, :, lo:hi] = v
            a = F.scaled_dot_product_attention(
                q, state.self_k[i][:, :, :hi], state.self_v[i][:, :, :hi], attn_mask=allowed
            )
            x = x + F.linear(self._merge(a), layer.out_w, layer.out_b)
            h = F.layer_norm(x, (self.d_model,), *layer.ln2)
            q = self._heads(F.linear(h, layer.cq_w, layer.cq_b))
            a = F.scaled_dot_product_attention(q, *state.cross[i])
            x = x + F.linear(self._merge(a), layer.cout_w, layer.cout_b)
            h = F.layer_norm(x, (self.d_model,), *layer.ln3)
            x = x + F.linear(
                F.gelu(F.linear(h, layer.fc1_w, layer.fc1_b)), layer.fc2_w, layer.fc2_b
            )
        state.length = hi
        return F.layer_norm(x, (self.d_model,), *self.final_ln)

    def _merge(self, a: Tensor) -> Tensor:
        b, _, t, _ = a.shape
        return a.transpose(1, 2).reshape(b, t, self.d_model)
