import math
import unicodedata

import pytest

from whisperforge.metrics import (
    ErrorCounts,
    char_errors,
    corpus_error_rates,
    echoed_words,
    normalize_text,
    real_time_factor,
    repeated_ngram_count,
    throughput,
    word_errors,
)

JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
JFK_PLAIN = (
    "and so my fellow americans ask not what your country can do for you "
    "ask what you can do for your country"
)


def test_english_normaliser_matches_spelling_and_abbreviation_variants():
    assert normalize_text("Mr. Smith's colour") == normalize_text("mister smith's color")
    assert word_errors("Mr. Smith's colour", "mister smith's color").wer == 0.0


def test_jfk_punctuation_and_case_do_not_count_after_normalising():
    counts = word_errors(JFK, JFK_PLAIN)
    assert counts == ErrorCounts(hits=22)
    assert counts.wer == 0.0
    # Without normalisation, the four words glued to punctuation or capitals are errors.
    assert word_errors(JFK, JFK_PLAIN, normalize=False).substitutions == 4


def test_none_and_regional_tags_mean_english():
    english = normalize_text("Mr. Smith's colour", "en")
    assert normalize_text("Mr. Smith's colour", None) == english
    assert normalize_text("Mr. Smith's colour", "en-GB") == english
    assert normalize_text("Mr. Smith's colour", "English") == english


def test_basic_normaliser_keeps_vietnamese_diacritics():
    assert normalize_text("Xin chào các bạn!", language="vi") == "xin chào các bạn"
    # Decomposed input (combining marks) is composed, not stripped.
    decomposed = unicodedata.normalize("NFD", "Xin chào các bạn, Việt Nam")
    assert normalize_text(decomposed, language="vi") == "xin chào các bạn việt nam"
    # The English normaliser would strip them: the language argument matters.
    assert normalize_text("Xin chào các bạn", language="en") == "xin chao cac ban"


def test_whitespace_is_collapsed():
    assert normalize_text("  hello \n\t world  ", "fr") == "hello world"


def test_word_errors_exact_substitution_deletion_insertion_counts():
    ref = "the quick brown fox jumps over the lazy dog"
    hyp = "the quick brown fax jumps over lazy dog today"
    counts = word_errors(ref, hyp)
    assert counts == ErrorCounts(hits=7, substitutions=1, deletions=1, insertions=1)
    assert counts.ref_words == 9
    assert counts.wer == pytest.approx(3 / 9)
    assert counts.substitution_rate == pytest.approx(1 / 9)
    assert counts.deletion_rate == pytest.approx(1 / 9)
    assert counts.insertion_rate == pytest.approx(1 / 9)


def test_wer_can_exceed_one_with_insertions():
    counts = word_errors("hello", "well hello there friend")
    assert counts == ErrorCounts(hits=1, insertions=3)
    assert counts.wer == 3.0


@pytest.mark.parametrize(
    ("ref", "hyp", "expected", "wer"),
    [
        ("", "", ErrorCounts(), 0.0),
        ("   ", "", ErrorCounts(), 0.0),
        ("", "hello there", ErrorCounts(insertions=2), math.inf),
        ("hello there", "", ErrorCounts(deletions=2), 1.0),
        # The English normaliser drops fillers: an all-filler reference is empty.
        ("uh, um", "", ErrorCounts(), 0.0),
    ],
)
def test_empty_reference_or_hypothesis(ref, hyp, expected, wer):
    counts = word_errors(ref, hyp)
    assert counts == expected
    assert counts.wer == wer


def test_empty_reference_counts_characters_too():
    assert char_errors("", "ab") == ErrorCounts(insertions=2)
    assert char_errors("ab", "") == ErrorCounts(deletions=2)


def test_cer_counts_spaces_between_words():
    counts = char_errors("ab cd", "abcd", normalize=False)
    assert counts == ErrorCounts(hits=4, deletions=1)
    assert counts.ref_words == 5
    assert counts.wer == pytest.approx(1 / 5)
    assert char_errors("cat", "cut").wer == pytest.approx(1 / 3)


def test_error_counts_add_and_sum():
    a = ErrorCounts(hits=3, substitutions=1)
    b = ErrorCounts(deletions=2, insertions=1)
    assert a + b == ErrorCounts(3, 1, 2, 1)
    assert sum([a, b]) == a + b
    assert (a + b).to_dict() == {
        "hits": 3,
        "substitutions": 1,
        "deletions": 2,
        "insertions": 1,
        "ref_words": 6,
        "wer": 4 / 6,
        "substitution_rate": 1 / 6,
        "deletion_rate": 2 / 6,
        "insertion_rate": 1 / 6,
    }


