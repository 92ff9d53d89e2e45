"""Distillation training: a student learns from a teacher's pseudo-labels and logits.

Distil-Whisper (Gandhi et al., 2023, section 3): the student keeps the teacher's frozen
encoder and a few of its decoder layers, and is trained on ``ce_weight * CE(pseudo-labels) +
kl_weight * T^2 * KL(teacher || student)`` over rows whose pseudo-label WER is under
``max_wer``. Targets carry timestamps with probability ``timestamp_probability`` (else
``<|notimestamps|>``) and, with probability ``condition_on_prev_probability``, a
``<|startofprev|>`` prompt holding the previous row's transcript (excluded from the loss).

The loop is explicit: ``setup`` -> (``train_step``, ``evaluate``, ``save_checkpoint``)* ->
``finish``. Accelerate runs it unchanged on one CPU process, ``torchrun --nproc_per_node N``
CPU processes or many GPUs. With a frozen encoder shared by teacher and student the encoder
runs once per batch (or comes from the on-disk ``EncoderCache``) and feeds both decoders; the
teacher runs under ``no_grad`` (not ``inference_mode``: its logits are saved for the
student's backward pass, which inference tensors cannot be). See ``docs/distill.md``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisperforge.data.manifest import Utterance, load_manifest
from whisperforge.losses import distillation_loss
from whisperforge.training.config import TrainingConfig, to_dict
from whisperforge.training.data import Batch, collate
from whisperforge.training.encoder_cache import SharedEncoder
from whisperforge.training.loop import (
    checkpoint_on_schedule,
    evaluate_and_log,
    finish_run,
    mean_over_processes,
    run_steps,
)
from whisperforge.transcribe import check_chunking

logger = logging.getLogger(__name__)

PROMPT_FRACTION = 2  # a previous-text prompt takes at most n_text_ctx // 2 - 1 tokens (Whisper)


@dataclass(frozen=True)
class DistillConfig:
    """Options of ``whisperforge distill train`` (defaults from Distil-Whisper where it has
    them). Paths are relative to the working directory."""

    teacher: str = "whisper-base"
    student: str | None = None  # a folder from `distill init`; None: create one from the teacher
    decoder_layers: int = 2  # used when ``student`` is None
    train_manifests: tuple[str, ...] = ()  # labels.jsonl files from `distill label`
    # plain manifests whose reference ``text`` is the target (no timestamps, no WER filter):
    # for corpora with exact transcripts, e.g. synthetic speech
    reference_manifests: tuple[str, ...] = ()
    # true: a reference row is one tight utterance (speech from its first to its last
    # sample, as synthetic clips are) and also gets ``<|0.00|> text <|duration|>``
    reference_timestamps: bool = False
    dev_manifest: str | None = None  # any manifest; None: no dev WER
    max_wer: float | None = 10.0  # drop rows whose teacher WER (%) is not below this
    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0
    freeze_encoder: bool = True
    freeze_decoder_positions: bool = True
    freeze_embeddings: bool = False
    timestamp_probability: float = 0.5
    condition_on_prev_probability: float = 0.2
    encoder_cache: str | None = None  # folder for frozen-encoder outputs (multi-epoch CPU runs)
    # full: the student reads 30 s encoder states, as Whisper; dynamic: states of each clip
    # padded by 1 s or more (a random share of the rest of the 30 s), so that it transcribes
    # well with ``audio_context: dynamic`` (set in the saved student's config)
    audio_context: str = "full"
    # true: the saved student transcribes with Silero VAD unless told otherwise (its config's
    # ``vad``), for students trained on clips that start on speech (docs/distill.md)
    vad: bool = False
    # the saved student's sequential long-form prompt (its config's
    # ``condition_on_previous_text``): off, as Distil-Whisper's sequential recipe; a 2-layer
    # decoder prompted with its own text skips speech (docs/distill.md)
    condition_on_previous_text: bool = False
    # the saved student's chunked long-form windows (its config's ``chunk_length`` and
    # ``stride_length``, s); null: Whisper's 30 s and a sixth of it (docs/transcribe.md)
    chunk_length: float | None = None
    stride_length: float | None = None
    eval_batch_size: int = 8
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig("runs/distill"))

    def __post_init__(self) -> None:
        if not self.train_manifests and not self.reference_manifests:
            raise ValueError(
                "train_manifests (labels.jsonl files from distill label) or "
                "reference_manifests (manifests with exact transcripts) is required"
            )
        if self.decoder_layers < 1 or self.eval_batch_size < 1:
            raise ValueError("decoder_layers and eval_batch_size must be >= 1")
        if self.max_wer is not None and self.max_wer <= 0:
            raise ValueError(f"max_wer must be > 0 (a WER in %) or null, not {self.max_wer}")
        if self.ce_weight < 0 or self.kl_weight < 0 or self.ce_weight + self.kl_weight == 0:
            raise ValueError("ce_weight and kl_weight must be >= 0 and not both 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.audio_context not in ("full", "dynamic"):
            raise ValueError(f"audio_context must be full or dynamic, not {self.audio_context!r}")
        if self.audio_context == "dynamic" and not self.freeze_encoder:
            raise ValueError("audio_context: dynamic needs freeze_encoder: true")
        check_chunking(self.chunk_length, self.stride_length)
        for name in ("timestamp_probability", "condition_on_prev_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")


# --------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training row: its audio file, the teacher's tokens and the previous row's text."""

    audio: str
    tokens: list[int]  # pseudo_tokens: text + timestamps, no prompt, no end token
    language: str | None
    prev_text: str | None


