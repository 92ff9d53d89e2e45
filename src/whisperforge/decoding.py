"""Decoding one batch of 30-second windows: greedy, sampling with best-of, beam search.

The logit rules are Whisper's (openai/whisper ``decoding.py``): suppressed non-speech tokens,
a blank-suppressed first token, and timestamp rules (timestamps come in pairs, never
decrease, the first is at most ``max_initial_timestamp``, and a timestamp is forced when the
timestamps together are more likely than any text token). They run vectorised over rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from whisperforge.audio import TIME_PRECISION
from whisperforge.models.inference import InferenceSession
from whisperforge.tokenizer import TASKS, Tokenizer, normalize_language

NEG_INF = float("-inf")
# a greedy row's text is judged for repetition from this many tokens on, every LOOP_EVERY
LOOP_MIN_TOKENS = 64
LOOP_EVERY = 8


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one window; checked in ``__post_init__`` (the one place)."""

    task: str = "transcribe"
    language: str | None = None
    temperature: float = 0.0
    sample_len: int | None = None  # max new tokens; default: half the text context (224)
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beam search when temperature == 0
    patience: float | None = None  # beam search: stop after beam_size * patience finished
    length_penalty: float | None = None  # None: rank by mean log-prob; else Google NMT alpha
    prompt: tuple[int, ...] | None = None  # previous-context tokens (after <|startofprev|>)
    suppress_blank: bool = True
    suppress_tokens: bool = True  # Whisper's non-speech symbol list and special tokens
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    # greedy: stop a row whose text so far compresses better than this (a repetition loop;
    # see ``_sample``); None: every row runs to its end token or ``sample_len``
    stop_compression_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        object.__setattr__(self, "language", normalize_language(self.language))
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if self.beam_size is not None and self.temperature > 0:
            raise ValueError("beam search (beam_size) needs temperature 0")
        if self.best_of is not None and self.best_of < 1:
            raise ValueError("best_of must be >= 1")
        if self.patience is not None and (self.beam_size is None or self.patience <= 0):
            raise ValueError("patience needs beam_size and must be > 0")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise ValueError("length_penalty must be between 0 and 1")
        if self.stop_compression_ratio is not None and self.stop_compression_ratio <= 0:
            raise ValueError("stop_compression_ratio must be > 0")


@dataclass
class DecodingResult:
    """Decoded window. ``tokens`` hold text and timestamp ids (no prompt, no end token)."""

    tokens: list[int]
    text: str
    avg_logprob: float
    sum_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language: str | None = None
    language_probs: dict[str, float] = field(default_factory=dict)


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (high means repetitive)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@torch.inference_mode()
def detect_language(
    session: InferenceSession,
    tokenizer: Tokenizer,
    audio_features: Tensor,
    languages: Sequence[str] | None = None,
) -> list[dict[str, float]]:
    """Language probabilities per row of ``(rows, n_audio_ctx, d_model)`` encoder states,
    among ``languages`` where given (``ModelBundle.languages``), else all the tokenizer's."""
    if not tokenizer.multilingual:
        return [{"en": 1.0} for _ in range(audio_features.shape[0])]
    if languages is not None and len(languages) == 1:
        return [{languages[0]: 1.0} for _ in range(audio_features.shape[0])]
    state = session.start(audio_features, [1] * audio_features.shape[0], 0)
    hidden = session.prompt(state, [[tokenizer.sot]] * audio_features.shape[0])
    logits = session.logits(hidden[:, -1])
    codes = [c for c in tokenizer.language_tokens if languages is None or c in languages]
    ids = torch.tensor([tokenizer.language_tokens[c] for c in codes])
    probs = logits[:, ids].softmax(-1).tolist()
    return [dict(zip(codes, row)) for row in probs]


