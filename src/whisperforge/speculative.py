"""Speculative decoding: a small assistant drafts, the teacher verifies several tokens at once.

Greedy only, one window at a time (Leviathan et al., 2023; Distil-Whisper section 6). The
assistant proposes ``n_draft`` tokens; the teacher scores all of them in one forward pass and
keeps the longest prefix that equals its own greedy choice, plus its own next token. Whisper's
logit rules are applied to the teacher's logits at every position with the right prefix, so
the output is token for token the teacher's greedy output; only the number of teacher passes
changes. Both caches are rewound past rejected tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from whisperforge.decoding import (
    DecodingOptions,
    DecodingResult,
    LogitRules,
    _finish,
    _no_speech_probs,
    build_prompts,
)
from whisperforge.models.inference import DecoderState, InferenceSession
from whisperforge.tokenizer import Tokenizer


@dataclass
class _Model:
    """One side (teacher or assistant): its session, its cache and the tokens fed to it."""

    session: InferenceSession
    state: DecoderState
    start_logits: Tensor  # logits after the prompt
    fed: list[int]  # tokens after the prompt whose keys/values are in the cache

    def feed(self, tokens: list[int]) -> Tensor:
        """Feed ``tokens``; logits ``(len(tokens), vocab)`` after each of them."""
        hidden = self.session.extend(self.state, torch.tensor([tokens]))
        self.fed += tokens
        return self.session.logits(hidden[0])

    def predict(self, sampled: list[int], extra: list[int]) -> list[Tensor]:
        """Logits for the token after ``sampled``, then after ``sampled + extra[:i]``."""
        missing = sampled[len(self.fed) :]
        out = self.feed(missing + extra) if missing or extra else None
        if not missing:  # only at the very start: nothing sampled yet
            return [self.start_logits] + ([] if out is None else list(out))
        return list(out[len(missing) - 1 :])

    def sync(self, sampled: list[int]) -> None:
        """Rewind the cache to the longest prefix of what was fed that ``sampled`` agrees with."""
        keep = 0
        for mine, theirs in zip(self.fed, sampled):
            if mine != theirs:
                break
            keep += 1
        if keep < len(self.fed):
            self.session.rewind(self.state, len(self.fed) - keep)
            del self.fed[keep:]


@dataclass
class SpeculativeStats:
    """How the work went: teacher passes, tokens produced, drafts proposed and accepted."""

    teacher_passes: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0


def _start(session, enc, prompt, sample_len, extra) -> tuple[_Model, Tensor]:
    state = session.start(enc, [len(prompt)], sample_len + extra)
    hidden = session.prompt(state, [prompt])
    return _Model(session, state, session.logits(hidden[0, -1]), []), hidden


def _pick(rules, logits: Tensor, prefix: list[int]) -> tuple[int, float]:
    masked = rules(logits[None].clone(), [prefix], first=not prefix)[0]
    token = int(masked.argmax())
    return token, float(F.log_softmax(masked, dim=-1)[token])


def _draft(assistant: _Model, rules, sampled: list[int], n: int, eot: int) -> list[int]:
    drafts: list[int] = []
    logits = assistant.predict(sampled, [])[0]
    while True:
        token, _ = _pick(rules, logits, sampled + drafts)
        drafts.append(token)
        if token == eot or len(drafts) == n:
            return drafts
        logits = assistant.feed([token])[-1]


@torch.inference_mode()
def speculative_decode(
    teacher: InferenceSession,
    assistant: InferenceSession,
    tokenizer: Tokenizer,
    suppress: list[int],
    teacher_features: Tensor,
    assistant_features: Tensor,
    options: DecodingOptions,
    language: str | None = None,
    n_draft: int = 5,
    stats: SpeculativeStats | None = None,
) -> DecodingResult:
    """Greedy-decode one window ``(1, n_audio_ctx, d)`` exactly as the teacher would."""
    if options.temperature != 0 or options.beam_size is not None:
        raise ValueError("speculative decoding is greedy: temperature 0, no beam search")
    language = language or options.language
    batch = build_prompts(tokenizer, options, [language], teacher.n_text_ctx)
    prompt = batch.prompts[0]
    sample_len = options.sample_len or teacher.n_text_ctx // 2
    sample_len = min(sample_len, teacher.n_text_ctx - len(prompt) - n_draft - 1)
    rules = LogitRules(tokenizer, suppress, options)
    t, hidden = _start(teacher, teacher_features, prompt, sample_len, n_draft + 1)
    a, _ = _start(assistant, assistant_features, prompt, sample_len, n_draft + 1)
    no_speech = _no_speech_probs(teacher, hidden, batch, tokenizer)[0]
    stats = stats if stats is not None else SpeculativeStats()
    sampled: list[int] = []
    sum_lp, done = 0.0, False
    while not done and len(sampled) < sample_len:
        drafts = _draft(a, rules, sampled, min(n_draft, sample_len - len(sampled)), tokenizer.eot)
        rows = t.predict(sampled, [d for d in drafts if d != tokenizer.eot])
        stats.teacher_passes += 1
        stats.drafted += len(drafts)
        for i, row in enumerate(rows):
            token, lp = _pick(rules, row, sampled)
            sum_lp += lp
            if token == tokenizer.eot:
                done = True
                break
            sampled.append(token)
            if i >= len(drafts) or token != drafts[i] or len(sampled) >= sample_len:
                break
            stats.accepted += 1
        t.sync(sampled)
        a.sync(sampled)
    stats.tokens += len(sampled)
    return _finish(tokenizer, sampled, sum_lp, no_speech, 0.0, language)