def reference_examples(
    manifests: tuple[str, ...], tokenizer, timestamps: bool = False
) -> tuple[list[Example], dict]:
    """Rows of plain manifests with their reference text as the target (tokenized as
    Whisper writes text: a leading space), each with the text of the row before it; and a
    report as ``load_examples`` gives. With ``timestamps`` each row is taken to be speech
    from start to end: ``<|0.00|> text <|duration|>``, which ``build_sequence`` uses for its
    ``timestamp_probability`` share (a row of unknown duration gets none)."""
    from whisperforge.audio import CHUNK_LENGTH, TIME_PRECISION

    examples: list[Example] = []
    dropped: Counter = Counter()
    total = 0
    for path in manifests:
        report = load_manifest(path, max_duration=CHUNK_LENGTH)  # one window each
        total += len(report.kept) + len(report.skipped)
        dropped.update(report.reasons())
        before = None
        for u in report.kept:
            text = " ".join(u.text.split())  # validation drops rows with no text
            tokens = tokenizer.encode(" " + text)
            if timestamps and u.duration:
                end = round(min(u.duration, CHUNK_LENGTH) / TIME_PRECISION)
                tokens = [tokenizer.timestamp_begin, *tokens, tokenizer.timestamp_begin + end]
            examples.append(Example(u.audio, tokens, u.language, before))
            before = text
    counts = {reason: n for reason, n in dropped.items() if n}
    return examples, {"rows": total, "kept": len(examples), "dropped": counts}


def load_examples(manifests: tuple[str, ...], max_wer: float | None) -> tuple[list[Example], dict]:
    """Rows of the label manifests that pass validation and the WER filter; and a report
    ``{"rows": n, "kept": n, "dropped": {reason: n}}``."""
    examples: list[Example] = []
    dropped: Counter = Counter()
    total = 0
    for path in manifests:
        report = load_manifest(path)
        total += len(report.kept) + len(report.skipped)
        dropped.update(report.reasons())
        examples += _manifest_examples(path, report.kept, max_wer, dropped)
    counts = {reason: n for reason, n in dropped.items() if n}
    return examples, {"rows": total, "kept": len(examples), "dropped": counts}