class LogitRules:
    """Whisper's per-step logit filters, vectorised over rows."""

    def __init__(self, tokenizer: Tokenizer, suppress: list[int], options: DecodingOptions):
        self.tok = tokenizer
        self.options = options
        self.suppress = torch.tensor(suppress if options.suppress_tokens else [], dtype=torch.long)
        self.blank = torch.tensor(tokenizer.encode(" ") + [tokenizer.eot], dtype=torch.long)
        precision = options.max_initial_timestamp
        self.max_initial = None if precision is None else round(precision / TIME_PRECISION)

    def __call__(self, logits: Tensor, sampled: list[list[int]], first: bool) -> Tensor:
        """Mask ``logits`` ``(rows, vocab)`` in place given each row's sampled tokens."""
        if self.suppress.numel():
            logits[:, self.suppress] = NEG_INF
        if first and self.options.suppress_blank:
            logits[:, self.blank] = NEG_INF
        if not self.options.without_timestamps:
            self._timestamps(logits, sampled, first)
        return logits

    def _timestamps(self, logits: Tensor, sampled: list[list[int]], first: bool) -> None:
        tb, eot = self.tok.timestamp_begin, self.tok.eot
        logits[:, self.tok.no_timestamps] = NEG_INF
        if first:
            logits[:, :tb] = NEG_INF
            if self.max_initial is not None:
                logits[:, tb + self.max_initial + 1 :] = NEG_INF
        else:
            ids = torch.arange(logits.shape[1])
            limits = []
            for row, seq in enumerate(sampled):
                last = len(seq) >= 1 and seq[-1] >= tb
                penultimate = len(seq) < 2 or seq[-2] >= tb
                if last and penultimate:
                    logits[row, tb:] = NEG_INF
                elif last:
                    logits[row, :eot] = NEG_INF
                stamps = [t for t in seq if t >= tb]
                if not stamps:
                    limits.append(tb)
                else:
                    limits.append(stamps[-1] if last and not penultimate else stamps[-1] + 1)
            limit = torch.tensor(limits)[:, None]
            logits.masked_fill_((ids[None] >= tb) & (ids[None] < limit), NEG_INF)
        logprobs = F.log_softmax(logits, dim=-1)
        stamp_lp = logprobs[:, tb:].logsumexp(dim=-1)
        text_lp = logprobs[:, :tb].max(dim=-1).values
        force = stamp_lp > text_lp
        if force.any():
            logits[force, :tb] = NEG_INF


@dataclass
class _Batch:
    """Prompts and bookkeeping for one decoding call."""

    prompts: list[list[int]]
    sot_index: list[int]  # position of <|startoftranscript|> in each prompt
    languages: list[str | None]


