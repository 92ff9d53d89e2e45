"""Transcription: plan windows -> encode and decode them in batches -> stitch segments.

Three long-form modes (``docs/transcribe.md``):

- ``chunked`` (Distil-Whisper, HF pipeline): windows of ``chunk_length`` seconds (30 unless
  the model or the caller says otherwise) that overlap by ``2 * stride``, decoded
  independently (so windows of one file batch together) and merged where their token streams
  agree in the overlap.
- ``sequential`` (openai-whisper): each window starts where the last complete segment of the
  previous one ended, optionally conditioned on the previous text, with temperature fallback.
  Several files advance in lockstep so their windows still share a batch.
- ``segmented`` (faster-whisper's batched pipeline, WhisperX): windows of at most
  ``chunk_length`` seconds cut at pauses that Silero VAD hears (``plan_segments``), with no
  overlap, each decoded without timestamps into one segment over its speech (cut into
  sentences by ``split_sentences`` when words are timed) and joined end to end: nothing is
  decoded twice and no window starts or ends inside a word, so with a dynamic audio context
  the encoder reads each second of audio about once.

Audio of at most 30 s is one window in every mode. ``transcribe()`` returns a lazy
``(segments, info)`` pair in faster-whisper's manner; ``Transcriber.transcribe_batch`` streams
results for many files, one ``FileResult`` each, reporting unreadable files without stopping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache

import numpy as np
import torch

from whisperforge.audio import (
    N_SAMPLES,
    N_SAMPLES_PER_TOKEN,
    SAMPLE_RATE,
    TIME_PRECISION,
    AudioError,
    AudioSource,
    load_audio,
    log_mel_spectrogram,
)
from whisperforge.decoding import (
    DecodingOptions,
    DecodingResult,
    decode,
    detect_language,
    with_temperature,
)
from whisperforge.models.inference import (
    InferenceSession,
    check_shared_session,
    encoder_dtype_of,
)
from whisperforge.models.loading import ModelBundle, load_model
from whisperforge.models.presets import DEFAULT_MODEL
from whisperforge.segments import Segment, TranscriptionInfo
from whisperforge.speculative import SpeculativeStats, speculative_decode
from whisperforge.stitch import RawSegment, join_windows, merge_windows, parse_window
from whisperforge.timing import align_window, median_word_duration, split_words, tidy_words
from whisperforge.tokenizer import TASKS, normalize_language
from whisperforge.vad import (
    DEFAULT_MIN_SILENCE,
    DEFAULT_SPEECH_PAD,
    DEFAULT_THRESHOLD,
    FRAME,
    SpeechMap,
    default_on,
    frame_probabilities,
    speech_map,
)
from whisperforge.vad import check_options as check_vad_options

logger = logging.getLogger(__name__)
LONG_FORM_MODES = ("chunked", "sequential", "segmented")
WINDOW_SECONDS = N_SAMPLES / SAMPLE_RATE
AUDIO_CONTEXTS = ("full", "dynamic")
CONTEXT_MARGIN = SAMPLE_RATE  # dynamic audio context: 1 s of padding after the longest window


def context_samples(lengths: list[int], mode: str) -> int:
    """Samples each window of a batch is padded to: 30 s (``full``), or with ``dynamic`` the
    longest window + ``CONTEXT_MARGIN``, rounded up to whole encoder frames, at most 30 s.
    The encoder's cost falls with the context (a 5 s clip: about a fifth of 30 s)."""
    if mode == "full":
        return N_SAMPLES
    if mode != "dynamic":
        raise ValueError(f"audio context must be one of {AUDIO_CONTEXTS}, not {mode!r}")
    return whole_frames(max(lengths, default=0) + CONTEXT_MARGIN)