def _manifest_examples(path, rows: list[Utterance], max_wer, dropped: Counter) -> list[Example]:
    """One manifest's rows with pseudo-tokens and a teacher WER under ``max_wer``, each with
    the text of the row before it (in manifest order, before filtering)."""
    from whisperforge.recipes.pseudo_label import filter_by_wer

    usable = [u for u in rows if _has_tokens(u)]
    dropped["no pseudo_tokens"] += len(rows) - len(usable)
    previous = {id(u): p for p, u in zip([None, *usable], usable)}
    kept = usable
    if max_wer is not None:
        kept, wer_report = filter_by_wer(usable, max_wer)
        logger.info("%s: %s", path, wer_report.summary())
        no_reference = sum(w is None for w in wer_report.dropped_ids.values())
        dropped["no reference (teacher_wer null)"] += no_reference
        dropped["teacher WER >= max_wer"] += wer_report.dropped - no_reference
    examples = []
    for u in kept:
        before = previous[id(u)]
        prev_text = None if before is None else before.extra.get("pseudo_text") or before.text
        examples.append(Example(u.audio, list(u.extra["pseudo_tokens"]), u.language, prev_text))
    return examples


def _has_tokens(u: Utterance) -> bool:
    tokens = u.extra.get("pseudo_tokens")
    return isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)


def build_sequence(
    example: Example,
    tokenizer,
    rng: np.random.Generator,
    timestamp_probability: float,
    prev_probability: float,
    max_length: int,
) -> tuple[list[int], int]:
    """The decoder token sequence of one example and the index of its ``<|startoftranscript|>``.

    ``[<|startofprev|> prev...] <|sot|> [lang task] (<|notimestamps|> text | ts text ts ...)
    <|endoftext|>``: the model reads ``seq[:-1]`` and predicts ``seq[1:]``; predictions from
    the start-of-transcript position on are trained, the prompt before it is not.
    """
    has_timestamps = any(t >= tokenizer.timestamp_begin for t in example.tokens)
    use_timestamps = rng.random() < timestamp_probability  # both drawn always, so one
    use_prev = rng.random() < prev_probability  # example's choices depend on its seed alone
    if has_timestamps and use_timestamps:
        target = list(example.tokens)
    else:
        target = [tokenizer.no_timestamps] + [t for t in example.tokens if t < tokenizer.eot]
    body = tokenizer.sot_sequence(example.language or "en") + target + [tokenizer.eot]
    prompt: list[int] = []
    if use_prev and example.prev_text:
        room = min(max_length // PROMPT_FRACTION - 1, max_length - len(body) - 1)
        prev = tokenizer.encode(" " + example.prev_text.strip())[-room:] if room > 0 else []
        prompt = [tokenizer.sot_prev, *prev] if prev else []
    return prompt + body, len(prompt)


def too_long(examples: list[Example], tokenizer, max_length: int) -> list[int]:
    """Indices of examples whose target alone does not fit the decoder's context."""
    fixed = len(tokenizer.sot_sequence("en")) + 2  # prompt + <|notimestamps|> or ts + end
    return [i for i, e in enumerate(examples) if len(e.tokens) + fixed > max_length]


# --------------------------------------------------------------------------- encoder


# --------------------------------------------------------------------------- setup


@dataclass
class DistillRun:
    """Everything the loop touches; built by ``setup``."""

    config: DistillConfig
    accelerator: object
    teacher: object  # ModelBundle
    student: torch.nn.Module  # prepared by Accelerate (DDP-wrapped when distributed)
    layer_map: dict
    shared_encoder: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    examples: list[Example]
    order: object  # ShardedOrder
    encoder: SharedEncoder
    total_steps: int
    checkpointer: object  # Checkpointer
    log: object | None  # TrainingLog on the main process
    dev_items: list
    data_report: dict
    step: int = 0
    position: int = 0  # batches of this process consumed

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]


LOG_COLUMNS = ["epoch", "lr", "loss", "ce_loss", "kl_loss", "grad_norm", "dev_wer"]


def build_student(config: DistillConfig, teacher: torch.nn.Module):
    """The student (from its folder, or created from the teacher) and its layer map."""
    from whisperforge.models.student import create_student, student_from_delta

    if config.student is None:
        return create_student(teacher, config.decoder_layers)
    return student_from_delta(Path(config.student), teacher)


