"""Sentence splitting, normalisation to speakable words, pools and split disjointness."""

import pytest

from whisperforge.data import numbers
from whisperforge.data.pool import build_pool, read_pool, write_pool
from whisperforge.data.text import (
    SPLITS,
    TextLimits,
    accept,
    assign_split,
    clean_sentences,
    normalize_english,
    normalize_vietnamese,
    sentence_key,
    split_sentences,
)


def test_split_sentences_keeps_abbreviations_and_initials():
    text = (
        'Mr. Smith met J. R. R. Tolkien at 5 p.m. on Friday. Did he? "Yes," she said!\n'
        "It cost more than, e.g. lunch. The end"
    )
    assert split_sentences(text) == [
        "Mr. Smith met J. R. R. Tolkien at 5 p.m. on Friday.",
        "Did he?",
        '"Yes," she said!',
        "It cost more than, e.g. lunch.",
        "The end",
    ]


def test_split_sentences_empty():
    assert split_sentences("   \n ") == []


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        (
            "Dr. Smith paid $3.50 at 6:05pm for 2 tickets.",
            "Doctor Smith paid three dollars and fifty cents at six oh five p.m. for two tickets.",
        ),
        (
            "In the 1990s, 45% of 1,200 people & their dogs lived on 5th Avenue",
            "In the nineteen nineties, forty-five percent of one thousand two hundred people and "
            "their dogs lived on fifth Avenue.",
        ),
        (
            "The deal was worth $2 million -- a bargain!",
            "The deal was worth two million dollars, a bargain!",
        ),
        ("Pi is 3.14 and/or so", "Pi is three point one four and or so."),
        ("Meet me at 10:00 on the 21st", "Meet me at ten o'clock on the twenty-first."),
        ("Born in 2005, not 1905.", "Born in two thousand five, not nineteen oh five."),
        ("“Curly” quotes – and dashes", "Curly quotes, and dashes."),
    ],
)
def test_normalize_english(raw, spoken):
    assert normalize_english(raw) == spoken


def test_number_words():
    assert numbers.english_cardinal(0) == "zero"
    assert numbers.english_cardinal(115) == "one hundred fifteen"
    assert numbers.english_cardinal(-7) == "minus seven"
    assert numbers.english_cardinal(3_000_021) == "three million twenty-one"
    assert numbers.english_ordinal(12) == "twelfth"
    assert numbers.english_ordinal(40) == "fortieth"
    assert numbers.english_year(2024) == "twenty twenty-four"
    assert numbers.english_year(1900) == "nineteen hundred"
    assert numbers.vietnamese_cardinal(2024) == "hai nghìn không trăm hai mươi tư"
    assert numbers.vietnamese_cardinal(105) == "một trăm linh năm"
    assert numbers.vietnamese_cardinal(15) == "mười lăm"
    assert numbers.vietnamese_cardinal(21) == "hai mươi mốt"


def test_normalize_vietnamese():
    assert normalize_vietnamese("Năm 2024 tăng 5%") == (
        "Năm hai nghìn không trăm hai mươi tư tăng năm phần trăm."
    )


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("Hi there.", "too few words"),
        ("Visit www.example.com right now please.", "dotted token (URL, initials or code)"),
        ("Use the ~ key on your keyboard.", "unspeakable characters"),
        ("THIS IS ALL SHOUTING NOW.", "mostly capitals"),
        ("word " * 40, "too long"),
        ("This one is perfectly fine.", None),
    ],
)
def test_accept_reasons(sentence, reason):
    assert accept(sentence, "en", TextLimits()) == reason


def test_clean_sentences_dedupes_and_counts_rejections():
    kept, rejected = clean_sentences(
        ["I like green tea. I like GREEN tea! Ok.", "I like green tea."], "en"
    )
    assert kept == ["I like green tea."]
    assert rejected == {"duplicate": 2, "too few words": 1}


def test_assign_split_is_stable_and_depends_on_the_sentence_only():
    a = assign_split("Could you send me the report by Friday?", 0.1, 0.1)
    b = assign_split("could you send me the REPORT, by friday", 0.1, 0.1)
    assert a == b  # same key: punctuation and case do not matter
    assignments = [assign_split(f"Sentence number {i} is here.", 0.1, 0.1) for i in range(2000)]
    shares = {s: assignments.count(s) / 2000 for s in SPLITS}
    assert 0.07 < shares["dev"] < 0.13 and 0.07 < shares["test"] < 0.13


def test_pool_splits_are_disjoint(tmp_path):
    source = tmp_path / "mine.txt"
    lines = [f"My neighbour has {i} apples and {i + 1} pears." for i in range(300)]
    source.write_text("\n".join(lines + lines[:50]) + "\n", "utf-8")  # 50 duplicates
    pool = build_pool("en", ["conversation", f"file:{source}"], dev_fraction=0.1, test_fraction=0.1)
    keys = {s: {sentence_key(x) for x in pool.splits[s]} for s in SPLITS}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    assert all(keys[s] for s in SPLITS)
    assert pool.sources[f"file:{source}"]["rejected"]["duplicate"] == 50
    write_pool([pool], tmp_path / "pool")
    assert read_pool(tmp_path / "pool", "en", "test") == pool.splits["test"]
    assert (tmp_path / "pool" / "pool.json").is_file()


def test_vietnamese_pool_ships_with_the_package():
    pool = build_pool("vi")
    assert len(pool) >= 200
    assert all(pool.splits[s] for s in SPLITS)


def test_unknown_source_and_missing_pool_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="available"):
        build_pool("en", ["nope"])
    with pytest.raises(FileNotFoundError, match="whisperforge data text"):
        read_pool(tmp_path, "en", "train")