def whole_frames(samples: int) -> int:
    """``samples`` rounded up to whole encoder frames (320 samples), at most 30 s."""
    return min(N_SAMPLES, -(-samples // N_SAMPLES_PER_TOKEN) * N_SAMPLES_PER_TOKEN)


@dataclass(frozen=True)
class TranscribeOptions:
    """Options of ``transcribe``, named as in openai-whisper / faster-whisper; checked once."""

    language: str | None = None  # None: detect from the first 30 s (multilingual models)
    task: str = "transcribe"
    beam_size: int = 1  # 1: greedy
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float | None = None
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    # sequential mode: prompt each window with the text before it; None: the model's
    # (ModelBundle.condition_on_previous_text: on, off for distilled students)
    condition_on_previous_text: bool | None = None
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | None = None
    without_timestamps: bool = False
    # time every word from the decoder's cross-attention (``timing``): Segment.words
    word_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    long_form: str = "chunked"
    # chunked: window length (segmented: the longest), and the context each chunked window
    # shares with each neighbour (s);
    # None: the model's (ModelBundle.chunk_length / stride_length: 30 s and a sixth of it,
    # as the HF pipeline, unless its config says otherwise)
    chunk_length: float | None = None
    stride_length: float | None = None
    batch_size: int = 8
    seed: int = 0
    audio_context: str | None = None  # full | dynamic; None: the model's (ModelBundle)
    # transcribe only what voice activity detection finds (whisperforge.vad); None: the
    # model's default (ModelBundle.vad: on for students trained on tight clips)
    vad: bool | None = None
    vad_threshold: float = DEFAULT_THRESHOLD
    vad_min_silence: float = DEFAULT_MIN_SILENCE  # s: shorter pauses do not split speech
    vad_speech_pad: float = DEFAULT_SPEECH_PAD  # s: kept on each side of detected speech

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", normalize_language(self.language))
        temps = self.temperature
        temps = (float(temps),) if isinstance(temps, (int, float)) else tuple(map(float, temps))
        object.__setattr__(self, "temperature", temps)
        if not temps or any(t < 0 for t in temps):
            raise ValueError("temperature must be one or more values >= 0")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if self.long_form not in LONG_FORM_MODES:
            raise ValueError(f"long_form must be one of {LONG_FORM_MODES}, not {self.long_form!r}")
        if self.beam_size < 1 or self.best_of < 1 or self.batch_size < 1:
            raise ValueError("beam_size, best_of and batch_size must be >= 1")
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 0:
            raise ValueError("compression_ratio_threshold must be > 0 (or None: no check)")
        if self.audio_context not in (None, *AUDIO_CONTEXTS):
            raise ValueError(
                f"audio_context must be one of {AUDIO_CONTEXTS}, not {self.audio_context!r}"
            )
        check_vad_options(self.vad_threshold, self.vad_min_silence, self.vad_speech_pad)
        check_chunking(self.chunk_length, self.stride_length)

    def decoding(self) -> DecodingOptions:
        """Decoding options of the first (lowest-temperature) pass."""
        beam = self.beam_size if self.beam_size > 1 else None
        return with_temperature(
            DecodingOptions(
                task=self.task,
                language=self.language,
                beam_size=beam,
                best_of=self.best_of,
                patience=self.patience if beam else None,
                length_penalty=self.length_penalty,
                without_timestamps=self.without_timestamps,
                max_initial_timestamp=self.max_initial_timestamp,
                suppress_blank=self.suppress_blank,
            ),
            self.temperature[0],
        )

    @classmethod
    def from_kwargs(cls, **kwargs) -> TranscribeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown transcribe option(s): {', '.join(unknown)}")
        return cls(**kwargs)


@dataclass
class FileResult:
    """The outcome of one input: segments and info, or the error that stopped it."""

    index: int
    source: object
    segments: list[Segment] = field(default_factory=list)
    info: TranscriptionInfo | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


@dataclass
class _File:
    """Per-file state while its windows are in flight."""

    index: int
    source: object
    audio: np.ndarray
    language: str | None
    language_probs: dict[str, float] | None = None
    windows: list[tuple[float, float]] = field(default_factory=list)  # chunked plan
    decoded: dict[int, list[RawSegment]] = field(default_factory=dict)
    seek: int = 0  # sequential: next window start, in samples
    context: list[int] = field(default_factory=list)  # sequential: previous tokens
    raw: list[RawSegment] = field(default_factory=list)
    speech: SpeechMap | None = None  # set when VAD compacted ``audio`` to its speech
    extents: list[tuple[float, float]] = field(default_factory=list)  # segmented: speech

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def silent(self) -> bool:
        """VAD found no speech: nothing to decode."""
        return self.speech is not None and not len(self.audio)


MIN_CHUNK_SECONDS = 5.0  # shorter windows leave too little speech to merge on


def check_chunking(chunk_length: float | None, stride_length: float | None) -> None:
    """Chunked mode's window length and stride, as given (None: the model's), or ValueError."""
    if chunk_length is not None and not MIN_CHUNK_SECONDS <= chunk_length <= WINDOW_SECONDS:
        raise ValueError(
            f"chunk_length must be in [{MIN_CHUNK_SECONDS:g}, {WINDOW_SECONDS:g}] seconds,"
            f" not {chunk_length:g}"
        )
    if stride_length is None:
        return
    limit = (chunk_length or WINDOW_SECONDS) / 2
    if not 0 <= stride_length < limit:
        raise ValueError(
            f"stride_length must be in [0, {limit:g}) seconds (under half the chunk length),"
            f" not {stride_length:g}"
        )


def resolve_chunking(
    bundle: ModelBundle, chunk_length: float | None, stride_length: float | None
) -> tuple[float, float]:
    """Chunked mode's ``(chunk_length, stride_length)`` in seconds: as asked, else the
    model's (``ModelBundle.chunk_length``, ``stride_length``). A chunk length given without
    a stride gets a sixth of it, as the HF pipeline; ValueError where they do not fit."""
    chunk = chunk_length or bundle.chunk_length
    stride = stride_length
    if stride is None:
        model_stride = bundle.stride_length if chunk_length is None else None
        stride = model_stride if model_stride is not None else chunk / 6
    check_chunking(chunk, stride)
    return chunk, stride


def plan_windows(
    duration: float, stride: float, length: float = WINDOW_SECONDS
) -> list[tuple[float, float]]:
    """Chunked mode: ``(start, end)`` seconds of windows of ``length`` seconds overlapping by
    ``2 * stride``. Audio of at most 30 s is one window whatever the length: it fits the
    model's input whole."""
    if duration <= WINDOW_SECONDS:
        return [(0.0, duration)]
    step = length - 2 * stride
    starts = np.arange(0.0, max(duration - 2 * stride, 1e-9), step)
    windows = [(float(s), float(min(s + length, duration))) for s in starts]
    if windows[-1][1] < duration:
        windows.append((float(windows[-1][0] + step), duration))
    return windows


PAUSE_SECONDS = 0.3  # segmented: a quiet stretch this long is a pause to cut at
FRAME_SECONDS = FRAME / SAMPLE_RATE
EXTENT_PAD = 0.2  # s: kept around the speech of a segmented window for its segment's times


def plan_segments(
    probs: np.ndarray, duration: float, length: float, threshold: float = DEFAULT_THRESHOLD
) -> list[tuple[float, float]]:
    """Segmented mode: ``(start, end)`` seconds of windows of at most ``length`` seconds
    that cover ``duration`` seconds end to end, cut where the speech probabilities ``probs``
    (one per 32 ms frame, ``vad.frame_probabilities``) say nobody speaks.

    Each cut is looked for in the second half of the next ``length`` seconds: the latest
    stretch of frames under ``threshold`` at least ``PAUSE_SECONDS`` long, else the longest
    shorter one, else (speech throughout) the least likely frame; the window ends in its
    middle. So a window ends between words wherever there is any gap, and at a pause between
    phrases wherever there is one in reach."""
    if duration <= length:
        return [(0.0, duration)]
    probs = np.asarray(probs, dtype=np.float32)
    windows, start = [], 0.0
    while duration - start > length:
        lo = int(np.ceil((start + length / 2) / FRAME_SECONDS))
        hi = min(int((start + length) / FRAME_SECONDS), len(probs))
        if hi <= lo:  # no scores this far (probs shorter than the audio): a plain cut
            cut = start + length
        else:
            cut = _quietest(probs[lo:hi], threshold, lo) * FRAME_SECONDS
            cut = min(max(cut, start + FRAME_SECONDS), start + length)
        windows.append((start, cut))
        start = cut
    windows.append((start, duration))
    return windows


def speech_extent(
    probs: np.ndarray, start: float, end: float, threshold: float = DEFAULT_THRESHOLD
) -> tuple[float, float]:
    """Segmented mode: where a window's speech lies, from its first to its last frame of
    ``probs`` at or over ``threshold``, widened by ``EXTENT_PAD`` seconds on each side and
    kept inside the window; the whole window where no frame is speech."""
    lo = int(np.ceil(start / FRAME_SECONDS))
    hi = min(int(end / FRAME_SECONDS), len(probs))
    speech = np.flatnonzero(np.asarray(probs[lo:hi]) >= threshold) if hi > lo else []
    if len(speech) == 0:
        return start, end
    first, last = (lo + speech[0]) * FRAME_SECONDS, (lo + speech[-1] + 1) * FRAME_SECONDS
    return max(start, first - EXTENT_PAD), min(end, last + EXTENT_PAD)


SENTENCE_ENDS = (".", "?", "!")


def split_sentences(seg: RawSegment, tokenizer) -> list[RawSegment]:
    """A segment with timed tokens (word timestamps) cut after each token that ends a
    sentence (``.``, ``?``, ``!`` before a token that starts a word), each part spanning its
    own tokens' times; a segment without timings as it is."""
    if seg.timing is None or not seg.tokens:
        return [seg]
    texts = [tokenizer.decode([t]) for t in seg.tokens]
    cuts = [
        i + 1
        for i in range(len(texts) - 1)
        if texts[i].rstrip().endswith(SENTENCE_ENDS) and texts[i + 1].startswith(" ")
    ]
    bounds = list(zip([0, *cuts], [*cuts, len(texts)]))
    if len(bounds) == 1:
        return [seg]
    return [
        seg.part(lo, hi, start=seg.timing[lo][0], end=seg.timing[hi - 1][1]) for lo, hi in bounds
    ]


def _quietest(probs: np.ndarray, threshold: float, offset: int) -> float:
    """The frame position (from ``offset``, in frames, may be fractional) to cut
    ``plan_segments``' search range at."""
    quiet = probs < threshold
    runs, i = [], 0
    while i < len(quiet):
        if quiet[i]:
            j = i
            while j < len(quiet) and quiet[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    pause = round(PAUSE_SECONDS / FRAME_SECONDS)
    long_runs = [r for r in runs if r[1] - r[0] >= pause]
    if long_runs:
        a, b = long_runs[-1]
    elif runs:
        a, b = max(runs, key=lambda r: (r[1] - r[0], r[0]))
    else:
        a = len(probs) - 1 - int(np.argmin(probs[::-1]))  # the latest of equal minima
        b = a + 1
    return offset + (a + b) / 2


class Transcriber:
    """A loaded model ready to transcribe; holds the fused inference weights.

    ``encoder_dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``; default: the model's
    own, float32) runs the encoder, and an assistant's, in that precision; decoding stays in
    the model's (``InferenceSession``). ``vocab_screen`` (default: where the CPU multiplies
    bfloat16 in hardware) screens each step's vocabulary projection in bfloat16 and keeps
    what decoding decides from in float32 (``InferenceSession.logits``); False: float32
    throughout. ``session``: an ``InferenceSession`` already built over ``model``'s weights
    (``model`` then a ``ModelBundle``) to share rather than build a second one; its own
    encoder precision and screen apply, and ``encoder_dtype`` and ``vocab_screen`` must be
    left unset."""

    def __init__(
        self,
        model: str | ModelBundle = DEFAULT_MODEL,
        device: str = "cpu",
        assistant: str | ModelBundle | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        vocab_screen: bool | None = None,
        session: InferenceSession | None = None,
    ):
        encoder_dtype = encoder_dtype_of(encoder_dtype)  # a bad name fails before loading
        if session is not None:
            if not isinstance(model, ModelBundle):
                raise ValueError("session must be one over the given ModelBundle's model")
            check_shared_session(session, model.model, encoder_dtype, vocab_screen)
            encoder_dtype = session.encoder_dtype
        self.bundle = model if isinstance(model, ModelBundle) else load_model(model, device)
        self.session = session or InferenceSession(self.bundle.model, encoder_dtype, vocab_screen)
        self.assistant: InferenceSession | None = None
        self.assistant_shares_encoder = False
        if assistant is not None:
            helper = (
                assistant if isinstance(assistant, ModelBundle) else load_model(assistant, device)
            )
            if helper.tokenizer.backend.get_vocab_size() != self.tokenizer.backend.get_vocab_size():
                raise ValueError("the assistant must share the model's vocabulary")
            self.assistant_shares_encoder = _same_encoder(self.bundle.model, helper.model)
            # an assistant that shares the encoder reuses the model's states: no copy for it
            own = None if self.assistant_shares_encoder else encoder_dtype
            self.assistant = InferenceSession(helper.model, own, vocab_screen)
        self.speculative_stats = SpeculativeStats()

    @property
    def tokenizer(self):
        return self.bundle.tokenizer

    def check(self, options: TranscribeOptions) -> None:
        """Reject options this model cannot honour (English-only models, students trained on
        some languages only)."""
        languages = self.bundle.languages
        if languages and options.language not in (None, *languages):
            raise ValueError(
                f"model '{self.bundle.name}' was trained to transcribe {', '.join(languages)} "
                f"only, not {options.language}; use its teacher for other languages"
            )
        if not self.bundle.multilingual:
            if options.language not in (None, "en"):
                raise ValueError(f"model '{self.bundle.name}' is English-only; language must be en")
            if options.task == "translate":
                raise ValueError(f"model '{self.bundle.name}' is English-only; it cannot translate")

    def transcribe(
        self, audio: AudioSource, **options
    ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Transcribe one input; segments are produced lazily, info eagerly."""
        opts = self._options(options)
        state = self._file(0, audio, load_audio(audio), opts)
        if state.silent:
            return iter(()), self._info(state, opts)
        if state.language is None and self.bundle.multilingual:
            # the language comes from the first window's encoding, which decoding reuses:
            # run eagerly rather than encode that window twice
            result = next(self._run([state], opts, None))
            return iter(result.segments), result.info
        info = self._info(state, opts)
        results = self._run([state], opts, None)
        return (s for r in results for s in r.segments), info

    def transcribe_batch(
        self,
        sources: Iterable[AudioSource],
        progress: Callable[[float], None] | None = None,
        **options,
    ) -> Iterator[FileResult]:
        """Transcribe many inputs, batching windows across them; results in input order.

        A source that cannot be decoded yields a ``FileResult`` with ``error`` set and the
        rest go on. ``progress`` is called with the seconds of audio each window covered.
        """
        opts = self._options(options)
        pending: dict[int, FileResult] = {}  # results ready before their turn (failed, silent)
        next_out = 0
        for result in self._run(self._load_all(sources, opts, pending), opts, progress):
            pending[result.index] = result
            while next_out in pending:
                yield pending.pop(next_out)
                next_out += 1
        for index in sorted(pending):
            yield pending.pop(index)

    def _options(self, options: dict) -> TranscribeOptions:
        """Checked options of one call, the model's defaults filled in: VAD decided once
        (``uses_vad``) for all its files, chunking and the previous-text prompt."""
        opts = TranscribeOptions.from_kwargs(**options)
        self.check(opts)
        chunk, stride = self.chunking(opts.chunk_length, opts.stride_length)
        condition = self.prompts_previous_text(opts.condition_on_previous_text)
        # segmented windows are the segments: their text is decoded without timestamps
        bare = opts.without_timestamps or opts.long_form == "segmented"
        return replace(opts, vad=self.uses_vad(opts.vad), chunk_length=chunk,
                       stride_length=stride, condition_on_previous_text=condition,
                       without_timestamps=bare)  # fmt: skip

    def chunking(
        self, chunk_length: float | None, stride_length: float | None
    ) -> tuple[float, float]:
        """Chunked mode's ``(chunk_length, stride_length)`` for this model (see
        ``resolve_chunking``)."""
        return resolve_chunking(self.bundle, chunk_length, stride_length)

    def decode_windows(
        self, windows: list[np.ndarray], languages: list[str | None] | None = None, **options
    ) -> list[DecodingResult]:
        """Decode windows of at most 30 s (16 kHz float32) as one batch, one raw result each.

        The windows go through the same padding and decoding as ``transcribe`` (temperature
        fallback included, each sampled window seeded by ``seed``); a result's
        ``tokens`` are the model's output ids, text and timestamps, without the prompt and
        the end token. ``languages`` sets each window's language (None:
        ``options['language']``, then detection on multilingual models).
        """
        opts = TranscribeOptions.from_kwargs(**options)
        too_long = [i for i, w in enumerate(windows) if len(w) > N_SAMPLES]
        if too_long:
            raise ValueError(f"windows {too_long} are longer than {WINDOW_SECONDS:.0f} s")
        languages = [None] * len(windows) if languages is None else list(languages)
        if len(languages) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(languages)} languages")
        languages = [normalize_language(x) or opts.language for x in languages]
        for language in set(languages):
            self.check(replace(opts, language=language))
        enc, mel = self._encode(windows, opts)
        files = [_File(i, None, w, lang) for i, (w, lang) in enumerate(zip(windows, languages))]
        need = [i for i, f in enumerate(files) if f.language is None]
        if need and self.bundle.multilingual:
            self._detect([files[i] for i in need], enc[need])
        contexts = [self._initial_context(opts)] * len(windows)
        return self._decode_with_fallback(enc, mel, [f.language for f in files], contexts, opts)

    def _load_all(self, sources, opts, done: dict[int, FileResult]) -> Iterator[_File]:
        """The files to transcribe; an unreadable one, or one where VAD found no speech,
        goes straight into ``done``."""
        for index, source in enumerate(sources):
            try:
                f = self._file(index, source, load_audio(source), opts)
            except AudioError as error:
                done[index] = FileResult(index, source, error=str(error))
                continue
            if f.silent:
                done[index] = FileResult(index, source, [], self._info(f, opts))
            else:
                yield f

    def prompts_previous_text(self, condition: bool | None) -> bool:
        """Whether sequential mode prompts each window with the text before it, for
        ``TranscribeOptions.condition_on_previous_text=condition``: as asked, else as the
        model says (``ModelBundle.condition_on_previous_text``)."""
        return self.bundle.condition_on_previous_text if condition is None else bool(condition)

    def uses_vad(self, vad: bool | None) -> bool:
        """Whether a transcription with ``TranscribeOptions.vad=vad`` runs VAD: as asked, else
        as the model says (``ModelBundle.vad``). A model's default is skipped, with a warning
        once, where silero-vad is not installed; ``vad=True`` then fails with what to install."""
        return default_on(self.bundle.vad, self.bundle.name) if vad is None else vad

    def _file(self, index: int, source, audio: np.ndarray, opts: TranscribeOptions) -> _File:
        """A file's state; with ``opts.vad`` (decided by ``_options``) its audio is only the
        speech VAD found."""
        if not opts.vad:
            return _File(index, source, audio, opts.language)
        found = speech_map(audio, opts.vad_threshold, opts.vad_min_silence, opts.vad_speech_pad)
        return _File(index, source, found.speech(audio), opts.language, speech=found)

    def _info(self, f: _File, opts: TranscribeOptions) -> TranscriptionInfo:
        language = f.language or "en"
        probs = f.language_probs or {language: 1.0}
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        speech = f.speech
        return TranscriptionInfo(
            language=language,
            language_probability=float(probs.get(language, 1.0)),
            duration=f.duration if speech is None else speech.total / SAMPLE_RATE,
            duration_after_vad=None if speech is None else speech.duration_after_vad,
            options=asdict(opts),
            model=self.bundle.name,
            all_language_probs=ranked[:10] if f.language_probs else None,
        )

    def _run(self, files: Iterable[_File], opts, progress) -> Iterator[FileResult]:
        run = self._run_sequential if opts.long_form == "sequential" else self._run_chunked
        for f in run(files, opts, progress):
            segments = _to_segments(f.raw, self.tokenizer, f.language)
            if f.speech is not None:
                segments = f.speech.restore(segments)
            yield FileResult(f.index, f.source, segments, self._info(f, opts))

    # -- shared window machinery -------------------------------------------------------

    def _encode(
        self, windows: list[np.ndarray], opts: TranscribeOptions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states ``(rows, n_audio_ctx, d)`` and the log-mel they came from: every
        window padded to 30 s, or with a dynamic audio context to the batch's longest + 1 s."""
        mode = opts.audio_context or self.bundle.audio_context
        n = context_samples([len(w) for w in windows], mode)
        mel = log_mel_spectrogram(
            np.stack([_pad(w, n) for w in windows]), n_mels=self.bundle.n_mels, n_samples=n
        )
        mel = mel.to(self.bundle.device)
        return self.session.encode(mel), mel

    def _detect(self, files: list[_File], enc: torch.Tensor) -> None:
        languages = self.bundle.languages
        for f, probs in zip(files, detect_language(self.session, self.tokenizer, enc, languages)):
            f.language_probs = probs
            f.language = max(probs, key=probs.get)

    def _decode_with_fallback(self, enc, mel, languages, contexts, opts) -> list[DecodingResult]:
        """Decode rows at rising temperatures until each passes the quality thresholds
        (``decode_with_fallback``); greedy rows go through the assistant where there is one."""

        def rows(pending: list[int], options: DecodingOptions, generators) -> list[DecodingResult]:
            if options.temperature == 0 and self.assistant is not None and not options.beam_size:
                return self._speculative(enc, mel, pending, languages, contexts, options)
            picked = enc if len(pending) == enc.shape[0] else enc[pending]
            return decode(self.session, self.tokenizer, self.bundle.suppress_tokens, picked,
                          options, [languages[i] for i in pending],
                          [contexts[i] for i in pending], generators)  # fmt: skip

        return decode_with_fallback(rows, enc.shape[0], opts.decoding(), opts)

    def _speculative(self, enc, mel, rows, languages, contexts, options) -> list[DecodingResult]:
        """Greedy rows decoded one at a time with the assistant drafting for the model."""
        assistant_enc = enc if self.assistant_shares_encoder else self.assistant.encode(mel)
        return [
            speculative_decode(
                self.session,
                self.assistant,
                self.tokenizer,
                self.bundle.suppress_tokens,
                enc[i : i + 1],
                assistant_enc[i : i + 1],
                replace(options, prompt=tuple(contexts[i]) if contexts[i] else None),
                languages[i],
                stats=self.speculative_stats,
            )
            for i in rows
        ]

    # -- chunked -------------------------------------------------------------------------

    def _run_chunked(self, files, opts, progress) -> Iterator[_File]:
        queue: list[tuple[_File, int]] = []
        open_files: dict[int, _File] = {}
        file_iter = iter(files)

        def admit(f: _File) -> None:
            if opts.long_form == "segmented":
                f.windows, f.extents = self._cut_at_pauses(f, opts)
            else:
                f.windows = plan_windows(f.duration, opts.stride_length, opts.chunk_length)
            open_files[f.index] = f
            queue.extend((f, w) for w in range(len(f.windows)))

        while True:
            _fill(file_iter, lambda: len(queue) >= opts.batch_size, admit)
            if not queue:
                return
            batch = queue[: opts.batch_size]
            del queue[: opts.batch_size]
            self._chunked_batch(batch, opts, progress)
            for f in {id(f): f for f, _ in batch}.values():
                if len(f.decoded) == len(f.windows):
                    decoded = [f.decoded[w] for w in range(len(f.windows))]
                    if opts.long_form == "segmented":
                        f.raw = join_windows(decoded)
                    else:
                        f.raw = merge_windows(decoded, f.windows)
                    yield open_files.pop(f.index)

    @staticmethod
    def _cut_at_pauses(f: _File, opts: TranscribeOptions) -> tuple[list, list]:
        """Segmented mode's windows of a file, ``plan_segments`` on Silero's scores of the
        audio being transcribed (with VAD on, only its speech: the scores VAD made of it),
        and where the speech in each lies (``speech_extent``). A file that fits one window
        is not scored: one window, its segment the whole file."""
        if f.duration <= opts.chunk_length:
            return [(0.0, f.duration)], [(0.0, f.duration)]
        probs = None if f.speech is None else f.speech.speech_probabilities()
        if probs is None:
            probs = frame_probabilities(f.audio)
        windows = plan_segments(probs, f.duration, opts.chunk_length, opts.vad_threshold)
        return windows, [speech_extent(probs, s, e, opts.vad_threshold) for s, e in windows]

    def _chunked_batch(self, batch, opts, progress) -> None:
        """Encode and decode a batch of windows into each file's ``decoded``; a segmented
        window's text (decoded without timestamps) is one segment over its speech."""
        spans = [f.windows[w] for f, w in batch]
        audio = [
            f.audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)]
            for (f, _), (s, e) in zip(batch, spans)
        ]
        enc, mel = self._encode(audio, opts)
        first = [i for i, (f, w) in enumerate(batch) if w == 0 and f.language is None]
        if first and self.bundle.multilingual:
            self._detect([batch[i][0] for i in first], enc[first])
        languages = [f.language for f, _ in batch]
        contexts = [self._initial_context(opts)] * len(batch)
        for (f, w), (start, end), result in zip(
            batch, spans, self._decode_with_fallback(enc, mel, languages, contexts, opts)
        ):
            if _is_silence(result, opts):
                f.decoded[w] = []
                continue
            if opts.long_form == "segmented":
                start, end = f.extents[w]
            f.decoded[w] = parse_window(
                result.tokens, self.tokenizer.timestamp_begin, start, end, result, window_id=w
            )[0]
        if opts.word_timestamps:
            segments = [f.decoded[w] for f, w in batch]
            self._time_words(enc, segments, [s for s, _ in spans], audio, languages, opts)
            if opts.long_form == "segmented":  # timed words: a window's sentences apart
                for f, w in batch:
                    f.decoded[w] = [
                        part
                        for seg in f.decoded[w]
                        for part in split_sentences(seg, self.tokenizer)
                    ]
        if progress:
            shared = 0.0 if opts.long_form == "segmented" else opts.stride_length * 2
            for (_, w), (start, end) in zip(batch, spans):
                progress(end - start if w == 0 else end - start - shared)

    def _time_words(self, enc, segments, offsets, windows, languages, opts) -> None:
        """Time each token of each row's segments (``RawSegment.timing``) from the
        cross-attention over the row's window (``timing.align_window``)."""
        rows = [i for i, segs in enumerate(segments) if any(s.tokens for s in segs)]
        if not rows:
            return
        timed = align_window(
            self.session,
            self.tokenizer,
            self.bundle.alignment_heads,
            enc[rows],
            [[t for s in segments[i] for t in s.tokens] for i in rows],
            [windows[i] for i in rows],
            [languages[i] for i in rows],
            opts.task,
        )
        for i, (starts, ends, probs) in zip(rows, timed):
            k = 0
            for seg in segments[i]:
                n = len(seg.tokens)
                seg.timing = [
                    (offsets[i] + float(a), offsets[i] + float(b), float(p))
                    for a, b, p in zip(starts[k : k + n], ends[k : k + n], probs[k : k + n])
                ]
                k += n

    def _initial_context(self, opts) -> list[int] | None:
        if not opts.initial_prompt:
            return None
        return self.tokenizer.encode(" " + opts.initial_prompt.strip())

    # -- sequential ----------------------------------------------------------------------

    def _run_sequential(self, files, opts, progress) -> Iterator[_File]:
        active: list[_File] = []
        file_iter = iter(files)

        def admit(f: _File) -> None:
            f.context = self._initial_context(opts) or []
            active.append(f)

        while True:
            _fill(file_iter, lambda: len(active) >= opts.batch_size, admit)
            if not active:
                return
            self._sequential_batch(active, opts, progress)
            for f in [f for f in active if f.seek >= len(f.audio)]:
                active.remove(f)
                yield f

    def _sequential_batch(self, active: list[_File], opts, progress) -> None:
        windows = [f.audio[f.seek : f.seek + N_SAMPLES] for f in active]
        enc, mel = self._encode(windows, opts)
        need = [i for i, f in enumerate(active) if f.language is None]
        if need and self.bundle.multilingual:
            self._detect([active[i] for i in need], enc[need])
        languages = [f.language for f in active]
        contexts = [f.context if opts.condition_on_previous_text else None for f in active]
        results = self._decode_with_fallback(enc, mel, languages, contexts, opts)
        offsets = [f.seek / SAMPLE_RATE for f in active]
        kept: list[list[RawSegment]] = []
        for f, window, result in zip(active, windows, results):
            offset = f.seek / SAMPLE_RATE
            duration = len(window) / SAMPLE_RATE
            kept.append([])
            if _is_silence(result, opts):
                advance = duration
            else:
                segments, advance = parse_window(
                    result.tokens, self.tokenizer.timestamp_begin, offset, offset + duration, result
                )
                complete = [s for s in segments if s.complete or advance >= duration]
                f.raw.extend(complete)
                kept[-1] = complete
                f.context.extend(result.tokens)
                if result.temperature > opts.prompt_reset_on_temperature:
                    f.context = []
            advance = max(advance, TIME_PRECISION) if advance < duration else duration
            f.seek += max(int(round(advance * SAMPLE_RATE)), 1)
            if progress:
                progress(min(advance, duration))
        if opts.word_timestamps:
            self._time_words(enc, kept, offsets, windows, languages, opts)