def test_corpus_wer_is_total_based_not_mean_of_utterance_rates():
    refs = ["cat", "the quick brown fox jumps over the lazy dog"]
    hyps = ["dog", "the quick brown fox jumps over the lazy dog"]
    per_utterance = [word_errors(r, h).wer for r, h in zip(refs, hyps, strict=True)]
    assert sum(per_utterance) / len(per_utterance) == 0.5

    rates = corpus_error_rates(refs, hyps)
    assert rates["wer"] == pytest.approx(1 / 10)
    assert rates["substitution_rate"] == pytest.approx(1 / 10)
    assert rates["deletion_rate"] == 0.0
    assert rates["insertion_rate"] == 0.0
    assert rates["ref_words"] == 10
    # "cat" vs "dog": 3 substitutions over 3 + 43 characters (spaces included).
    assert rates["ref_chars"] == 3 + len("the quick brown fox jumps over the lazy dog")
    assert rates["cer"] == pytest.approx(3 / rates["ref_chars"])
    assert rates["n_utterances"] == 2


def test_corpus_with_an_empty_reference_stays_finite():
    rates = corpus_error_rates(["", "hello world"], ["thanks for watching", "hello world"])
    assert rates["wer"] == pytest.approx(3 / 2)
    assert rates["insertion_rate"] == pytest.approx(3 / 2)


def test_corpus_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_error_rates(["a", "b"], ["a"])


def test_corpus_uses_basic_normaliser_for_other_languages():
    rates = corpus_error_rates(["Xin chào các bạn!"], ["xin chao các bạn"], language="vi")
    assert rates["wer"] == pytest.approx(1 / 4)


def test_repeated_ngrams_flag_a_hallucination_loop():
    loop = " ".join(["Thank you for watching."] * 10)
    # 40 words -> 36 five-grams, of which 4 are distinct.
    assert repeated_ngram_count(loop) == 32
    assert repeated_ngram_count(JFK) == 0
    assert repeated_ngram_count("too short") == 0
    assert repeated_ngram_count("", n=5) == 0
    # Shorter n-grams do repeat in ordinary speech: "can do for" occurs twice.
    assert repeated_ngram_count(JFK, n=3) == 1


def test_echoed_words_count_short_loops_the_reference_does_not_have():
    # a two-layer student's loops on held-out sentences: each counts the words of its echo
    assert echoed_words("Month by month, he said", "Month by month by month, he said") == 2
    assert echoed_words("from 1476 to 1700.", "from 1476 to 1700 to 1700.") == 2
    assert echoed_words("A refusal to yield.", "A refusal to kneel to kneel.") == 2
    # a three-word phrase looped three times: two echoes of three words
    assert echoed_words("Thank you all.", "thank you all thank you all thank you all") == 6
    # the 5-gram count misses all of these
    assert repeated_ngram_count("Month by month by month, the betrayal") == 0
    # doublings the reference holds are speech, not loops
    assert echoed_words("Bye bye now.", "bye bye now") == 0
    assert echoed_words("That that is, is.", "That that is is.") == 0
    assert echoed_words(JFK, JFK) == 0
    assert echoed_words(JFK, "") == 0
    # one word doubled; a span longer than max_span is not looked for
    assert echoed_words("the cat", "the the cat") == 1
    assert echoed_words("a", "one two three one two three", max_span=2) == 0


def test_echoed_words_rejects_bad_span():
    with pytest.raises(ValueError, match="max_span must be >= 1"):
        echoed_words("a", "a a", max_span=0)


def test_repeated_ngrams_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        repeated_ngram_count("a b c", n=0)


def test_real_time_factor_and_throughput():
    assert real_time_factor(10.0, 2.5) == 0.25
    assert throughput(10.0, 2.5) == 4.0
    assert real_time_factor(10.0, 0.0) == 0.0
    assert throughput(0.0, 1.0) == 0.0


@pytest.mark.parametrize(
    ("fn", "audio", "wall"),
    [
        (real_time_factor, 0.0, 1.0),
        (real_time_factor, 1.0, -1.0),
        (throughput, 1.0, 0.0),
        (throughput, -1.0, 1.0),
        (throughput, 1.0, math.nan),
    ],
)
def test_speed_metrics_reject_degenerate_timings(fn, audio, wall):
    with pytest.raises(ValueError, match="seconds must be"):
        fn(audio, wall)


def test_cut_word_errors_skip_only_the_cut_ends():
    from whisperforge.metrics import cut_word_errors

    pieces = ["The cat sat on the mat.", "A dog ran.", "Far away from home."]
    heard = "on the mat. A dog ran. Far away"
    counts = cut_word_errors(pieces, heard, cut_head=True, cut_tail=True)
    assert (counts.hits, counts.errors, counts.ref_words) == (8, 0, 8)
    # without the cuts the missing words are deletions, as word_errors counts them
    whole = cut_word_errors(pieces, heard, cut_head=False, cut_tail=False)
    assert whole == word_errors(" ".join(pieces), heard)
    assert whole.deletions == 5
    # a missing middle piece is never free
    counts = cut_word_errors(pieces, "on the mat. Far away", cut_head=True, cut_tail=True)
    assert counts.deletions == 3 and counts.ref_words == 8
    # words of the cut ends that the hypothesis does hold are scored, errors included
    counts = cut_word_errors(pieces, "the bat sat on the mat. A dog ran.", True, True)
    assert (counts.substitutions, counts.hits) == (1, 8)
