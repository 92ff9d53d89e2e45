"""Numbers to speakable words, English and Vietnamese.

Small and self-contained on purpose: the text pool only needs cardinals, ordinals, years,
decimals, times and money, and the permissive-licence options on PyPI are larger than this file.
"""

from __future__ import annotations

_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EN_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_EN_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
MAX_SPOKEN_NUMBER = 10**15 - 1
"""Largest integer spelled out; longer digit strings are read digit by digit."""


def _en_below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{_EN_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        tens = _EN_TENS[n // 10]
        words.append(tens if n % 10 == 0 else f"{tens}-{_EN_ONES[n % 10]}")
    elif n > 0 or not words:
        words.append(_EN_ONES[n])
    return " ".join(words)


def english_cardinal(n: int) -> str:
    """``1234 -> 'one thousand two hundred thirty-four'``; digit by digit past 10**15."""
    if n < 0:
        return "minus " + english_cardinal(-n)
    if n > MAX_SPOKEN_NUMBER:
        return english_digits(str(n))
    if n < 1000:
        return _en_below_thousand(n)
    words = []
    for scale, name in _EN_SCALES:
        if n >= scale:
            words.append(f"{english_cardinal(n // scale)} {name}")
            n %= scale
    if n:
        words.append(_en_below_thousand(n))
    return " ".join(words)


def english_ordinal(n: int) -> str:
    """``21 -> 'twenty-first'``, ``100 -> 'one hundredth'``."""
    words = english_cardinal(n)
    head, sep, last = words.rpartition(" ")
    stem_head, dash, last_part = last.rpartition("-")
    if last_part in _EN_ORDINAL_IRREGULAR:
        last_part = _EN_ORDINAL_IRREGULAR[last_part]
    elif last_part.endswith("y"):
        last_part = last_part[:-1] + "ieth"
    else:
        last_part += "th"
    return head + sep + stem_head + dash + last_part


def english_year(n: int) -> str:
    """Years as people say them: 1984 -> 'nineteen eighty-four', 2005 -> 'two thousand five'."""
    if not 1000 <= n <= 2099 or 2000 <= n <= 2009:
        return english_cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{english_cardinal(high)} hundred"
    low_words = english_cardinal(low) if low >= 10 else f"oh {english_cardinal(low)}"
    return f"{english_cardinal(high)} {low_words}"


def english_digits(digits: str) -> str:
    """Read a digit string one digit at a time: ``'007' -> 'zero zero seven'``."""
    return " ".join(_EN_ONES[int(d)] for d in digits)


def english_time(hours: int, minutes: int) -> str:
    """``6:05 -> 'six oh five'``, ``6:00 -> "six o'clock"``."""
    if minutes == 0:
        return f"{english_cardinal(hours)} o'clock"
    if minutes < 10:
        return f"{english_cardinal(hours)} oh {english_cardinal(minutes)}"
    return f"{english_cardinal(hours)} {english_cardinal(minutes)}"


_VI_DIGITS = "không một hai ba bốn năm sáu bảy tám chín".split()
_VI_SCALES = ((10**9, "tỷ"), (10**6, "triệu"), (1000, "nghìn"))


def _vi_below_thousand(n: int, full: bool) -> str:
    hundreds, rest = divmod(n, 100)
    tens, ones = divmod(rest, 10)
    words = []
    if full or hundreds:
        words.append(f"{_VI_DIGITS[hundreds]} trăm")
    if tens == 0:
        if ones and words:
            words.append("linh")
    elif tens == 1:
        words.append("mười")
    else:
        words.append(f"{_VI_DIGITS[tens]} mươi")
    if ones:
        if ones == 5 and tens:
            words.append("lăm")
        elif ones == 1 and tens >= 2:
            words.append("mốt")
        elif ones == 4 and tens >= 2:
            words.append("tư")
        else:
            words.append(_VI_DIGITS[ones])
    return " ".join(words)


def vietnamese_cardinal(n: int) -> str:
    """``2024 -> 'hai nghìn không trăm hai mươi tư'`` (northern usage)."""
    if n < 0:
        return "âm " + vietnamese_cardinal(-n)
    if n < 10:
        return _VI_DIGITS[n]
    if n > MAX_SPOKEN_NUMBER:
        return " ".join(_VI_DIGITS[int(d)] for d in str(n))
    words = []
    for scale, name in _VI_SCALES:
        if n >= scale:
            words.append(f"{vietnamese_cardinal(n // scale)} {name}")
            n %= scale
    if n or not words:
        words.append(_vi_below_thousand(n, full=bool(words)))
    return " ".join(words)