def _encoders_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    mine, theirs = a.model.encoder.state_dict(), b.model.encoder.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def freeze(student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig) -> bool:
    """Set which student parts train; returns True when teacher and student share one frozen
    encoder (then the student's encoder *is* the teacher's module: one copy, run once)."""
    teacher.requires_grad_(False).eval()
    shared = config.freeze_encoder and _encoders_equal(student, teacher)
    if shared:
        student.model.encoder = teacher.model.encoder
    student.model.encoder.requires_grad_(not config.freeze_encoder)
    decoder = student.model.decoder
    decoder.embed_positions.requires_grad_(not config.freeze_decoder_positions)
    decoder.embed_tokens.requires_grad_(not config.freeze_embeddings)  # tied to proj_out
    return shared


def _load_data(config: DistillConfig, tokenizer, max_length: int):
    examples, report = load_examples(config.train_manifests, config.max_wer)
    if config.reference_manifests:
        more, extra = reference_examples(config.reference_manifests, tokenizer,
                                         config.reference_timestamps)  # fmt: skip
        examples += more
        report["rows"] += extra["rows"]
        report["kept"] += extra["kept"]
        for reason, n in extra["dropped"].items():
            report["dropped"][reason] = report["dropped"].get(reason, 0) + n
    long = set(too_long(examples, tokenizer, max_length))
    if long:
        report["dropped"]["longer than the decoder context"] = len(long)
        examples = [e for i, e in enumerate(examples) if i not in long]
        report["kept"] = len(examples)
    if not examples:
        raise ValueError(f"no training rows left after filtering: {report}")
    dev = []
    if config.dev_manifest is not None:
        from whisperforge.recipes.evaluate import items_from_source

        dev, skipped = items_from_source(config.dev_manifest)
        if skipped:
            logger.warning("dev manifest: %d rows skipped (%s)", len(skipped), skipped[0]["reason"])
    return examples, report, dev


def setup(config: DistillConfig) -> DistillRun:
    """Load the teacher, build and freeze the student, read and filter the data, create the
    optimizer, schedule and accelerator, and resume from the newest checkpoint if asked."""
    from accelerate.utils import set_seed

    from whisperforge.models.loading import load_model
    from whisperforge.training.checkpoint import Checkpointer
    from whisperforge.training.data import ShardedOrder
    from whisperforge.training.encoder_cache import EncoderCache, cache_fingerprint
    from whisperforge.training.runtime import make_accelerator, make_optimizer, total_steps
    from whisperforge.training.schedule import make_scheduler

    tc = config.training
    accelerator = make_accelerator(tc)
    set_seed(tc.seed)
    teacher = load_model(config.teacher)
    student, layer_map = build_student(config, teacher.model)
    shared = freeze(student, teacher.model, config)
    if config.audio_context == "dynamic":
        if not shared:
            raise ValueError("audio_context: dynamic needs the teacher's encoder in the student")
        student.config.audio_context = "dynamic"  # saved with the student; transcribe reads it
    if config.vad:
        student.config.vad = True  # saved with the student: its transcription default
    student.config.condition_on_previous_text = bool(config.condition_on_previous_text)
    for key in ("chunk_length", "stride_length"):  # and its long-form windows
        if getattr(config, key) is not None:
            setattr(student.config, key, float(getattr(config, key)))
    max_length = teacher.model.config.max_target_positions
    examples, report, dev = _load_data(config, teacher.tokenizer, max_length)
    logger.info("training rows: %s", report)
    # saved with the student: it transcribes the languages it was trained on, no others
    student.config.languages = sorted({e.language or "en" for e in examples})
    order = ShardedOrder(len(examples), tc.batch_size, accelerator.process_index,
                         accelerator.num_processes, tc.seed)  # fmt: skip
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc)
    steps = total_steps(tc, order.batches_per_epoch)
    scheduler = make_scheduler(optimizer, steps, tc.warmup_steps, tc.lr_decay, tc.final_lr_fraction)
    teacher.model.to(accelerator.device)
    student, optimizer = accelerator.prepare(student, optimizer)
    cache = None
    if config.encoder_cache is not None:
        cache = EncoderCache(config.encoder_cache, cache_fingerprint(teacher))
    encoder = SharedEncoder(teacher.model.model.encoder, teacher.n_mels, accelerator.device, cache)
    out = Path(tc.output_dir)
    run = DistillRun(config, accelerator, teacher, student, layer_map, shared, optimizer,
                     scheduler, examples, order, encoder, steps, Checkpointer(
                         out / "checkpoints", tc.keep_checkpoints), None, dev, report)  # fmt: skip
    resumed = _resume(run) if tc.resume else None
    if not tc.resume and accelerator.is_main_process:
        run.checkpointer.clear()  # else an older run's later steps would pass for the newest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from whisperforge.recipes.evaluate import write_report
        from whisperforge.training.log import TrainingLog

        run.log = TrainingLog(out, LOG_COLUMNS, resume_step=resumed if resumed else 0)
        write_report(to_dict(config), out / "config.json")
    return run


