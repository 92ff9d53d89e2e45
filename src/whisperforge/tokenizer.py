"""Whisper's token vocabulary: text <-> ids, special tokens and the decoder prompt.

Special token ids are read off the tokenizer itself (its added tokens), so English-only and
multilingual vocabularies (and large-v3's extra language) are handled alike. Timestamp tokens
follow ``<|notimestamps|>``: id ``timestamp_begin + i`` stands for ``i * 0.02`` seconds.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import tokenizers

# Language codes in Whisper's token order (openai/whisper tokenizer.py); names for display.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese",
    "yue": "cantonese",
}  # fmt: skip
LANGUAGE_CODES_BY_NAME = {name: code for code, name in LANGUAGES.items()}
TASKS = ("transcribe", "translate")


def normalize_language(language: str | None) -> str | None:
    """Return the language code for a code or an English name (``"English"`` -> ``"en"``)."""
    if language is None:
        return None
    key = language.strip().lower()
    if key in LANGUAGES:
        return key
    if key in LANGUAGE_CODES_BY_NAME:
        return LANGUAGE_CODES_BY_NAME[key]
    raise ValueError(f"unknown language {language!r}; use a code such as 'en', 'vi', 'de'")


class Tokenizer:
    """Whisper byte-level BPE plus its special tokens.

    ``multilingual`` is true when the vocabulary carries language and task tokens that the
    model was trained to read (every Whisper model except the ``.en`` ones).
    """

    def __init__(self, backend: tokenizers.Tokenizer, multilingual: bool):
        self.backend = backend
        self.multilingual = multilingual
        self._special = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
        for required in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
            if required not in self._special:
                raise ValueError(f"tokenizer has no {required} token: not a Whisper tokenizer")

    @classmethod
    def from_file(cls, path: str | Path, multilingual: bool) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), multilingual)

    def _id(self, *names: str) -> int | None:
        for name in names:
            if name in self._special:
                return self._special[name]
        return None

    @cached_property
    def eot(self) -> int:
        return self._special["<|endoftext|>"]

    @cached_property
    def sot(self) -> int:
        return self._special["<|startoftranscript|>"]

    @cached_property
    def no_timestamps(self) -> int:
        return self._special["<|notimestamps|>"]

    @cached_property
    def timestamp_begin(self) -> int:
        return self._id("<|0.00|>") or self.no_timestamps + 1

    @cached_property
    def transcribe(self) -> int:
        return self._special["<|transcribe|>"]

    @cached_property
    def translate(self) -> int:
        return self._special["<|translate|>"]

    @cached_property
    def sot_prev(self) -> int:
        return self._special["<|startofprev|>"]

    @cached_property
    def sot_lm(self) -> int | None:
        return self._id("<|startoflm|>")

    @cached_property
    def no_speech(self) -> int | None:
        return self._id("<|nospeech|>", "<|nocaptions|>")

    @cached_property
    def language_tokens(self) -> dict[str, int]:
        """Language code -> token id, for the languages this vocabulary has."""
        return {c: self._special[f"<|{c}|>"] for c in LANGUAGES if f"<|{c}|>" in self._special}

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, dropping special and timestamp tokens."""
        return self.backend.decode([i for i in ids if i < self.eot], skip_special_tokens=True)

    def sot_sequence(self, language: str | None, task: str = "transcribe") -> list[int]:
        """The decoder prompt: ``<|startoftranscript|>`` then, when multilingual, language+task."""
        if not self.multilingual:
            return [self.sot]
        seq = [self.sot]
        if language is not None:
            seq.append(self.language_tokens[language])
        seq.append(self.translate if task == "translate" else self.transcribe)
        return seq

    def non_speech_suppression(self) -> list[int]:
        """Special tokens that must never be sampled as text (openai ``suppress_tokens=-1``)."""
        ids = [self.transcribe, self.translate, self.sot, self.sot_prev]
        ids += [t for t in (self.sot_lm, self.no_speech) if t is not None]
        return ids