def build_prompts(
    tokenizer: Tokenizer,
    options: DecodingOptions,
    languages: list[str | None],
    n_ctx: int,
    contexts: list[list[int] | None] | None = None,
) -> _Batch:
    """Each row's prompt: ``[<|startofprev|> context...] <|sot|> [lang task] [<|notimestamps|>]``.

    ``contexts`` gives each row its own previous-text tokens (default ``options.prompt``).
    """
    prompts, sot_index = [], []
    contexts = contexts or [options.prompt] * len(languages)
    for language, context in zip(languages, contexts):
        head: list[int] = []
        if context:
            head = [tokenizer.sot_prev] + list(context)[-(n_ctx // 2 - 1) :]
        seq = head + tokenizer.sot_sequence(language, options.task)
        if options.without_timestamps:
            seq.append(tokenizer.no_timestamps)
        prompts.append(seq)
        sot_index.append(len(head))
    return _Batch(prompts, sot_index, languages)


def _no_speech_probs(session, hidden: Tensor, batch: _Batch, tokenizer: Tokenizer) -> list[float]:
    if tokenizer.no_speech is None:
        return [0.0] * len(batch.prompts)
    width = hidden.shape[1]
    rows = torch.arange(hidden.shape[0])
    cols = torch.tensor([width - len(p) + i for p, i in zip(batch.prompts, batch.sot_index)])
    probs = session.logits(hidden[rows, cols]).softmax(-1)[:, tokenizer.no_speech]
    return probs.tolist()


def _finish(tokenizer, tokens, sum_lp, no_speech, temperature, language) -> DecodingResult:
    text = tokenizer.decode(tokens)
    return DecodingResult(
        tokens=tokens,
        text=text,
        avg_logprob=sum_lp / (len(tokens) + 1),
        sum_logprob=sum_lp,
        no_speech_prob=no_speech,
        temperature=temperature,
        compression_ratio=compression_ratio(text),
        language=language,
    )


def _rank(scores: list[float], lengths: list[int], length_penalty: float | None) -> int:
    """Index of the best candidate by length-normalised log-probability."""

    def score(i: int) -> float:
        n = lengths[i]
        penalty = n if length_penalty is None else ((5 + n) / 6) ** length_penalty
        return scores[i] / max(penalty, 1e-9)

    return max(range(len(scores)), key=score)


@torch.inference_mode()
def decode(
    session: InferenceSession,
    tokenizer: Tokenizer,
    suppress: list[int],
    audio_features: Tensor,
    options: DecodingOptions,
    languages: list[str | None] | None = None,
    contexts: list[list[int] | None] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> list[DecodingResult]:
    """Decode rows of encoder states ``(rows, n_audio_ctx, d_model)``, one result per row.

    ``languages`` gives each row's language (multilingual models; default
    ``options.language``), ``contexts`` each row's previous-text tokens. Beam search when
    ``options.beam_size`` is set and the temperature is 0; ``best_of`` samples otherwise when
    the temperature is above 0, drawn from ``generator`` (torch's default one if None). With
    one generator per row, a row's samples come from its own generator and depend on that
    row alone: decoded in any batch, it gives what it gives decoded by itself.
    """
    rows = audio_features.shape[0]
    languages = languages or [options.language] * rows
    batch = build_prompts(tokenizer, options, languages, session.n_text_ctx, contexts)
    sample_len = options.sample_len or session.n_text_ctx // 2
    max_prompt = max(len(p) for p in batch.prompts)
    sample_len = min(sample_len, session.n_text_ctx - max_prompt)
    rules = LogitRules(tokenizer, suppress, options)
    if options.beam_size is not None and options.temperature == 0:
        run = _beam_search
        group = options.beam_size
    else:
        run = _sample
        group = (options.best_of or 1) if options.temperature > 0 else 1
    return run(
        session, tokenizer, rules, audio_features, batch, options, sample_len, group, generator
    )


def _prefill(session, audio_features, batch, group, sample_len):
    """Start caches for ``group`` copies of each row and run the prompts."""
    index = torch.arange(audio_features.shape[0]).repeat_interleave(group)
    feats = audio_features.index_select(0, index) if group > 1 else audio_features
    prompts = [batch.prompts[i] for i in index.tolist()]
    state = session.start(feats, [len(p) for p in prompts], sample_len)
    hidden = session.prompt(state, prompts)
    return state, hidden, index


def _sample(session, tok, rules, audio_features, batch, options, sample_len, group, generator):
    """Greedy (temperature 0) or sampled decoding; the best of ``group`` samples per row.

    Finished rows are pruned from the caches once a quarter of the live rows have ended;
    until then they ride along and their outputs are ignored.

    Greedy rows caught in a repetition loop hold the whole batch until ``sample_len``. With
    ``options.stop_compression_ratio``, a greedy row whose text after ``LOOP_MIN_TOKENS``
    tokens (judged every ``LOOP_EVERY``) compresses better than that ratio ends there: its
    result is over the threshold either way, and the transcriber only sets it where a
    higher temperature will decode the window again.
    """
    state, hidden, _ = _prefill(session, audio_features, batch, group, sample_len)
    no_speech = _no_speech_probs(session, hidden[::group], batch, tok)
    n = state.pad.shape[0]
    sampled: list[list[int]] = [[] for _ in range(n)]
    sum_lp, done = [0.0] * n, [False] * n
    active = list(range(n))  # state row j decodes candidate active[j]
    loop_ratio = options.stop_compression_ratio if options.temperature == 0 else None
    logits = session.logits(hidden[:, -1])
    for step in range(sample_len):
        logits = rules(logits, [sampled[r] for r in active], first=step == 0)
        if options.temperature == 0:
            next_tokens = logits.argmax(dim=-1)
        else:
            probs = F.softmax(logits / options.temperature, dim=-1)
            if generator is None or isinstance(generator, torch.Generator):
                next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                next_tokens = _draw_per_row(probs, active, done, group, generator, tok.eot)
        picked = F.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None])[:, 0].tolist()
        for j, (r, token) in enumerate(zip(active, next_tokens.tolist())):
            if done[r]:
                continue
            sum_lp[r] += picked[j]
            if token == tok.eot:
                done[r] = True
            else:
                sampled[r].append(token)
        if loop_ratio is not None and step % LOOP_EVERY == 0:
            for r in active:
                if not done[r] and _in_loop(tok, sampled[r], loop_ratio):
                    done[r] = True
        live = [j for j, r in enumerate(active) if not done[r]]
        if not live:
            break
        if len(active) - len(live) >= max(1, len(active) // 4):
            keep = torch.tensor(live)
            state, next_tokens = state.select(keep), next_tokens[keep]
            active = [active[j] for j in live]
        logits = session.logits(session.step(state, next_tokens)[:, -1])
    return _choose(tok, sampled, sum_lp, no_speech, batch, options, group)


def _draw_per_row(probs: Tensor, active, done, group, generators, filler: int) -> Tensor:
    """One token per state row: each row's unfinished candidates (``group`` a row, in order)
    drawn together from that row's generator, so that what a row draws does not depend on
    which other rows share the batch or are still in it; finished ones get ``filler``."""
    tokens = torch.full((len(active),), filler, dtype=torch.long)
    live: dict[int, list[int]] = {}
    for j, candidate in enumerate(active):
        if not done[candidate]:
            live.setdefault(candidate // group, []).append(j)
    for row, states in live.items():
        index = torch.tensor(states)
        drawn = torch.multinomial(probs[index], 1, generator=generators[row]).squeeze(-1)
        tokens[index] = drawn
    return tokens


def _choose(tok, sampled, sum_lp, no_speech, batch, options, group) -> list[DecodingResult]:
    results = []
    for row in range(len(batch.prompts)):
        cands = range(row * group, (row + 1) * group)
        best = _rank(
            [sum_lp[c] for c in cands], [len(sampled[c]) for c in cands], options.length_penalty
        )
        c = row * group + best
        results.append(
            _finish(
                tok,
                sampled[c],
                sum_lp[c],
                no_speech[row],
                options.temperature,
                batch.languages[row],
            )
        )
    return results


def _beam_search(session, tok, rules, audio_features, batch, options, sample_len, beams, generator):
    """Beam search as in openai/whisper: ``beams`` live hypotheses per row, finished ones kept
    until ``beams * patience`` have ended; ranked by length-normalised log-probability.

    A row whose finished hypotheses are all in leaves the batch (its live ones can no longer
    be chosen); with ``options.stop_compression_ratio``, so does a row with none finished
    whose live hypotheses all compress better than that after ``LOOP_MIN_TOKENS`` tokens (a
    repetition loop, as in ``_sample``): its best live one is its result.
    """
    state, hidden, _ = _prefill(session, audio_features, batch, beams, sample_len)
    no_speech = _no_speech_probs(session, hidden[::beams], batch, tok)
    n_audio = len(batch.prompts)
    max_finished = round(beams * (options.patience or 1.0))
    seqs: list[list[int]] = [[] for _ in range(n_audio * beams)]
    scores = [0.0] * (n_audio * beams)
    finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(n_audio)]
    last: dict[int, dict[tuple[int, ...], float]] = {}  # live hypotheses of rows that left
    live = list(range(n_audio))  # state rows j * beams ... (j + 1) * beams hold row live[j]
    logits = session.logits(hidden[:, -1])
    for step in range(sample_len):
        logits = rules(logits, seqs, first=step == 0)
        logprobs = F.log_softmax(logits, dim=-1)
        top_lp, top_ids = logprobs.topk(beams + 1, dim=-1)
        top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
        new_seqs, new_scores, source, next_tokens, still = [], [], [], [], []
        for j, a in enumerate(live):
            cands = {}
            for r in range(j * beams, (j + 1) * beams):
                for lp, t in zip(top_lp[r], top_ids[r]):
                    key = (*seqs[r], t)
                    cands[key] = (scores[r] + lp, r)
            ranked = sorted(cands.items(), key=lambda kv: -kv[1][0])
            kept = []
            for key, (score, r) in ranked:
                if key[-1] == tok.eot:
                    if len(finished[a]) < max_finished:
                        finished[a][key[:-1]] = score
                    continue
                kept.append((key, score, r))
                if len(kept) == beams:
                    break
            if len(finished[a]) >= max_finished or _looping(tok, kept, finished[a], options, step):
                last[a] = {key: score for key, score, _ in kept}
                continue
            still.append(a)
            for key, score, r in kept:
                new_seqs.append(list(key))
                new_scores.append(score)
                source.append(r)
                next_tokens.append(key[-1])
        seqs, scores, live = new_seqs, new_scores, still
        if not live:
            break
        state = state.select(torch.tensor(source))
        logits = session.logits(session.step(state, torch.tensor(next_tokens))[:, -1])
    for j, a in enumerate(live):
        last[a] = {tuple(seqs[r]): scores[r] for r in range(j * beams, (j + 1) * beams)}
    results = []
    for a in range(n_audio):
        cands = finished[a] or last[a]
        keys = list(cands)
        best = keys[_rank([cands[k] for k in keys], [len(k) for k in keys], options.length_penalty)]
        results.append(_finish(tok, list(best), cands[best], no_speech[a], 0.0, batch.languages[a]))
    return results


def _in_loop(tok, tokens, ratio: float) -> bool:
    """Whether ``tokens`` are at least ``LOOP_MIN_TOKENS`` long and their text compresses
    better than ``ratio``: a repetition loop."""
    return len(tokens) >= LOOP_MIN_TOKENS and compression_ratio(tok.decode(list(tokens))) > ratio


def _looping(tok, kept, finished, options, step) -> bool:
    """Whether a beam-search row with nothing finished has every live hypothesis in a
    repetition loop (``options.stop_compression_ratio``, judged as ``_sample`` does)."""
    ratio = options.stop_compression_ratio
    if ratio is None or finished or not kept or step % LOOP_EVERY:
        return False
    return all(_in_loop(tok, key, ratio) for key, _, _ in kept)


def with_temperature(options: DecodingOptions, temperature: float) -> DecodingOptions:
    """Options for a fallback pass at ``temperature`` (beam search only at 0)."""
    if temperature > 0:
        return replace(options, temperature=temperature, beam_size=None, patience=None)
    return replace(options, temperature=temperature, best_of=None)