def _resume(run: DistillRun) -> int | None:
    """Restore the newest checkpoint (model, optimizer, schedule, data position, RNG)."""
    from whisperforge.training.checkpoint import restore_run_state
    from whisperforge.training.runtime import load_trainable_state

    checkpoint = run.checkpointer.latest()
    if checkpoint is None:
        return None
    load_trainable_state(run.accelerator.unwrap_model(run.student), checkpoint.model_state())
    restore_run_state(run.accelerator, checkpoint, run.optimizer, run.scheduler)
    run.step, run.position = checkpoint.step, int(checkpoint.state["position"])
    logger.info("resumed from %s (step %d)", checkpoint.path, run.step)
    return run.step


# --------------------------------------------------------------------------- steps


def make_batch(run: DistillRun, epoch: int, indices: list[int]) -> Batch:
    """Targets of the rows ``indices``; each row's random choices come from (seed, epoch,
    row) alone, so a resumed run draws exactly what an uninterrupted one would."""
    cfg, tok = run.config, run.teacher.tokenizer
    max_length = run.teacher.model.config.max_target_positions
    sequences, margins = [], []
    for i in indices:
        rng = np.random.default_rng([cfg.training.seed, epoch, i])
        sequences.append(build_sequence(run.examples[i], tok, rng, cfg.timestamp_probability,
                                        cfg.condition_on_prev_probability, max_length))  # fmt: skip
        if cfg.audio_context == "dynamic":
            # half the rows with the shortest padding (1 s), the others with more, as when a
            # longer clip shares their batch
            margins.append(0.0 if rng.random() < 0.5 else float(rng.random()))
    batch = collate(sequences, [run.examples[i].audio for i in indices], tok.eot)
    batch.margins = margins or None
    return batch


def context_length(samples: int, margin: float) -> int:
    """Samples a dynamic-context training row is padded to: its length + 1 s + ``margin``
    (0-1) of the rest of the 30 s, in whole encoder frames, at most 30 s."""
    from whisperforge.audio import N_SAMPLES
    from whisperforge.transcribe import context_samples, whole_frames

    shortest = context_samples([samples], "dynamic")
    return whole_frames(shortest + int(margin * max(0, N_SAMPLES - shortest)))


def _student_logits(run: DistillRun, batch: Batch, hidden: torch.Tensor, ids: torch.Tensor):
    """Student logits with a dynamic audio context: each row reads the frozen encoder's
    states of its own shortened window; rows of one length run together (30 s rows share
    the teacher's states)."""
    from whisperforge.audio import N_SAMPLES

    lengths = [context_length(n, m) for n, m in
               zip(run.encoder.samples(batch.audio), batch.margins)]  # fmt: skip
    logits = None
    for n in sorted(set(lengths)):
        rows = [i for i, length in enumerate(lengths) if length == n]
        index = torch.tensor(rows, device=ids.device)
        if n == N_SAMPLES:
            states = hidden.index_select(0, index)
        else:
            states = run.encoder.short([batch.audio[i] for i in rows], n)
        out = run.student(encoder_outputs=(states,), decoder_input_ids=ids.index_select(0, index),
                          use_cache=False).logits  # fmt: skip
        if logits is None:
            logits = out.new_zeros((ids.shape[0], *out.shape[1:]))
        logits = logits.index_copy(0, index, out)
    return logits


