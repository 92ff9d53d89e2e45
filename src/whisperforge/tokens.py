"""Speech tokens: audio -> discrete ids (25 per second) -> text, and ids as LLM text.

A ``SpeechTokenizer`` is a trained ``WhisperVQ`` bottleneck (``whisperforge.models.vq``) plus
the frozen Whisper model it sits in. ``tokenize`` runs the Whisper encoder on 30 s windows
and quantizes; only real-speech ids come out (``ceil(frames / 2)`` per window: 11.0 s -> 275
ids; the mask id never appears). ``transcribe_tokens`` turns ids back into decoder features
(a short window padded with the mask code) and decodes them with the project's own decoding
stack (``whisperforge.decoding``), greedy by default, batched over windows of many sequences.

On disk a speech tokenizer is a folder::

    speech_tokenizer.json         format version, teacher reference, preset, VQConfig, layout
    speech_tokenizer.safetensors  the bottleneck's weights and codebook state only

The Whisper model is referenced (``"teacher": "whisper-base"``), never copied. Shipped
tokenizers live in ``whisperforge/zoo/<name>/`` and load by that short name.

LLM text form: ``<|sound_start|><|sound_0123|>...<|sound_end|>``; ``add_sound_tokens`` adds
these tokens to a Hugging Face tokenizer and resizes a model's embeddings to match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from whisperforge.audio import N_SAMPLES, SAMPLE_RATE, AudioSource, load_audio, log_mel_spectrogram
from whisperforge.decoding import DecodingOptions, decode, detect_language
from whisperforge.fileio import atomic_folder
from whisperforge.models.inference import (
    InferenceSession,
    check_shared_session,
    encoder_dtype_of,
)
from whisperforge.models.loading import ModelBundle, ModelNotFoundError, load_model
from whisperforge.models.vq import (
    VQConfig,
    WhisperVQ,
    frame_mask,
    tokens_for_samples,
)
from whisperforge.models.zoo import zoo_models, zoo_path
from whisperforge.stitch import merge_windows, parse_window
from whisperforge.training.checkpoint import MODEL_FILE, STATE_FILE
from whisperforge.transcribe import plan_windows
from whisperforge.vad import VadOptions, default_on, speech_only

FORMAT_VERSION = 1
# ids of more than one window (30 s) are decoded in overlapping windows of this many seconds
# sharing this much with each neighbour, merged where they agree (transcribe's chunked
# long-form; docs/tokens.md, *Long recordings*)
LONG_FORM_CHUNK = 20.0
LONG_FORM_STRIDE = 3.0
CONFIG_FILE = "speech_tokenizer.json"
WEIGHTS_FILE = "speech_tokenizer.safetensors"
SOUND_START = "<|sound_start|>"
SOUND_END = "<|sound_end|>"
_SOUND_RE = re.compile(r"<\|sound_(\d{4})\|>")


# ------------------------------------------------------------------------ LLM text form


def sound_token(token_id: int) -> str:
    """The LLM token of speech id ``token_id``: ``<|sound_0123|>``."""
    if not 0 <= token_id <= 9999:
        raise ValueError(f"speech token id {token_id} outside 0..9999")
    return f"<|sound_{token_id:04d}|>"


def to_llm_text(ids: Sequence[int]) -> str:
    """``[123, 7]`` -> ``<|sound_start|><|sound_0123|><|sound_0007|><|sound_end|>``."""
    return SOUND_START + "".join(sound_token(int(i)) for i in ids) + SOUND_END


def from_llm_text(text: str) -> list[int]:
    """Inverse of ``to_llm_text``; only sound tokens may stand between the two markers."""
    text = text.strip()
    if not (text.startswith(SOUND_START) and text.endswith(SOUND_END)):
        raise ValueError(
            f"speech token text must start with {SOUND_START} and end with {SOUND_END}"
        )
    body = text[len(SOUND_START) : -len(SOUND_END)]
    ids = [int(m) for m in _SOUND_RE.findall(body)]
    if _SOUND_RE.sub("", body).strip():
        raise ValueError(f"unexpected text between sound tokens: {_SOUND_RE.sub('', body)[:40]!r}")
    return ids


@dataclass(frozen=True)
class SoundTokenIds:
    """LLM vocabulary ids of the sound tokens: ``codes[i]`` is ``<|sound_i|>``."""

    start: int
    end: int
    codes: tuple[int, ...]

    def encode(self, ids: Sequence[int]) -> list[int]:
        """Speech ids -> LLM ids, wrapped in start/end (what ``to_llm_text`` tokenizes to)."""
        return [self.start, *(self.codes[i] for i in ids), self.end]


def add_sound_tokens(
    tokenizer, n_ids: int, model=None, *, pad_to_multiple_of: int | None = None
) -> SoundTokenIds:
    """Add ``<|sound_start|>``, ``<|sound_end|>`` and ``<|sound_0000|>`` ... for ``n_ids``
    speech ids to a Hugging Face tokenizer (idempotent), and resize ``model``'s input (and
    tied output) embeddings to the new vocabulary. Returns the new tokens' ids."""
    from tokenizers import AddedToken

    names = [SOUND_START, SOUND_END, *(sound_token(i) for i in range(n_ids))]
    tokenizer.add_tokens([AddedToken(n, normalized=False, special=False) for n in names])
    if model is not None:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
    ids = tokenizer.convert_tokens_to_ids(names)
    return SoundTokenIds(ids[0], ids[1], tuple(ids[2:]))


