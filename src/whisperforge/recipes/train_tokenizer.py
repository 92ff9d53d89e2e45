"""Speech-tokenizer training: a WhisperVQ bottleneck between a frozen Whisper encoder and its
frozen decoder learns to keep what the decoder needs to transcribe (Ichigo Whisper's recipe,
``seeds/ichigo-asr.txt``; WhisperSpeech's ``vq_stoks``).

Only the bottleneck trains. For a batch of 30 s windows the encoder runs once (or its output
comes from the on-disk ``EncoderCache``); the bottleneck turns its states into features; the
frozen decoder, fed those features and the target tokens, gives the student logits:

- phase 1 (the first ``phase1_steps`` optimizer steps): ``CE(transcript) + kl_weight *
  KL(teacher || student) + commitment``; the teacher is the same frozen decoder fed the real
  encoder states (under ``inference_mode``: nothing of it is kept for the backward pass);
- phase 2 (the next ``phase2_steps``): ``CE + commitment``; the teacher is not run.

Targets: ``<|sot|><|lang|><|transcribe|><|notimestamps|> text <|eot|>`` (an English-only
model has no language/task tokens) from each row's ``text`` (or ``pseudo_text``), at most the
decoder's 448 positions; they are tokenized once at setup. The KL and CE are averaged over real
label positions, selected before the vocabulary projection: padding never reaches a softmax.
Manifests are mixed by weight (``training.mixing.MixedOrder``), deterministically for a seed.
``init_from`` starts from a trained tokenizer, grown to ``codebook_size`` codes when it has
fewer (``grow_codebook``; ``whisperforge tokens merge`` then joins the two) and deepened to
``bottleneck.n_layers`` blocks when it has fewer (``deepen``: new blocks start as the identity).

The loop is explicit: ``setup`` -> (``train_step``, ``evaluate``, ``save_checkpoint``)* ->
``finish``; Accelerate runs it on one CPU process, ``torchrun --nproc_per_node N`` CPU
processes or GPUs. See ``docs/tokens.md``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from whisperforge.audio import SAMPLE_RATE, audio_samples
from whisperforge.losses import tokenizer_loss
from whisperforge.models.vq import (
    BOTTLENECK_PARTS,
    QUANTIZER_SETTINGS,
    VQConfig,
    WhisperVQ,
    code_space,
    codebook_usage,
    frame_mask,
    freeze_parts,
    refine_codebook,
)
from whisperforge.training.config import TrainingConfig, to_dict
from whisperforge.training.data import Batch, collate
from whisperforge.training.loop import (
    checkpoint_on_schedule,
    evaluate_and_log,
    finish_run,
    mean_over_processes,
    run_steps,
)

logger = logging.getLogger(__name__)

MAX_WINDOW_SECONDS = 30.0  # one encoder window per training row


@dataclass(frozen=True)
class TrainSource:
    """One training manifest and its share of the draws."""

    manifest: str
    weight: float = 1.0  # relative share of training rows drawn from this manifest
    language: str | None = None  # for rows without a "language"

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"{self.manifest}: weight must be > 0, not {self.weight}")


@dataclass(frozen=True)
class BottleneckOptions:
    """``VQConfig`` fields of a new bottleneck; the width is the teacher's. With ``init_from``
    the sizes come from the tokenizer continued from (``codebook_size`` may grow it), and the
    quantizer's training settings (``QUANTIZER_SETTINGS``) apply where they are set: unset
    (None), a new bottleneck gets ``VQConfig``'s default and a continued one keeps its own."""

    codebook_size: int = 2048
    codebook_dim: int = 64
    n_layers: int | None = None  # None: 1, or init_from's; more than init_from's deepens it
    n_heads: int | None = None  # None: heads of 64 channels (the presets)
    ffn_mult: int = 4
    ema_decay: float | None = None  # VQConfig default 0.8
    commitment_weight: float | None = None  # 1.0
    threshold_ema_dead_code: float | None = None  # 2.0
    kmeans_init: bool = False
    rotation_trick: bool = False
    # "data": positions, projections and codebook fitted to the encoder states of
    # ``init_windows`` training windows (``models.vq.init_from_states``); "random": as built
    init: Literal["data", "random"] = "data"
    init_windows: int = 64

    def __post_init__(self) -> None:
        if self.init_windows < 1:
            raise ValueError(f"bottleneck.init_windows must be >= 1, not {self.init_windows}")

    def vq_config(self, d_model: int) -> VQConfig:
        fields = to_dict(self)
        fields.pop("init"), fields.pop("init_windows")
        heads = fields.pop("n_heads") or max(1, d_model // 64)
        if fields["n_layers"] is None:
            fields["n_layers"] = 1
        for name in QUANTIZER_SETTINGS:
            if fields[name] is None:
                del fields[name]
        return VQConfig(d_model=d_model, n_heads=heads, **fields)


@dataclass(frozen=True)
class TokenizerTraining(TrainingConfig):
    """``TrainingConfig`` with Ichigo Whisper's optimisation defaults: AdamW lr 1e-3, betas
    (0.9, 0.95), weight decay 1e-3, 500 warm-up steps, cosine to lr / 25, gradient clip 2.
    The run's length is ``phase1_steps + phase2_steps``: ``max_steps`` and ``epochs`` are
    not used."""

    output_dir: str = "runs/tokenizer"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    lr_decay: Literal["linear", "cosine", "constant"] = "cosine"
    final_lr_fraction: float = 1 / 25
    max_grad_norm: float | None = 2.0
    eval_every: int = 250
    save_every: int = 100


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Options of ``whisperforge tokenizer train``; paths relative to the working directory."""

    teacher: str = "whisper-base"
    train: tuple[TrainSource, ...] = ()
    dev_manifest: str | None = None  # any manifest; None: no dev WER
    dev_limit: int | None = None  # evaluate on the first N dev rows only
    text_field: Literal["text", "pseudo_text"] = "text"
    bottleneck: BottleneckOptions = field(default_factory=BottleneckOptions)
    init_from: str | None = None  # a trained tokenizer to continue from or grow
    grow_noise: float = 0.01  # std of the noise on grown codes (code space)
    phase1_steps: int = 1000  # with the KL to the continuous teacher
    phase2_steps: int = 500  # without it
    kl_weight: float = 1.0
    temperature: float = 1.0  # of the KL (Ichigo: 1)
    # weight of an extra MSE between the bottleneck's features and the encoder states on real
    # frames: not in Ichigo's recipe (0); a dense target that speeds up short CPU runs
    feature_weight: float = 0.0
    # share of real tokens the block after the bottleneck reads as their nearest other code
    # in training (WhisperVQ.swap_to_neighbours): robustness to the code flips a new voice
    # brings; not in Ichigo's recipe (0)
    code_swap: float = 0.0
    # bottleneck parts that do not train (``models.vq.BOTTLENECK_PARTS``): "before_codes",
    # "after_codes"; the codebook's EMA runs either way
    freeze: tuple[str, ...] = ()
    usage_window: int = 50  # codebook usage is logged over the codes of the last N steps
    # Lloyd steps on the codebook after the last step, over every training row
    # (``models.vq.refine_codebook``; ``tokens refine`` does it to a saved tokenizer); 0: none
    refine_codebook: int = 0
    encoder_cache: str | None = None  # folder for frozen-encoder outputs (multi-epoch runs)
    eval_batch_size: int = 8
    training: TokenizerTraining = field(default_factory=TokenizerTraining)

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("train is required: a list of {manifest: path, weight: w}")
        if self.phase1_steps < 0 or self.phase2_steps < 0 or self.total_steps == 0:
            raise ValueError("phase1_steps and phase2_steps must be >= 0 and not both 0")
        if self.training.max_steps is not None:
            raise ValueError(
                "training.max_steps is not used here: set phase1_steps and phase2_steps"
            )
        if min(self.kl_weight, self.grow_noise, self.feature_weight) < 0 or self.temperature <= 0:
            raise ValueError(
                "kl_weight, feature_weight and grow_noise must be >= 0 and temperature > 0"
            )
        if not 0 <= self.code_swap < 1:
            raise ValueError(f"code_swap must be in [0, 1), not {self.code_swap}")
        unknown = sorted(set(self.freeze) - set(BOTTLENECK_PARTS))
        if unknown or len(set(self.freeze)) == len(BOTTLENECK_PARTS):
            raise ValueError(f"freeze takes at most one of {list(BOTTLENECK_PARTS)}, not "
                             f"{list(self.freeze)}")  # fmt: skip
        if self.refine_codebook < 0:
            raise ValueError(f"refine_codebook must be >= 0, not {self.refine_codebook}")
        for name in ("usage_window", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.dev_limit is not None and self.dev_limit < 1:
            raise ValueError("dev_limit must be >= 1 (or null for the whole dev manifest)")

    @property
    def total_steps(self) -> int:
        return self.phase1_steps + self.phase2_steps

    def phase(self, step: int) -> int:
        """Phase (1 or 2) of optimizer step ``step`` (0-based)."""
        return 1 if step < self.phase1_steps else 2


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    """One training (or dev) window: audio file, length, decoder tokens, reference text."""

    audio: str
    samples: int  # 16 kHz samples of audio (the rest of the 30 s window is padding)
    tokens: tuple[int, ...]  # <|sot|> ... text ... <|eot|> (capped at the decoder's context)
    language: str | None
    text: str


def target_tokens(tokenizer, text: str, language: str | None, max_length: int) -> list[int]:
    """``<|sot|>[<|lang|><|transcribe|>]<|notimestamps|> text <|eot|>``, at most
    ``max_length + 1`` tokens (the decoder reads all but the last); a capped target loses
    its end token rather than learn to stop early."""
    body = tokenizer.encode(" " + text.strip())
    seq = [*tokenizer.sot_sequence(language), tokenizer.no_timestamps, *body, tokenizer.eot]
    return seq[: max_length + 1]


def _row_language(utt, source: TrainSource, tokenizer) -> str | None:
    """The row's language for the prompt (None for an English-only model); raises
    ``ValueError`` for a language the model has no token for."""
    if not tokenizer.multilingual:
        return None
    language = utt.language or source.language
    if language not in tokenizer.language_tokens:
        raise ValueError(f"language {language!r}")
    return language


def load_source(source: TrainSource, text_field: str, tokenizer, max_length: int):
    """Examples of one manifest and its report ``{"manifest", "weight", "rows", "kept",
    "truncated", "dropped": {reason: n}}``."""
    from whisperforge.data.manifest import load_manifest

    report = load_manifest(source.manifest, max_duration=MAX_WINDOW_SECONDS)
    dropped = Counter(report.reasons())
    examples, truncated = [], 0
    for utt in report.kept:
        text = utt.text if text_field == "text" else utt.extra.get(text_field)
        if not isinstance(text, str) or not text.strip():
            dropped[f"no {text_field}"] += 1
            continue
        try:
            language = _row_language(utt, source, tokenizer)
        except ValueError as error:
            dropped[f"unknown {error}"] += 1
            continue
        tokens = target_tokens(tokenizer, text, language, max_length)
        truncated += tokens[-1] != tokenizer.eot
        examples.append(Example(utt.audio, audio_samples(utt.audio), tuple(tokens), language,
                                utt.text))  # fmt: skip
    counts = {
        "manifest": source.manifest, "weight": source.weight,
        "rows": len(report.kept) + len(report.skipped), "kept": len(examples),
        "truncated": truncated, "dropped": dict(dropped),
    }  # fmt: skip
    return examples, counts


def load_dev(config: TokenizerTrainConfig) -> list[Example]:
    """Dev windows (up to 30 s each; longer rows are left out with a warning)."""
    if config.dev_manifest is None:
        return []
    from whisperforge.recipes.evaluate import items_from_source

    items, skipped = items_from_source(config.dev_manifest)
    if skipped:
        logger.warning("dev manifest: %d rows skipped (%s)", len(skipped), skipped[0]["reason"])
    items = items[: config.dev_limit]
    dev = [
        Example(str(i.audio), audio_samples(str(i.audio)), (), i.language, i.text)
        for i in items
        if isinstance(i.audio, (str, Path))
    ]
    kept = [d for d in dev if d.samples <= MAX_WINDOW_SECONDS * SAMPLE_RATE]
    if len(kept) < len(dev):
        logger.warning("dev manifest: %d rows over 30 s left out", len(dev) - len(kept))
    return kept


# --------------------------------------------------------------------------- setup


def build_bottleneck(config: TokenizerTrainConfig, encoder) -> tuple[WhisperVQ, dict]:
    """A new bottleneck of the teacher ``encoder``'s width, or ``init_from``'s (grown to
    ``codebook_size`` codes when it has fewer); and how it was made, for the summary.

    A new bottleneck's output LayerNorm starts as a copy of the encoder's final one, so from
    the first step its features have the per-channel scale and offset the frozen decoder's
    cross-attention was trained on (otherwise the first hundreds of steps only learn that).
    """
    from whisperforge.models.vq import deepen, grow_codebook, with_quantizer_settings
    from whisperforge.tokens import load_bottleneck

    size = config.bottleneck.codebook_size
    d_model = encoder.layer_norm.normalized_shape[0]
    if config.init_from is None:
        vq = WhisperVQ(config.bottleneck.vq_config(d_model))
        vq.ln_post.load_state_dict(encoder.layer_norm.state_dict())
        return vq, {"init": "random, output norm from the encoder's"}
    source, meta = load_bottleneck(config.init_from)
    have = source.config
    if have.d_model != d_model:
        raise ValueError(f"init_from {config.init_from} has width {have.d_model}, but "
                         f"{config.teacher} has {d_model}")  # fmt: skip
    if have.merged_codes:
        raise ValueError(f"init_from {config.init_from} is a merged tokenizer; start from the "
                         "tokenizers it was merged from")  # fmt: skip
    if size < have.codebook_size:
        raise ValueError(f"bottleneck.codebook_size {size} is below init_from's "
                         f"{have.codebook_size}; codebooks only grow")  # fmt: skip
    origin = {"init": str(config.init_from), "from_codes": have.codebook_size}
    settings = {name: getattr(config.bottleneck, name) for name in QUANTIZER_SETTINGS}
    changed = {k: v for k, v in settings.items() if v is not None and v != getattr(have, k)}
    if changed:
        source = with_quantizer_settings(source, **changed)
        origin["quantizer"] = changed
    layers = have.n_layers if config.bottleneck.n_layers is None else config.bottleneck.n_layers
    if layers < have.n_layers:
        raise ValueError(f"bottleneck.n_layers {layers} is below init_from's "
                         f"{have.n_layers}; blocks only grow")  # fmt: skip
    if layers > have.n_layers:
        generator = torch.Generator().manual_seed(config.training.seed)
        source = deepen(source, layers, generator=generator)
        origin["deepened"] = {"from_layers": have.n_layers, "to_layers": layers}
    if size == have.codebook_size:
        return source.train(), origin
    generator = torch.Generator().manual_seed(config.training.seed)
    grown = grow_codebook(source, size, noise=config.grow_noise, generator=generator)
    return grown.train(), origin | {"grown_to": size}


def fit_to_states(config: TokenizerTrainConfig, vq: WhisperVQ, encoder, examples,
                  processes: int) -> dict:  # fmt: skip
    """``init_from_states`` on the encoder states of ``bottleneck.init_windows`` training
    windows spread evenly over each source (the same windows on every process, so every
    process computes the same start)."""
    from whisperforge.models.vq import init_from_states

    n = config.bottleneck.init_windows
    weights = [s.weight for s in config.train]
    picked: list[Example] = []
    for source, weight in zip(examples, weights):
        want = max(1, min(len(source), round(n * weight / sum(weights))))
        picked += [source[int(i * len(source) / want)] for i in range(want)]
    states = torch.cat([encoder([e.audio for e in picked[i : i + 8]]).float().cpu()
                        for i in range(0, len(picked), 8)])  # fmt: skip
    mask = frame_mask(torch.tensor([e.samples for e in picked]), states.shape[1])
    generator = torch.Generator().manual_seed(config.training.seed)
    per_step = tokens_per_step(config, examples, processes)
    fit = init_from_states(vq, states, mask, per_step, generator=generator)
    logger.info("bottleneck fitted to %d windows: %.0f %% of the residual variance kept, "
                "%d of %d codes used", fit["windows"], 100 * fit["variance_kept"],
                fit["codes_used"], vq.config.n_searchable)  # fmt: skip
    return {"init": "data (encoder states)", "fit": fit}


def preset_name(vq: VQConfig) -> str | None:
    """The preset this bottleneck's width and heads match, if any (recorded on save)."""
    from whisperforge.models.vq import preset_for_width

    try:
        name = preset_for_width(vq.d_model)
    except ValueError:
        return None
    return name if vq.n_heads == vq.d_model // 64 else None


@dataclass
class TokenizerRun:
    """Everything the loop touches; built by ``setup``."""

    config: TokenizerTrainConfig
    accelerator: object
    teacher: object  # ModelBundle, frozen
    bottleneck: torch.nn.Module  # prepared by Accelerate (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    examples: list[list[Example]]  # by source
    order: object  # MixedOrder
    encoder: object  # SharedEncoder
    checkpointer: object  # Checkpointer
    dev: list[Example]
    report: dict
    log: object | None = None  # TrainingLog on the main process
    usage: deque = field(default_factory=deque)  # code histograms (n_ids,) of the last steps
    step: int = 0
    position: int = 0  # batches of this process consumed
    refinement: dict | None = None  # refine_at_end's result, once done (kept in checkpoints)

    @property
    def vq(self) -> WhisperVQ:
        return self.accelerator.unwrap_model(self.bottleneck)

    @property
    def total_steps(self) -> int:
        return self.config.total_steps


LOG_COLUMNS = ["phase", "epoch", "lr", "loss", "ce_loss", "kl_loss", "commitment_loss",
               "grad_norm", "utilisation", "perplexity", "dead_codes", "dev_wer"]  # fmt: skip


def _load_data(config: TokenizerTrainConfig, teacher) -> tuple[list[list[Example]], dict]:
    max_length = teacher.model.config.max_target_positions
    sources, reports = [], []
    for source in config.train:
        examples, report = load_source(source, config.text_field, teacher.tokenizer, max_length)
        logger.info("%s: kept %d of %d rows", source.manifest, report["kept"], report["rows"])
        sources.append(examples)
        reports.append(report)
    empty = [r for r in reports if not r["kept"]]
    if empty:
        raise ValueError(f"no usable training rows in {empty[0]['manifest']}: {empty[0]}")
    return sources, {"sources": reports, "kept": sum(r["kept"] for r in reports)}


def setup(config: TokenizerTrainConfig) -> TokenizerRun:
    """Load the frozen teacher, build (or grow) the bottleneck, read the data, create the
    optimizer, schedule and accelerator, and resume from the newest checkpoint if asked."""
    from accelerate.utils import set_seed

    from whisperforge.models.loading import load_model
    from whisperforge.training.checkpoint import Checkpointer
    from whisperforge.training.encoder_cache import EncoderCache, SharedEncoder, cache_fingerprint
    from whisperforge.training.mixing import MixedOrder
    from whisperforge.training.runtime import make_accelerator, make_optimizer
    from whisperforge.training.schedule import make_scheduler

    tc = config.training
    accelerator = make_accelerator(tc)  # first: the process group exists before the VQ syncs
    set_seed(tc.seed)
    teacher = load_model(config.teacher)
    teacher.model.requires_grad_(False).eval()
    examples, report = _load_data(config, teacher)
    bottleneck, report["bottleneck"] = build_bottleneck(config, teacher.model.model.encoder)
    _check_quantizer_library(bottleneck)
    order = MixedOrder(tuple(len(e) for e in examples), tuple(s.weight for s in config.train),
                       tc.batch_size, accelerator.process_index, accelerator.num_processes,
                       tc.seed)  # fmt: skip
    if config.freeze:
        trainable = freeze_parts(bottleneck, config.freeze)
        report["bottleneck"]["frozen"] = {"parts": list(config.freeze), "trainable": trainable}
    optimizer = make_optimizer([w for w in bottleneck.parameters() if w.requires_grad], tc)
    scheduler = make_scheduler(optimizer, config.total_steps, tc.warmup_steps, tc.lr_decay,
                               tc.final_lr_fraction)  # fmt: skip
    teacher.model.to(accelerator.device)
    cache = None
    if config.encoder_cache is not None:
        cache = EncoderCache(config.encoder_cache, cache_fingerprint(teacher))
    encoder = SharedEncoder(teacher.model.model.encoder, teacher.n_mels, accelerator.device, cache)
    out = Path(tc.output_dir)
    checkpointer = Checkpointer(out / "checkpoints", tc.keep_checkpoints)
    fresh = not (tc.resume and checkpointer.latest())
    if config.init_from is None and config.bottleneck.init == "data" and fresh:
        report["bottleneck"] |= fit_to_states(config, bottleneck, encoder, examples,
                                              accelerator.num_processes)  # fmt: skip
    elif not fresh:  # the weights come from the checkpoint, whatever the start was
        report["bottleneck"] = {"init": "resumed from a checkpoint"}
    bottleneck, optimizer = accelerator.prepare(bottleneck, optimizer)
    run = TokenizerRun(config, accelerator, teacher, bottleneck, optimizer, scheduler, examples,
                       order, encoder, checkpointer, load_dev(config), report)  # fmt: skip
    run.usage = deque(maxlen=config.usage_window)
    _check_dead_code_threshold(run)
    resumed = _resume(run) if tc.resume else None
    if accelerator.is_main_process:
        from whisperforge.recipes.evaluate import write_report
        from whisperforge.training.log import TrainingLog

        run.log = TrainingLog(out, LOG_COLUMNS, resume_step=resumed or 0)
        write_report(to_dict(config), out / "config.json")
    return run


def tokens_per_step(config: TokenizerTrainConfig, examples, processes: int) -> float:
    """Real speech tokens one optimizer step quantizes on average (all processes): each
    source's mean tokens per window by its share of the windows drawn."""
    from whisperforge.models.vq import tokens_for_samples

    shares = [(s.weight, rows) for s, rows in zip(config.train, examples) if rows]
    total = sum(weight for weight, _ in shares) or 1.0
    mean_tokens = sum(weight / total * sum(tokens_for_samples(e.samples) for e in rows) / len(rows)
                      for weight, rows in shares)  # fmt: skip
    tc = config.training
    return mean_tokens * tc.batch_size * tc.gradient_accumulation_steps * processes


def tokens_per_code(run: TokenizerRun) -> float:
    """``tokens_per_step`` per searchable code: about the EMA usage (``cluster_size``) of a
    code used evenly."""
    per_step = tokens_per_step(run.config, run.examples, run.accelerator.num_processes)
    return per_step / run.vq.config.n_searchable


def _check_quantizer_library(bottleneck: WhisperVQ) -> None:
    """Refuse a dead-code threshold the installed vector-quantize-pytorch would misread: from
    1.34 it takes ``threshold_ema_dead_code`` as a ratio of the mean code usage, not a count."""
    threshold = bottleneck.config.threshold_ema_dead_code
    if threshold > 0 and not hasattr(bottleneck.vq._codebook, "threshold_ema_dead_code"):
        raise RuntimeError(
            f"threshold_ema_dead_code {threshold:g} is an EMA usage count, but the installed "
            "vector-quantize-pytorch reads it as a ratio of the mean usage; install the "
            "version the recipe is written for: pip install 'vector-quantize-pytorch<1.33' "
            "(or set bottleneck.threshold_ema_dead_code=0 to train without re-seeding)"
        )


def _check_dead_code_threshold(run: TokenizerRun) -> None:
    """Warn when ``threshold_ema_dead_code`` is so high for this batch that codes used as
    often as the average would be re-seeded every step (WhisperSpeech's 2 assumes batches of
    tens of thousands of tokens)."""
    threshold = run.vq.config.threshold_ema_dead_code
    average = tokens_per_code(run)
    run.report["tokens_per_code_per_step"] = round(average, 3)
    if threshold > 0.5 * average:
        logger.warning(
            "threshold_ema_dead_code %.3g is high for this batch: a code used evenly sees "
            "%.2f tokens per step, so most codes would be re-seeded every step; use about "
            "%.2g (or larger batches)", threshold, average, average / 10,
        )  # fmt: skip


def _resume(run: TokenizerRun) -> int | None:
    """Restore the newest checkpoint: bottleneck (codebook EMA included), optimizer,
    schedule, data position, usage window and RNG."""
    from whisperforge.training.checkpoint import restore_run_state

    checkpoint = run.checkpointer.latest()
    if checkpoint is None:
        return None
    run.vq.load_state_dict(checkpoint.model_state())
    state = restore_run_state(run.accelerator, checkpoint, run.optimizer, run.scheduler)
    run.usage.extend(state["usage"].unbind(0) if state["usage"].numel() else [])
    run.step, run.position = checkpoint.step, int(checkpoint.state["position"])
    run.refinement = checkpoint.state.get("refinement")  # a finished run is not refined twice
    logger.info("resumed from %s (step %d)", checkpoint.path, run.step)
    return run.step


# --------------------------------------------------------------------------- steps


def make_batch(run: TokenizerRun, draws: list[tuple[int, int]]) -> tuple[Batch, torch.Tensor]:
    """The padded targets of ``draws`` (``(source, row)`` pairs) and their audio lengths
    ``(batch,)`` in samples."""
    rows = [run.examples[s][i] for s, i in draws]
    batch = collate([(list(r.tokens), 0) for r in rows], [r.audio for r in rows],
                    run.teacher.tokenizer.eot)  # fmt: skip
    return batch, torch.tensor([r.samples for r in rows])


def decoder_logits(model, features: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor):
    """``(n_real, vocab)`` logits of a Whisper ``model``'s decoder fed ``features`` ``(b,
    n_audio_ctx, d)`` and ``input_ids`` ``(b, seq)``, at the ``mask`` ``(b, seq)`` positions
    only: padded positions never reach the vocabulary projection."""
    hidden = model.model.decoder(
        input_ids=input_ids, encoder_hidden_states=features, use_cache=False
    ).last_hidden_state
    return model.proj_out(hidden[mask])


def compute_loss(run: TokenizerRun, batch: Batch, samples: torch.Tensor, phase: int):
    """One forward pass -> ``(TokenizerLoss, codes (b, 750), token_mask (b, 750))``."""
    device, cfg = run.accelerator.device, run.config
    ids, mask = batch.input_ids.to(device), batch.labels_mask.to(device)
    hidden = run.encoder(batch.audio)  # frozen encoder: once per window, no graph
    real_frames = frame_mask(samples.to(device), hidden.shape[1])
    out = run.bottleneck(hidden, real_frames, swap=cfg.code_swap)
    student = decoder_logits(run.teacher.model, out.features, ids, mask)
    teacher = None
    if phase == 1 and cfg.kl_weight > 0:
        with torch.inference_mode():
            teacher = decoder_logits(run.teacher.model, hidden, ids, mask)
        teacher = teacher.clone()  # a normal tensor: the KL's backward may keep it
    labels = batch.labels.to(device)[mask]
    ones = torch.ones(student.shape[0], dtype=torch.bool, device=device)
    loss = tokenizer_loss(student, teacher, labels, ones, out.loss, cfg.kl_weight,
                          cfg.temperature)  # fmt: skip
    if cfg.feature_weight > 0:
        match = F.mse_loss(out.features[real_frames], hidden[real_frames])
        loss = loss._replace(loss=loss.loss + cfg.feature_weight * match)
    return loss, out.codes, out.token_mask


def train_step(run: TokenizerRun, batch: Batch, samples: torch.Tensor):
    """One micro-batch: forward, backward and (every ``gradient_accumulation_steps``) clip,
    optimizer and schedule step. Returns ``[loss, ce, kl, commitment, grad_norm]`` (kl NaN in
    phase 2, grad_norm NaN on accumulation steps), the code histogram ``(n_ids,)`` of its
    real tokens and whether the optimizer stepped."""
    acc, tc = run.accelerator, run.config.training
    grad_norm = torch.tensor(float("nan"))
    with acc.accumulate(run.bottleneck):
        with acc.autocast():
            losses, codes, real = compute_loss(run, batch, samples, run.config.phase(run.step))
        acc.backward(losses.loss)
        if acc.sync_gradients and tc.max_grad_norm is not None:
            grad_norm = acc.clip_grad_norm_(run.bottleneck.parameters(), tc.max_grad_norm)
        run.optimizer.step()
        if acc.sync_gradients:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    nan = torch.tensor(float("nan"))
    kl = losses.kl.detach() if losses.kl is not None else nan
    parts = [losses.loss.detach(), losses.ce.detach(), kl, losses.commitment.detach(), grad_norm]
    values = torch.stack([p.float().cpu().reshape(()) for p in parts])
    histogram = torch.bincount(codes[real].flatten(), minlength=run.vq.config.n_ids)
    return values, histogram, acc.sync_gradients


def usage_scalars(run: TokenizerRun) -> dict[str, float]:
    """Utilisation, perplexity and dead codes over the codes of the last ``usage_window``
    steps (all processes)."""
    if not run.usage:
        return {}
    cfg = run.vq.config
    counts = torch.stack(list(run.usage)).sum(0)
    codes = torch.repeat_interleave(torch.arange(cfg.n_ids), counts.cpu())
    usage = codebook_usage(codes, cfg.n_ids, cfg.mask_id)
    return {"utilisation": usage.utilisation, "perplexity": usage.perplexity,
            "dead_codes": usage.dead_codes}  # fmt: skip


# --------------------------------------------------------------------------- evaluate, save


def _dev_rows(run: TokenizerRun, vq: WhisperVQ, items: list[Example]) -> list[dict]:
    """Per-utterance WER rows (``recipes.evaluate`` format) of ``items`` transcribed from
    their speech tokens: greedy, no timestamps, encoder states from the cache."""
    from whisperforge.recipes.evaluate import EvalItem, score_utterance
    from whisperforge.tokens import SpeechTokenizer

    speech = SpeechTokenizer(vq, run.teacher, run.config.teacher)
    size, ids = run.config.eval_batch_size, []
    for start in range(0, len(items), size):
        group = items[start : start + size]
        hidden = run.encoder([d.audio for d in group])
        lengths = [d.samples for d in group]
        mask = frame_mask(torch.tensor(lengths, device=hidden.device), hidden.shape[1])
        ids += speech.window_ids(hidden, mask, lengths)
    texts: dict[int, str] = {}
    for language in sorted({d.language or "" for d in items}):
        picked = [i for i, d in enumerate(items) if (d.language or "") == language]
        decoded = speech.transcribe_tokens([ids[i] for i in picked], language=language or None,
                                           batch_size=size)  # fmt: skip
        texts |= dict(zip(picked, decoded))
    return [
        score_utterance(
            EvalItem(d.audio, d.text, d.language),
            texts[i],
            d.language or "en",
            d.samples / SAMPLE_RATE,
        )  # fmt: skip
        for i, d in enumerate(items)
    ]


def evaluate(run: TokenizerRun) -> float | None:
    """Dev WER (%) from speech tokens as the bottleneck is now (each process decodes its
    share), or None without a dev manifest. Training's random state is left untouched."""
    if not run.dev:
        return None
    from accelerate.utils import gather_object

    from whisperforge.recipes.evaluate import summarize

    acc, vq = run.accelerator, run.vq
    mine = run.dev[acc.process_index :: acc.num_processes]
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        vq.eval()
        try:
            rows = _dev_rows(run, vq, mine)
        finally:
            vq.train()
    return 100.0 * summarize(gather_object(rows))["wer"]


def save_checkpoint(run: TokenizerRun) -> None:
    """Write a checkpoint of the current step (all processes call this)."""
    from whisperforge.tokens import bottleneck_meta
    from whisperforge.training.checkpoint import save_run_state

    usage = torch.stack(list(run.usage)) if run.usage else torch.zeros(0, dtype=torch.long)
    # the tokenizer's metadata makes the checkpoint loadable as a tokenizer (tokens average)
    meta = bottleneck_meta(run.vq, _teacher_ref(run), preset_name(run.vq.config))
    save_run_state(run.accelerator, run.checkpointer, run.step, run.vq.state_dict(),
                   run.optimizer, run.scheduler,
                   {"position": run.position, "speech_tokenizer": meta,
                    "refinement": run.refinement},
                   {"usage": usage.cpu()})  # fmt: skip


def _teacher_ref(run: TokenizerRun) -> str:
    ref = run.config.teacher
    return str(Path(ref).resolve()) if Path(ref).is_dir() else ref  # loadable from anywhere


def save_tokenizer(run: TokenizerRun, folder: Path) -> Path:
    """The bottleneck as a speech tokenizer folder (main process only)."""
    from whisperforge.tokens import save_bottleneck

    vq = run.vq
    return save_bottleneck(vq, folder, _teacher_ref(run), preset_name(vq.config))


def _after_step(run: TokenizerRun, micro: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Usage window, log, evaluate and checkpoint as the config asks; ``micro`` holds each
    micro-batch's ``(values, code histogram)``. Returns the loss."""
    acc, cfg, tc = run.accelerator, run.config, run.config.training
    mean = mean_over_processes(acc, [values for values, _ in micro])
    histogram = torch.stack([counts for _, counts in micro]).sum(0)
    run.usage.append(acc.reduce(histogram.to(acc.device), reduction="sum").cpu())
    row: dict[str, float] = {}
    if run.step % tc.log_every == 0:
        loss, ce, kl, commitment, norm = (float(v) for v in mean)
        row |= {"phase": cfg.phase(run.step - 1), "epoch": run.order.passes(run.position),
                "lr": run.scheduler.get_last_lr()[0], "loss": loss, "ce_loss": ce,
                "commitment_loss": commitment} | usage_scalars(run)  # fmt: skip
        row |= {k: v for k, v in (("kl_loss", kl), ("grad_norm", norm)) if math.isfinite(v)}
    evaluate_and_log(run, tc, row, lambda: evaluate(run))
    if run.step == cfg.phase1_steps and cfg.phase2_steps and acc.is_main_process:
        save_tokenizer(run, Path(tc.output_dir) / "phase1-tokenizer")
    checkpoint_on_schedule(run, tc, lambda: save_checkpoint(run))
    return float(mean[0])


@dataclass
class TokenizerResult:
    """Where the tokenizer went, and how the run ended."""

    tokenizer: Path
    steps: int
    dev_wer: float | None
    data: dict
    main_process: bool = True


@torch.no_grad()
def refine_at_end(run: TokenizerRun) -> dict:
    """``refine_codebook`` Lloyd steps over every distinct training file (each process encodes
    its share, through the encoder cache; the sums are added up over the processes, so every
    process ends with the same codebook). A file in two sources counts once: the mix weights
    decide how often training draws it, not where its codes belong. Returns
    ``CodebookRefinement.to_dict()``."""
    acc, vq = run.accelerator, run.vq
    distinct = {e.audio: e for source in run.examples for e in source}
    rows = list(distinct.values())[acc.process_index :: acc.num_processes]
    size = run.config.eval_batch_size
    vectors = [torch.zeros(0, vq.config.codebook_dim, device=acc.device)]
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        states = run.encoder([e.audio for e in batch])
        mask = frame_mask(torch.tensor([e.samples for e in batch], device=states.device),
                          states.shape[1])  # fmt: skip
        vectors.append(code_space(vq, states, mask))
    reduce = None
    if acc.num_processes > 1:
        reduce = lambda t: acc.reduce(t, reduction="sum")  # noqa: E731
    result = refine_codebook(vq, torch.cat(vectors), run.config.refine_codebook, reduce)
    logger.info("codebook refined: mean squared distance to the nearest code %.4f -> %.4f, "
                "%.1f %% of the ids changed", result.error_before, result.error_after,
                100 * result.ids_changed)  # fmt: skip
    return result.to_dict()


def finish(run: TokenizerRun) -> TokenizerResult:
    """Codebook refinement if asked, final dev WER, checkpoint, the tokenizer folder, curves
    and a summary."""
    from whisperforge.recipes.evaluate import write_report

    acc, out = run.accelerator, Path(run.config.training.output_dir)
    if run.config.refine_codebook and run.refinement is None:
        run.refinement = refine_at_end(run)

    def write_outputs(wer: float | None) -> None:
        save_tokenizer(run, out / "tokenizer")
        summary = {"steps": run.step, "dev_wer": wer, "processes": acc.num_processes,
                   "data": run.report, "usage": usage_scalars(run)}  # fmt: skip
        if run.refinement is not None:
            summary["refinement"] = run.refinement
        write_report(summary, out / "summary.json")

    wer = finish_run(run, lambda: evaluate(run), lambda: save_checkpoint(run), write_outputs)
    return TokenizerResult(out / "tokenizer", run.step, wer, run.report, acc.is_main_process)


def train(config: TokenizerTrainConfig, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> TokenizerResult:  # fmt: skip
    """Run (or resume) a tokenizer training; ``on_step(step, loss)`` after each optimizer step."""
    run = setup(config)

    def step(position: int):
        values, counts, stepped = train_step(run, *make_batch(run, run.order.batch(position)))
        return (values, counts.cpu()), stepped

    run_steps(run, step, lambda micro: _after_step(run, micro),
              postfix=lambda: {"phase": run.config.phase(run.step - 1)}, progress=progress,
              on_step=on_step)  # fmt: skip
    return finish(run)