def compute_loss(run: DistillRun, batch: Batch):
    """Forward teacher and student on one batch -> ``DistillationLoss``."""
    device, cfg = run.accelerator.device, run.config
    ids = batch.input_ids.to(device)
    hidden = None  # the teacher's frozen encoder: once, no graph; only when something reads it
    if run.shared_encoder or cfg.kl_weight > 0:
        hidden = run.encoder(batch.audio)
    if batch.margins is not None:
        student_logits = _student_logits(run, batch, hidden, ids)
    elif run.shared_encoder:
        student_logits = run.student(encoder_outputs=(hidden,), decoder_input_ids=ids,
                                     use_cache=False).logits  # fmt: skip
    else:
        features = run.encoder.features(batch.audio).to(device)
        student_logits = run.student(input_features=features, decoder_input_ids=ids,
                                     use_cache=False).logits  # fmt: skip
    teacher_logits = None
    if cfg.kl_weight > 0:
        with torch.no_grad():
            teacher_logits = run.teacher.model(
                encoder_outputs=(hidden,), decoder_input_ids=ids, use_cache=False
            ).logits
    return distillation_loss(
        student_logits, teacher_logits, batch.labels.to(device), batch.labels_mask.to(device),
        cfg.ce_weight, cfg.kl_weight, cfg.temperature,
    )  # fmt: skip


def train_step(run: DistillRun, batch: Batch) -> tuple[torch.Tensor, bool]:
    """One micro-batch: forward, backward, and (every ``gradient_accumulation_steps``)
    clip, optimizer and schedule step. Returns ``[loss, ce, kl, grad_norm]`` (grad_norm NaN
    on accumulation steps) and whether the optimizer stepped."""
    acc, tc = run.accelerator, run.config.training
    grad_norm = torch.tensor(float("nan"))
    with acc.accumulate(run.student):
        with acc.autocast():
            losses = compute_loss(run, batch)
        acc.backward(losses.loss)
        if acc.sync_gradients and tc.max_grad_norm is not None:
            grad_norm = acc.clip_grad_norm_(run.trainable, tc.max_grad_norm)
        run.optimizer.step()
        if acc.sync_gradients:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    values = torch.stack([losses.loss.detach(), losses.ce.detach(), losses.kl.detach()])
    values = torch.cat([values.float().cpu(), grad_norm.detach().float().cpu().reshape(1)])
    return values, acc.sync_gradients


# --------------------------------------------------------------------------- evaluate, save


def _transcribe_dev(run: DistillRun, items: list) -> list[tuple[str, str, str]]:
    """``(reference, hypothesis, language)`` of ``items``: greedy with ``whisperforge
    evaluate``'s temperature fallback (seeded, so the same weights give the same text), no
    timestamps. Without the fallback one repetition loop in a small dev set can swamp it."""
    from whisperforge.models.loading import ModelBundle
    from whisperforge.transcribe import Transcriber

    teacher = run.teacher
    model = run.accelerator.unwrap_model(run.student)
    transcriber = Transcriber(ModelBundle.wrap("student", teacher.path, model, teacher.tokenizer))
    pairs = []
    for language in sorted({i.language or "en" for i in items}):
        group = [i for i in items if (i.language or "en") == language]
        results = transcriber.transcribe_batch(
            [i.audio for i in group], language=language, without_timestamps=True,
            batch_size=run.config.eval_batch_size,
        )  # fmt: skip
        for item, result in zip(group, results):
            if result.error is not None:
                logger.warning("dev utterance %s failed: %s", item.audio, result.error)
            pairs.append((item.text, result.text, language))
    return pairs


def dev_wer(pairs: list[tuple[str, str, str]]) -> float:
    """Corpus WER (%) over ``(reference, hypothesis, language)``, each language normalised
    its own way, errors summed over languages."""
    from whisperforge.metrics import corpus_error_rates

    errors = words = 0.0
    for language in sorted({lang for _, _, lang in pairs}):
        refs, hyps = zip(*[(r, h) for r, h, lang in pairs if lang == language])
        rates = corpus_error_rates(refs, hyps, language=language)
        errors += rates["wer"] * rates["ref_words"]
        words += rates["ref_words"]
    return 100.0 * errors / words if words else 0.0