# ------------------------------------------------------------------------ on-disk format


def codebook_layout(config: VQConfig, merged_from: str | None = None) -> dict:
    """The token-id layout written into ``speech_tokenizer.json``."""
    parts = [
        {"name": "codes", "start": 0, "size": config.codebook_size},
        {"name": "mask", "start": config.mask_id, "size": 1},
    ]
    if config.merged_codes:
        part = {"name": "merged", "start": config.mask_id + 1, "size": config.merged_codes}
        parts.append(part | ({"source": merged_from} if merged_from else {}))
    return {"n_ids": config.n_ids, "mask_id": config.mask_id, "parts": parts}


def bottleneck_meta(
    bottleneck: WhisperVQ,
    teacher: str,
    preset: str | None = None,
    merged_from: str | None = None,
    vad: bool = False,
) -> dict:
    """The metadata (``speech_tokenizer.json``) of ``bottleneck`` in the Whisper model
    ``teacher``; a tokenizer run's checkpoints record it too, so they load as tokenizers."""
    meta = {
        "format": FORMAT_VERSION,
        "teacher": str(teacher),
        "preset": preset,
        "config": bottleneck.config.to_dict(),
        "codebook": codebook_layout(bottleneck.config, merged_from),
        "tokens_per_second": bottleneck.config.tokens_per_second,
    }
    if vad:
        meta["vad"] = True
    return meta


def save_bottleneck(
    bottleneck: WhisperVQ,
    folder: str | Path,
    teacher: str,
    preset: str | None = None,
    merged_from: str | None = None,
    dtype: torch.dtype | None = None,
    vad: bool = False,
) -> Path:
    """Write ``bottleneck`` (weights + codebook state, float32 or ``dtype``: float16 halves
    the folder, for a tokenizer that ships) and its metadata into ``folder`` atomically;
    ``teacher`` is the Whisper model reference it sits in. Loading casts back to float32.
    ``vad``: the tokenizer tokenizes only speech unless told otherwise (``"vad": true``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in bottleneck.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = bottleneck_meta(bottleneck, teacher, preset, merged_from, vad)
    with atomic_folder(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _whole(folder: Path) -> bool:
    """Whether ``folder`` is a tokenizer folder (``speech_tokenizer.json`` + weights)."""
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a training checkpoint (``tokenizer train``'s
    ``checkpoints/step-N``): weights in ``model.safetensors``, metadata in ``state.json``."""
    return (folder / STATE_FILE).is_file() and (folder / MODEL_FILE).is_file()


def resolve_tokenizer(ref: str | Path) -> Path:
    """A shipped tokenizer's short name, a folder, or a checkpoint of a ``tokenizer train``
    run (``RUN/checkpoints/step-N``) -> the folder, or a clear error."""
    folder = zoo_path(str(ref)) or Path(ref).expanduser()
    if not _whole(folder) and not _checkpoint(folder):
        shipped = [n for n, p in zoo_models().items() if (p / CONFIG_FILE).exists()]
        raise ModelNotFoundError(
            f"no speech tokenizer at '{ref}': expected a folder with {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (make one with `whisperforge tokens init`) or a training "
            "checkpoint (RUN/checkpoints/step-N)"
            + (f"; shipped: {', '.join(shipped)}" if shipped else "")
        )
    return folder