def _fill(files: Iterator[_File], full: Callable[[], bool], admit: Callable[[_File], None]):
    """Take files from ``files`` into the work set until ``full()`` or none are left."""
    while not full():
        f = next(files, None)
        if f is None:
            return
        admit(f)


def _same_encoder(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    """True when ``other`` has exactly ``model``'s encoder (a student that kept it frozen)."""
    mine, theirs = model.model.encoder.state_dict(), other.model.encoder.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k]) for k in mine
    )


def _pad(window: np.ndarray, n: int = N_SAMPLES) -> np.ndarray:
    return window if len(window) == n else np.pad(window, (0, n - len(window)))


RowDecoder = Callable[[list[int], DecodingOptions, list[torch.Generator] | None], list]


def decode_with_fallback(
    rows: RowDecoder,
    n: int,
    base: DecodingOptions,
    opts: TranscribeOptions,
) -> list[DecodingResult]:
    """Results of ``n`` rows decoded at ``opts.temperature`` in turn (``base`` at each), a
    row going on to the next temperature while it ``needs_fallback``; ``rows(indices,
    options, generators)`` decodes those rows together (``decoding.decode``'s
    ``generator``). At every temperature but the last a looping row is cut short
    (``stop_compression_ratio``). A row decoded at a temperature above 0 samples from a
    generator of its own seeded with ``opts.seed``, so that its text depends on the row, not
    on its batch or on what was sampled before."""
    results: list[DecodingResult | None] = [None] * n
    pending = list(range(n))
    for k, temperature in enumerate(opts.temperature):
        options = with_temperature(base, temperature)
        if k + 1 < len(opts.temperature):  # a looping row will be decoded again: cut it
            options = replace(options, stop_compression_ratio=opts.compression_ratio_threshold)
        generators = row_generators(len(pending), opts.seed) if temperature > 0 else None
        decoded = rows(pending, options, generators)
        retry = []
        for i, result in zip(pending, decoded):
            results[i] = result
            if needs_fallback(result, opts):
                retry.append(i)
        pending = retry
        if not pending:
            break
    return results


