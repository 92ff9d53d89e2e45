"""Text for synthetic speech: sentence splitting, normalisation to speakable words, splits.

Phases: ``split_sentences -> normalize_sentence -> accept (length, charset) -> dedupe ->
assign_split``. The split of a sentence depends only on its normalised form (a hash), so the
same sentence always lands in the same split, whatever source it came from and whatever else is
in the pool: train, dev and test never share a sentence.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from whisperforge.data import numbers

SPLITS = ("train", "dev", "test")

# Abbreviations whose trailing period does not end a sentence.
_NO_BREAK = {
    "mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "mt", "no", "gen", "col", "sgt", "capt", "rev", "gov", "sen", "rep", "ave", "a.m",
    "p.m", "u.s", "u.k", "fig", "approx", "dept", "est", "vol",
}  # fmt: skip
_ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
    "St.": "Saint", "Jr.": "Junior", "Sr.": "Senior", "vs.": "versus", "etc.": "et cetera",
    "e.g.": "for example", "i.e.": "that is", "Mt.": "Mount", "Capt.": "Captain",
    "Gen.": "General", "Sgt.": "Sergeant", "Col.": "Colonel", "Rev.": "Reverend",
    "Gov.": "Governor", "Sen.": "Senator", "approx.": "approximately", "Ave.": "Avenue",
}  # fmt: skip
_SYMBOLS = {
    "&": " and ", "%": " percent", "+": " plus ", "=": " equals ", "@": " at ",
    "°": " degrees", "½": " and a half", "¼": " and a quarter", "×": " times ",
}  # fmt: skip
_CURRENCY = {"$": ("dollar", "dollars"), "£": ("pound", "pounds"), "€": ("euro", "euros")}
_PUNCT_MAP = str.maketrans(
    {"‘": "'", "’": "'", "`": "'", "“": '"', "”": '"', "«": '"', "»": '"', "–": "-", "—": " - "}
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9À-Ỹ])")
_EN_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.?!;:'-]*$")
_VI_LETTERS = (
    "a-zA-Zàáảãạăằắẳẵặâầấẩẫậèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵđ"
    "ÀÁẢÃẠĂẰẮẲẴẶÂẦẤẨẪẬÈÉẺẼẸÊỀẾỂỄỆÌÍỈĨỊÒÓỎÕỌÔỒỐỔỖỘƠỜỚỞỠỢÙÚỦŨỤƯỪỨỬỮỰỲÝỶỸỴĐ"
)
_VI_ALLOWED = re.compile(rf"^[{_VI_LETTERS}][{_VI_LETTERS} ,.?!;:'-]*$")
_DOTTED_OK = {"a.m.", "p.m."}


@dataclass(frozen=True)
class TextLimits:
    """Which normalised sentences are kept: word counts and characters (~14 chars per second
    of speech, so 250 characters stay well inside Whisper's 30 s window)."""

    min_words: int = 4
    max_words: int = 35
    max_chars: int = 250


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences at ``.!?`` followed by a capital, digit or quote.

    Abbreviations (``Mr.``, ``e.g.``) and initials (``J. R. R. Tolkien``) do not end a sentence.
    Line breaks inside the text count as spaces.
    """
    text = re.sub(r"\s+", " ", text.translate(_PUNCT_MAP)).strip()
    if not text:
        return []
    pieces, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        before = text[start : match.start()].rstrip("\"')]")
        last_word = before.rsplit(" ", 1)[-1].rstrip(".").lower()
        if last_word in _NO_BREAK or (len(last_word) == 1 and last_word.isalpha()):
            continue
        pieces.append(text[start : match.start()].strip())
        start = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _money(match: re.Match) -> str:
    singular, plural = _CURRENCY[match.group(1)]
    whole = int(match.group(2).replace(",", ""))
    scale = match.group(4)
    if scale:
        amount = f"{numbers.english_cardinal(whole)}{_decimal_words(match.group(3))}"
        return f"{amount} {scale} {plural}"
    words = f"{numbers.english_cardinal(whole)} {singular if whole == 1 else plural}"
    cents = match.group(3)
    if cents and len(cents) == 3 and int(cents[1:]):
        words += f" and {numbers.english_cardinal(int(cents[1:]))} cents"
    return words


def _decimal_words(fraction: str | None) -> str:
    return f" point {numbers.english_digits(fraction[1:])}" if fraction else ""


def _number(match: re.Match) -> str:
    digits = match.group(0).replace(",", "")
    if "." in digits:
        whole, frac = digits.split(".", 1)
        return numbers.english_cardinal(int(whole)) + _decimal_words("." + frac)
    if len(digits) > 1 and digits.startswith("0"):
        return numbers.english_digits(digits)
    return numbers.english_cardinal(int(digits))


def _year(match: re.Match) -> str:
    words = numbers.english_year(int(match.group(1)))
    if match.group(2):  # the 1990s -> nineteen nineties
        words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    return words


def _time(match: re.Match) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24 or minutes > 59:
        return match.group(0)
    words = numbers.english_time(hours, minutes)
    meridiem = match.group(3)
    if meridiem:
        words = words.replace(" o'clock", "") + f" {meridiem[0].lower()}.m."
    return words


def normalize_english(text: str) -> str:
    """Make an English sentence speakable: numbers, money, times, symbols, abbreviations.

    ``"Dr. Smith paid $3.50 at 6:05pm for 2 tickets."`` ->
    ``"Doctor Smith paid three dollars and fifty cents at six oh five p.m. for two tickets."``
    The result may still contain characters no engine can speak; ``accept`` rejects those.
    """
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT_MAP)
    text = re.sub(r"[\"()\[\]{}]", "", text)
    for abbreviation, words in _ABBREVIATIONS.items():
        text = re.sub(rf"(?<![\w.]){re.escape(abbreviation)}", words, text)
    text = re.sub(
        r"([$£€])(\d[\d,]*)(\.\d+)?(?:\s+(thousand|million|billion|trillion)\b)?", _money, text
    )
    text = re.sub(r"\b(\d{1,2}):(\d{2})(?:\s?([AaPp])\.?[Mm]\b\.?)?", _time, text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: numbers.english_ordinal(int(m[1])), text)
    text = re.sub(r"\b(1[1-9]\d\d|20\d\d)(s)?\b(?![.,]\d)", _year, text)
    text = re.sub(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+(?:\.\d+)?\b", _number, text)
    text = re.sub(r"(?<=\w)/(?=\w)", " ", text)  # and/or -> and or
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    return _tidy(text)


def normalize_vietnamese(text: str) -> str:
    """Vietnamese: Unicode NFC, digits to words, symbols to words, tidy spacing."""
    text = unicodedata.normalize("NFC", text).translate(_PUNCT_MAP)
    text = re.sub(r"[\"()\[\]{}]", "", text)
    text = re.sub(r"(\d+)\s?%", lambda m: f"{m[1]} phần trăm", text)
    text = re.sub(r"\d+", lambda m: numbers.vietnamese_cardinal(int(m[0])), text)
    return _tidy(text.replace("&", " và "))


def _tidy(text: str) -> str:
    text = re.sub(r"\s+([,.?!;:])", r"\1", text)
    text = re.sub(r"\s*-\s+|\s+-\s*", ", ", text)  # a spaced dash is a pause
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(" ,;:-")
    if text and text[-1] not in ".?!":
        text += "."
    return text[:1].upper() + text[1:]


NORMALIZERS = {"en": normalize_english, "vi": normalize_vietnamese}


def normalize_sentence(text: str, language: str = "en") -> str:
    """Normalise one sentence with the language's normaliser (``en``, ``vi``)."""
    try:
        return NORMALIZERS[language](text)
    except KeyError:
        raise ValueError(
            f"no text normaliser for language {language!r}; available: {sorted(NORMALIZERS)}"
        ) from None


def accept(sentence: str, language: str = "en", limits: TextLimits = TextLimits()) -> str | None:
    """Return why a normalised sentence is rejected, or None when it is fit to speak."""
    words = sentence.split()
    if len(words) < limits.min_words:
        return "too few words"
    if len(words) > limits.max_words or len(sentence) > limits.max_chars:
        return "too long"
    allowed = _VI_ALLOWED if language == "vi" else _EN_ALLOWED
    if not allowed.match(sentence):
        return "unspeakable characters"
    if any("." in w.rstrip(".?!,;:") and w.lower().strip(",;:?!") not in _DOTTED_OK for w in words):
        return "dotted token (URL, initials or code)"
    letters = [c for c in sentence if c.isalpha()]
    if sum(c.isupper() for c in letters) > 0.5 * len(letters):
        return "mostly capitals"
    return None


def sentence_key(sentence: str) -> str:
    """The identity of a sentence for de-duplication and splitting: lower-case words only."""
    return " ".join(re.findall(r"\w+", sentence.lower()))


def assign_split(sentence: str, dev_fraction: float = 0.03, test_fraction: float = 0.03) -> str:
    """``train``, ``dev`` or ``test`` from a hash of the sentence key (stable across runs)."""
    digest = hashlib.sha1(sentence_key(sentence).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def clean_sentences(
    texts: Iterable[str], language: str = "en", limits: TextLimits = TextLimits()
) -> tuple[list[str], dict[str, int]]:
    """Split, normalise, filter and de-duplicate; returns (sentences, rejection counts)."""
    kept, seen, rejected = [], set(), {}
    for text in texts:
        for raw in split_sentences(text):
            sentence = normalize_sentence(raw, language)
            reason = accept(sentence, language, limits)
            key = sentence_key(sentence)
            if reason is None and key in seen:
                reason = "duplicate"
            if reason is not None:
                rejected[reason] = rejected.get(reason, 0) + 1
                continue
            seen.add(key)
            kept.append(sentence)
    return kept, rejected