def _weights_file(folder: Path) -> Path:
    return folder / (WEIGHTS_FILE if _whole(folder) else MODEL_FILE)


def tokenizer_weights(ref: str | Path) -> Path:
    """The weights file of the tokenizer ``ref`` (folder, name or training checkpoint)."""
    return _weights_file(resolve_tokenizer(ref))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a speech tokenizer config ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a speech tokenizer config (expected a JSON object)")
    return data


def tokenizer_meta(ref: str | Path) -> dict:
    """The metadata (``speech_tokenizer.json``) of the tokenizer ``ref`` (folder, name or
    training checkpoint), read without loading its weights; a file that is not JSON is a
    clear ``ValueError``."""
    folder = resolve_tokenizer(ref)
    if _whole(folder):
        return _read_json(folder / CONFIG_FILE)
    meta = _read_json(folder / STATE_FILE).get("speech_tokenizer")
    if not isinstance(meta, dict):
        raise ValueError(
            f"{folder}: a training checkpoint without speech tokenizer metadata (not one "
            "of `whisperforge tokenizer train`, or written by an older whisperforge)"
        )
    return meta


def default_vad(ref: str | Path) -> bool:
    """Whether the tokenizer ``ref`` (folder or name) tokenizes only speech by default (its
    ``speech_tokenizer.json``'s ``"vad"``), read without loading its weights."""
    return bool(tokenizer_meta(ref).get("vad", False))