def row_generators(n: int, seed: int) -> list[torch.Generator]:
    """One generator per row, each seeded with ``seed``: a sampled row's draws then depend on
    the row alone (``decoding.decode``'s ``generator``)."""
    return [torch.Generator().manual_seed(seed) for _ in range(n)]


def needs_fallback(result: DecodingResult, opts: TranscribeOptions) -> bool:
    """openai-whisper's rule: too repetitive or too unlikely, unless it is silence."""
    if _is_silence(result, opts):
        return False
    too_repetitive = (
        opts.compression_ratio_threshold is not None
        and result.compression_ratio > opts.compression_ratio_threshold
    )
    too_unlikely = (
        opts.log_prob_threshold is not None and result.avg_logprob < opts.log_prob_threshold
    )
    return too_repetitive or too_unlikely


def _is_silence(result: DecodingResult, opts: TranscribeOptions) -> bool:
    if opts.no_speech_threshold is None or result.no_speech_prob <= opts.no_speech_threshold:
        return False
    return opts.log_prob_threshold is None or result.avg_logprob < opts.log_prob_threshold


def _to_segments(raw: list[RawSegment], tokenizer, language: str | None = None) -> list[Segment]:
    """Detokenised segments; with token timings (word timestamps) each gets its words and
    spans them (``timing.tidy_words``: over-long words next to pauses cut down)."""
    kept = [(seg, tokenizer.decode(seg.tokens)) for seg in raw]
    kept = [(seg, text) for seg, text in kept if text.strip()]
    words = [
        None
        if seg.timing is None
        else split_words(tokenizer, seg.tokens, *zip(*seg.timing), language=language)
        for seg, _ in kept
    ]
    median = median_word_duration([w for ws in words if ws for w in ws])
    segments = []
    last_end = 0.0  # words never overlap, not even across a join of two windows
    for (seg, text), seg_words in zip(kept, words):
        start, end = seg.start, seg.end
        if seg_words:
            seg_words, start, end = tidy_words(seg_words, start, end, median)
            seg_words, last_end = _in_order(seg_words, last_end)
            start, end = seg_words[0].start, seg_words[-1].end
        segments.append(
            Segment(
                id=len(segments),
                start=round(start, 3),
                end=round(end, 3),
                text=text,
                tokens=tuple(seg.tokens),
                avg_logprob=seg.avg_logprob,
                compression_ratio=seg.compression_ratio,
                no_speech_prob=seg.no_speech_prob,
                temperature=seg.temperature,
                words=None if seg_words is None else tuple(seg_words),
            )
        )
    return segments


def _in_order(words: list, after: float) -> tuple[list, float]:
    """``words`` starting no earlier than ``after`` and than the word before ends."""
    out = []
    for w in words:
        start = max(w.start, after)
        after = max(w.end, start)
        out.append(replace(w, start=start, end=after))
    return out, after


@lru_cache(maxsize=2)
def get_transcriber(model: str = DEFAULT_MODEL, device: str = "cpu") -> Transcriber:
    """A process-wide ``Transcriber`` per (model, device), loaded on first use."""
    return Transcriber(model, device)


def transcribe(
    audio: AudioSource, model: str | ModelBundle = DEFAULT_MODEL, **options
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """Transcribe ``audio`` (path, bytes, file object or 16 kHz array) with ``model``.

    Returns ``(segments, info)``: a lazy iterator of ``Segment`` and a ``TranscriptionInfo``
    recording the language and every option used. Options: see ``TranscribeOptions``.
    """
    transcriber = Transcriber(model) if isinstance(model, ModelBundle) else get_transcriber(model)
    return transcriber.transcribe(audio, **options)