def evaluate(run: DistillRun) -> float | None:
    """Dev WER (%) of the student as it is now (each process decodes its share), or None
    without a dev manifest. Training's random state is left untouched."""
    if not run.dev_items:
        return None
    acc = run.accelerator
    mine = run.dev_items[acc.process_index :: acc.num_processes]
    model = acc.unwrap_model(run.student)
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):  # decoding seeds torch's generator
        model.eval()
        try:
            pairs = _transcribe_dev(run, mine)
        finally:
            model.train()
    from accelerate.utils import gather_object

    return dev_wer(gather_object(pairs))


def save_checkpoint(run: DistillRun) -> None:
    """Write a checkpoint of the current step (all processes call this)."""
    from whisperforge.training.checkpoint import save_run_state
    from whisperforge.training.runtime import trainable_state

    model_state = trainable_state(run.accelerator.unwrap_model(run.student))
    save_run_state(run.accelerator, run.checkpointer, run.step, model_state, run.optimizer,
                   run.scheduler, {"position": run.position})  # fmt: skip


def _epoch(run: DistillRun) -> int:
    """Epoch of the last batch this process consumed."""
    return (run.position - 1) // run.order.batches_per_epoch


def _after_step(run: DistillRun, micro: list[torch.Tensor]) -> float:
    """Log, evaluate and checkpoint as the config asks for this step; returns the loss."""
    tc = run.config.training
    mean = mean_over_processes(run.accelerator, micro)
    row: dict[str, float] = {}
    if run.step % tc.log_every == 0:
        loss, ce, kl, norm = (float(v) for v in mean)
        row |= {"epoch": _epoch(run), "lr": run.scheduler.get_last_lr()[0], "loss": loss,
                "ce_loss": ce, "kl_loss": kl}  # fmt: skip
        if math.isfinite(norm):
            row["grad_norm"] = norm
    evaluate_and_log(run, tc, row, lambda: evaluate(run))
    checkpoint_on_schedule(run, tc, lambda: save_checkpoint(run))
    return float(mean[0])


@dataclass
class DistillResult:
    """Where the student went, and how the run ended."""

    student: Path
    steps: int
    dev_wer: float | None
    data: dict
    main_process: bool = True


def finish(run: DistillRun) -> DistillResult:
    """Final dev WER, checkpoint, the student (delta over the teacher), curves, summary."""
    from whisperforge.models.student import save_student
    from whisperforge.recipes.evaluate import write_report

    acc, out = run.accelerator, Path(run.config.training.output_dir)

    def write_outputs(wer: float | None) -> None:
        teacher_ref = run.config.teacher
        if Path(teacher_ref).is_dir():  # a local folder: stored absolute, loadable from anywhere
            teacher_ref = str(Path(teacher_ref).resolve())
        model = acc.unwrap_model(run.student)
        save_student(model, run.teacher.model, teacher_ref, run.layer_map, out / "student")
        write_report({
            "steps": run.step, "dev_wer": wer, "data": run.data_report,
            "processes": acc.num_processes, "shared_encoder": run.shared_encoder,
        }, out / "summary.json")  # fmt: skip

    wer = finish_run(run, lambda: evaluate(run), lambda: save_checkpoint(run), write_outputs)
    return DistillResult(out / "student", run.step, wer, run.data_report, acc.is_main_process)


def train(config: DistillConfig, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> DistillResult:  # fmt: skip
    """Run (or resume) a distillation; ``on_step(step, loss)`` after each optimizer step."""
    run = setup(config)

    def step(position: int) -> tuple[torch.Tensor, bool]:
        return train_step(run, make_batch(run, *run.order.batch(position)))

    run_steps(run, step, lambda micro: _after_step(run, micro),
              postfix=lambda: {"epoch": _epoch(run)}, progress=progress,
              on_step=on_step)  # fmt: skip
    return finish(run)