def load_bottleneck(ref: str | Path) -> tuple[WhisperVQ, dict]:
    """The bottleneck (eval mode, CPU) and metadata of a speech tokenizer folder, name or
    training checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_tokenizer(ref)
    meta = tokenizer_meta(folder)
    weights = _weights_file(folder)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: tokenizer format {meta.get('format')!r} is not supported "
            f"(this version reads format {FORMAT_VERSION}); upgrade whisperforge"
        )
    bottleneck = WhisperVQ(VQConfig.from_dict(meta["config"]))
    try:
        state = load_file(str(weights))
    except SafetensorError as error:
        raise ValueError(f"{weights}: unreadable weights ({error})") from None
    bottleneck.load_state_dict(state)
    return bottleneck.eval(), meta


# ------------------------------------------------------------------------ the tokenizer


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SpeechTokenizer:
    """A ``WhisperVQ`` bottleneck inside a frozen Whisper model (``whisper``'s ``.model``).

    ``teacher`` is the Whisper reference stored on save; ``meta`` keeps the rest of the
    metadata (preset, merged parts) through a load/save round trip. ``encoder_dtype``
    (``"bfloat16"``, ``"float16"``; default the model's float32) runs the Whisper encoder on a
    converted copy in that precision, as ``Transcriber`` does: faster tokenization on CPUs
    with bfloat16 instructions, at the price of a few codes that flip near a tie
    (docs/tokens.md). The bottleneck and the decoder stay in the model's precision.
    ``session``: an ``InferenceSession`` already built over ``whisper``'s weights (a
    ``Transcriber``'s, say) to share instead of building one; it keeps its own precision, so
    it cannot come with ``encoder_dtype``.
    """

    def __init__(
        self,
        bottleneck: WhisperVQ,
        whisper: ModelBundle,
        teacher: str,
        meta: dict | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        session: InferenceSession | None = None,
    ):
        width = whisper.model.config.d_model
        if width != bottleneck.config.d_model:
            raise ValueError(
                f"bottleneck width {bottleneck.config.d_model} does not match the Whisper "
                f"model '{teacher}' (d_model {width})"
            )
        self.bottleneck = bottleneck.to(whisper.device).eval()
        self.whisper = whisper
        self.teacher = teacher
        self.meta = dict(meta or {})
        if session is not None:
            check_shared_session(session, whisper.model, encoder_dtype)
        self.session = session or InferenceSession(whisper.model, encoder_dtype)

    @classmethod
    def load(
        cls,
        ref: str | Path,
        device: str | torch.device = "cpu",
        whisper: ModelBundle | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        session: InferenceSession | None = None,
    ) -> SpeechTokenizer:
        """Load a tokenizer folder or shipped name and the Whisper model it references
        (or use ``whisper``, an already loaded bundle of that model); ``encoder_dtype`` and
        ``session`` as in the class."""
        encoder_dtype_of(encoder_dtype)  # a bad name fails before loading
        bottleneck, meta = load_bottleneck(ref)
        whisper = whisper or load_model(meta["teacher"], device=device)
        return cls(bottleneck, whisper, meta["teacher"], meta, encoder_dtype, session)

    @property
    def encoder_dtype(self) -> str:
        """The precision the Whisper encoder runs in, e.g. ``"float32"``."""
        return self.session.encoder_dtype_name

    def save(self, folder: str | Path) -> Path:
        """Write the bottleneck and its metadata (atomically); returns ``folder``."""
        parts = self.meta.get("codebook", {}).get("parts", [])
        merged_from = next((p.get("source") for p in parts if p["name"] == "merged"), None)
        return save_bottleneck(self.bottleneck, folder, self.teacher, self.meta.get("preset"),
                               merged_from, vad=self.vad)  # fmt: skip

    @property
    def config(self) -> VQConfig:
        return self.bottleneck.config

    @property
    def vad(self) -> bool:
        """Whether this tokenizer tokenizes only the speech VAD finds unless told otherwise
        (its config's ``"vad"``; the shipped ``whisper-vq-base`` does)."""
        return bool(self.meta.get("vad", False))

    def uses_vad(self, vad: VadOptions | bool | None) -> VadOptions | bool:
        """``vad`` as asked; None: the tokenizer's default (``vad``), skipped with a warning
        once where silero-vad is not installed (``vad=True`` then fails naming it)."""
        return default_on(self.vad, "this speech tokenizer", "tokeniz") if vad is None else vad

    def tokenize(self, audio: AudioSource, vad: VadOptions | bool | None = None) -> list[int]:
        """Speech ids of one recording (any ``load_audio`` source), 25 per second; ``vad``
        as in ``tokenize_batch``."""
        return self.tokenize_batch([audio], vad=vad)[0]

    @torch.inference_mode()
    def tokenize_batch(
        self,
        audios: Sequence[AudioSource],
        batch_size: int = 8,
        progress: Callable[[float], None] | None = None,
        vad: VadOptions | bool | None = None,
    ) -> list[list[int]]:
        """Speech ids of each recording. Audio is cut into consecutive 30 s windows (each
        zero-padded as audio, the project's one convention), ``batch_size`` windows per
        encoder call; ``progress`` gets the seconds of audio of each finished batch.

        ``vad`` (True, or ``whisperforge.vad.VadOptions``) tokenizes only the speech Silero
        VAD finds, its stretches joined (``whisperforge.vad.speech_only``): silence of 2 s or
        more before, after and between stretches gives no ids (0.4 s is kept on each side of
        speech), and a recording without speech gives none; False tokenizes every sample;
        None (the default) does what the tokenizer's config says (``uses_vad``). The shipped
        tokenizer was trained on clips that start on their first word; seconds of silence
        before speech derail its decoding, so it uses VAD by default (docs/tokens.md). An
        empty array (e.g. what VAD keeps of a silent file) gives no ids."""
        vad = self.uses_vad(vad)
        samples = [
            a.astype(np.float32) if isinstance(a, np.ndarray) and a.size == 0
            else speech_only(load_audio(a), vad)
            for a in audios
        ]  # fmt: skip
        jobs = [(i, s) for i, x in enumerate(samples) for s in range(0, len(x), N_SAMPLES)]
        out: list[list[int]] = [[] for _ in samples]
        for batch in _batches(jobs, batch_size):
            pieces = [samples[i][s : s + N_SAMPLES] for i, s in batch]
            states, mask = self.encode_windows(pieces)
            for (i, _), row in zip(batch, self.window_ids(states, mask, [len(p) for p in pieces])):
                out[i].extend(row)
            if progress is not None:
                progress(sum(len(p) for p in pieces) / SAMPLE_RATE)
        return out

    @torch.inference_mode()
    def encode_windows(self, pieces: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio of up to 30 s each (16 kHz) -> Whisper encoder states ``(rows, 1500,
        d_model)`` (each piece zero-padded to 30 s as audio) and their frame mask ``(rows,
        1500)``, True on frames that hold audio."""
        lengths = [len(p) for p in pieces]
        audio = torch.from_numpy(np.stack([np.pad(p, (0, N_SAMPLES - len(p))) for p in pieces]))
        states = self.session.encode(log_mel_spectrogram(audio, self.whisper.n_mels))
        return states, frame_mask(torch.tensor(lengths, device=states.device), states.shape[1])

    @torch.inference_mode()
    def window_ids(
        self, states: torch.Tensor, mask: torch.Tensor, lengths: Sequence[int]
    ) -> list[list[int]]:
        """Speech ids of each window of ``encode_windows`` (``lengths``: its samples): only
        its real-audio tokens, ``ceil(ceil(n / 320) / 2)`` of them."""
        codes = self.bottleneck.quantize(states.float(), mask).tolist()
        n = self.config.downsample
        return [row[: tokens_for_samples(length, n)] for row, length in zip(codes, lengths)]

    def _check_ids(self, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        checked = []
        for index, seq in enumerate(sequences):
            ids = [int(i) for i in seq]
            bad = [i for i in ids if not 0 <= i < self.config.n_ids]
            if bad:
                raise ValueError(
                    f"sequence {index}: token id {bad[0]} is outside 0..{self.config.n_ids - 1} "
                    f"(this tokenizer has {self.config.n_ids} ids); were these ids made by "
                    "another tokenizer?"
                )
            checked.append(ids)
        return checked

    @torch.inference_mode()
    def features(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Ids of up to one window each ``(rows, <= 750)`` -> decoder features ``(rows, 1500,
        d_model)``, what the Whisper encoder output would be."""
        n = self.config.tokens_per_window
        rows = torch.full((len(ids), n), self.config.mask_id, dtype=torch.long)
        for r, seq in enumerate(self._check_ids(ids)):
            if len(seq) > n:
                raise ValueError(f"row {r}: {len(seq)} ids exceed one window ({n})")
            rows[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        feats = self.bottleneck.dequantize(rows.to(self.whisper.device))
        return feats.to(self.session.dtype)

    def token_windows(self, n_ids: int) -> list[tuple[int, int]]:
        """The ``[start, end)`` id ranges ``transcribe_tokens`` decodes a sequence of
        ``n_ids`` ids in: the whole sequence where it fits one window (750 ids, 30 s), else
        windows of ``LONG_FORM_CHUNK`` seconds overlapping by ``2 * LONG_FORM_STRIDE``."""
        if n_ids <= self.config.tokens_per_window:
            return [(0, n_ids)]
        rate = self.config.tokens_per_second
        spans = plan_windows(n_ids / rate, LONG_FORM_STRIDE, LONG_FORM_CHUNK)
        return [(round(s * rate), min(round(e * rate), n_ids)) for s, e in spans]

    @torch.inference_mode()
    def transcribe_tokens(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        language: str | None = None,
        options: DecodingOptions | None = None,
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        fallback: bool = True,
    ) -> list[str]:
        """Text of each id sequence through the frozen Whisper decoder.

        A sequence of up to one window (750 ids, 30 s) is decoded whole. A longer one is
        decoded in overlapping windows (``token_windows``: 20 s sharing 3 s with each
        neighbour) with timestamps, merged where their texts agree, as chunked long-form
        does (``whisperforge.stitch``): each word is read in a window where it sits away
        from an edge, and no window runs to its 30 s end, where this decoder loops.
        ``options`` default: greedy, without timestamps; ``language`` (if given) overrides
        ``options.language``; a multilingual model detects it per window otherwise.
        ``progress`` gets the number of windows (``token_windows``) of each finished batch.
        ``fallback``: as in ``decode_features``.
        """
        options = options or DecodingOptions(without_timestamps=True)
        if language is not None:
            options = replace(options, language=language)
        sequences = self._check_ids(sequences)
        rate = self.config.tokens_per_second
        whole, parts = [], []  # (sequence, window, ids): decoded as asked / with timestamps
        spans: list[list[tuple[float, float]]] = [[] for _ in sequences]
        for i, seq in enumerate(sequences):
            windows = self.token_windows(len(seq))
            for w, (a, b) in enumerate(windows):
                (whole if len(windows) == 1 else parts).append((i, w, seq[a:b]))
                spans[i].append((a / rate, b / rate))
        texts = [""] * len(sequences)
        for batch in _batches(whole, batch_size):
            for (i, _, _), result in zip(batch, self._decode_ids(batch, options, fallback)):
                texts[i] = result.text.strip()
            if progress is not None:
                progress(len(batch))
        timed = replace(options, without_timestamps=False)
        decoded: list[dict[int, list]] = [{} for _ in sequences]
        timestamp_begin = self.whisper.tokenizer.timestamp_begin
        for batch in _batches(parts, batch_size):
            for (i, w, _), result in zip(batch, self._decode_ids(batch, timed, fallback)):
                start, end = spans[i][w]
                decoded[i][w] = parse_window(result.tokens, timestamp_begin, start, end, result,
                                             window_id=w)[0]  # fmt: skip
            if progress is not None:
                progress(len(batch))
        for i, windows in enumerate(decoded):
            if windows:
                merged = merge_windows([windows[w] for w in range(len(spans[i]))], spans[i])
                text = "".join(self.whisper.tokenizer.decode(s.tokens) for s in merged)
                texts[i] = text.strip()
        return texts

    def _decode_ids(self, batch: list[tuple], options: DecodingOptions, fallback: bool) -> list:
        """``DecodingResult`` of each ``(sequence, window, ids)`` of ``batch``."""
        feats = self.features([ids for _, _, ids in batch])
        return self.decode_results(feats, options, self._languages(feats, options), fallback)

    @torch.inference_mode()
    def decode_features(
        self,
        feats: torch.Tensor,
        options: DecodingOptions,
        languages: list[str | None],
        fallback: bool = True,
    ) -> list[str]:
        """Text of each row of decoder features ``(rows, 1500, d_model)`` (the bottleneck's or
        the encoder's own) through the frozen Whisper decoder, one language per row
        (``decode_results``' texts)."""
        return [r.text.strip() for r in self.decode_results(feats, options, languages, fallback)]

    @torch.inference_mode()
    def decode_results(
        self,
        feats: torch.Tensor,
        options: DecodingOptions,
        languages: list[str | None],
        fallback: bool = True,
    ) -> list:
        """``DecodingResult`` of each row of decoder features ``(rows, 1500, d_model)``
        through the frozen Whisper decoder, one language per row.

        With ``fallback`` and greedy or beam ``options`` (temperature 0), a row whose text is
        too repetitive or too unlikely is decoded again at rising temperatures, by
        ``transcribe``'s rule and defaults (``TranscribeOptions``: temperatures 0.2-1.0,
        compression ratio 2.4, log-probability -1), and a looping row is cut short first.
        Sampled rows (the fallback's, or all rows when ``options`` has a temperature above 0)
        draw from generators of their own seeded alike (``TranscribeOptions.seed``), so a row's
        text depends on its features alone, not on its batch or on torch's global generator.
        Without the fallback, one repetition loop fills the rest of its window ("She's trued.
        She's trued. ...")."""
        from whisperforge.transcribe import (
            TranscribeOptions,
            decode_with_fallback,
            row_generators,
        )

        def rows(picked: list[int], opts: DecodingOptions, generators=None) -> list:
            chosen = feats if len(picked) == feats.shape[0] else feats[picked]
            return decode(self.session, self.whisper.tokenizer, self.whisper.suppress_tokens,
                          chosen, opts, [languages[i] for i in picked],
                          generator=generators)  # fmt: skip

        n, settings = feats.shape[0], TranscribeOptions()
        if options.temperature != 0:  # sampled as asked: seeded per row, as the fallback is
            return rows(list(range(n)), options, row_generators(n, settings.seed))
        if not fallback:
            return rows(list(range(n)), options)
        return decode_with_fallback(rows, n, options, settings)

    def _languages(self, feats: torch.Tensor, options: DecodingOptions) -> list[str | None]:
        if options.language is not None or not self.whisper.multilingual:
            return [options.language] * feats.shape[0]
        probs = detect_language(self.session, self.whisper.tokenizer, feats)
        return [max(p, key=p.get) for p in probs]

    def detokenize(self, ids: Sequence[int], **kwargs) -> str:
        """Text of one id sequence (``transcribe_tokens`` keywords apply)."""
        return self.transcribe_tokens([ids], **kwargs)[0]
