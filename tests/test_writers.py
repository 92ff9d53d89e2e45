import json
import math
import os

import pytest

from whisperforge import writers
from whisperforge.segments import Segment, TranscriptionInfo
from whisperforge.writers import (
    FORMATS,
    format_result,
    format_timestamp,
    output_names,
    write_result,
)

SEGMENTS = [
    Segment(id=0, start=0.0, end=2.5, text=" And so my fellow Americans,", tokens=(1, 2)),
    Segment(id=1, start=2.5, end=3725.0004, text=" ask not --> what\tyour country"),
    Segment(id=2, start=3725.0004, end=3726.0, text="  "),
    Segment(id=3, start=3726.0, end=3727.9996, text=" Xin chào các bạn"),
]
INFO = TranscriptionInfo(
    language="en", language_probability=0.98, duration=3728.0, options={"beam_size": 5}
)


@pytest.mark.parametrize(
    ("seconds", "marker", "expected"),
    [
        (0.0, ",", "00:00:00,000"),
        (1.5, ".", "00:00:01.500"),
        (61.0004, ",", "00:01:01,000"),
        (1.9996, ",", "00:00:02,000"),  # rounding carries into seconds
        (3599.9996, ".", "01:00:00.000"),  # ... and into hours
        (3661.5, ",", "01:01:01,500"),
        (7322.123, ".", "02:02:02.123"),
        (90061.25, ",", "25:01:01,250"),  # more than a day
    ],
)
def test_format_timestamp(seconds, marker, expected):
    assert format_timestamp(seconds, marker) == expected


@pytest.mark.parametrize("bad", [-0.001, math.nan])
def test_format_timestamp_rejects_negative_and_nan(bad):
    with pytest.raises(ValueError, match="non-negative"):
        format_timestamp(bad)


def test_srt_numbers_cues_from_one_and_skips_empty_segments():
    assert format_result(SEGMENTS, INFO, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n\n"
        "2\n00:00:02,500 --> 01:02:05,000\nask not -> what\tyour country\n\n"
        "3\n01:02:06,000 --> 01:02:08,000\nXin chào các bạn\n\n"
    )


def test_vtt_has_header_and_always_hours():
    assert format_result(SEGMENTS, INFO, "vtt") == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nAnd so my fellow Americans,\n\n"
        "00:00:02.500 --> 01:02:05.000\nask not -> what\tyour country\n\n"
        "01:02:06.000 --> 01:02:08.000\nXin chào các bạn\n\n"
    )


def test_cue_text_cannot_contain_a_blank_line():
    seg = Segment(id=0, start=0.0, end=1.0, text=" first line\n\n  second line ")
    assert format_result([seg], INFO, "srt").endswith("\nfirst line\nsecond line\n\n")


def test_txt_one_stripped_line_per_segment():
    assert format_result(SEGMENTS, INFO, "txt") == (
        "And so my fellow Americans,\nask not --> what\tyour country\nXin chào các bạn\n"
    )


def test_tsv_uses_integer_milliseconds_and_one_line_text():
    assert format_result(SEGMENTS, INFO, "tsv") == (
        "start\tend\ttext\n"
        "0\t2500\tAnd so my fellow Americans,\n"
        "2500\t3725000\task not --> what your country\n"
        "3726000\t3728000\tXin chào các bạn\n"
    )


def test_json_round_trips():
    data = json.loads(format_result(SEGMENTS, INFO, "json"))
    assert data["text"] == (
        "And so my fellow Americans, ask not --> what\tyour country Xin chào các bạn"
    )
    assert data["language"] == "en"
    assert data["segments"] == [s.to_dict() for s in SEGMENTS]
    assert data["info"]["options"] == {"beam_size": 5}
    assert data["info"]["duration"] == 3728.0


def test_json_replaces_non_finite_floats_with_null():
    seg = Segment(id=0, start=0.0, end=1.0, text=" hi", avg_logprob=-math.inf)
    text = format_result([seg], INFO, "json")
    assert "Infinity" not in text
    assert json.loads(text)["segments"][0]["avg_logprob"] is None


def test_format_result_accepts_a_lazy_iterator():
    assert format_result(iter(SEGMENTS), INFO, "JSON") == format_result(SEGMENTS, INFO, "json")


def test_format_result_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown output format 'docx'.*txt, srt, vtt, json, tsv"):
        format_result(SEGMENTS, INFO, "docx")


def test_write_all_formats_utf8_and_no_temp_files(tmp_path):
    out = tmp_path / "new" / "dir"
    paths = write_result(iter(SEGMENTS), INFO, out, "jfk", "all")
    assert paths == [out / f"jfk.{fmt}" for fmt in FORMATS]
    assert sorted(os.listdir(out)) == sorted(f"jfk.{fmt}" for fmt in FORMATS)
    for path, fmt in zip(paths, FORMATS, strict=True):
        assert path.read_text(encoding="utf-8") == format_result(SEGMENTS, INFO, fmt)
    assert "Xin chào các bạn" in (out / "jfk.srt").read_bytes().decode("utf-8")


def test_write_selected_formats_dedupes(tmp_path):
    paths = write_result(SEGMENTS, INFO, tmp_path, "a", ["srt", "vtt", "srt"])
    assert [p.name for p in paths] == ["a.srt", "a.vtt"]


def test_write_rejects_unknown_format_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown output format 'doc'"):
        write_result(SEGMENTS, INFO, tmp_path, "a", ["txt", "doc"])
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    old = tmp_path / "a.txt"
    old.write_text("previous run\n", encoding="utf-8")

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_result(SEGMENTS, INFO, tmp_path, "a", "txt")
    assert os.listdir(tmp_path) == ["a.txt"]
    assert old.read_text(encoding="utf-8") == "previous run\n"


def test_inputs_that_share_a_name_get_results_of_their_own():
    assert output_names(["talks/a.wav", "talks/b.flac", "/x/c.mp3"]) == ["a", "b", "c"]
    assert output_names(["data/s1/001.wav", "data/s2/001.wav", "data/s2/002.wav"]) == [
        "s1/001", "s2/001", "s2/002",
    ]  # fmt: skip
    assert output_names(["d/a.wav", "d/a.mp3"]) == ["a.wav", "a.mp3"]
    assert output_names(["d/a.wav", "./d/a.wav"]) == ["a", "a"]  # one file given twice
    assert output_names(["-", "d/a.wav"]) == ["stdin", "a"]  # the file piped in


def _worded(start: float, words: str, step: float = 0.5) -> Segment:
    from whisperforge.segments import Word

    ws = tuple(
        Word(start + k * step, start + (k + 1) * step - 0.1, f" {w}", 0.9, (k,))
        for k, w in enumerate(words.split())
    )
    return Segment(id=0, start=ws[0].start, end=ws[-1].end, text="".join(w.word for w in ws),
                   tokens=tuple(range(len(ws))), words=ws)  # fmt: skip


def test_cues_are_cut_between_words_and_timed_by_them():
    seg = _worded(10.0, "ask not what your country can do for you,")
    cues = writers.split_cues([seg, SEGMENTS[0]], max_words=4)
    assert [c.text for c in cues] == [" ask not what your", " country can do for", " you,",
                                      " And so my fellow Americans,"]  # fmt: skip
    assert [(c.start, c.end) for c in cues[:3]] == [(10.0, 11.9), (12.0, 13.9), (14.0, 14.4)]
    assert [c.id for c in cues] == [0, 1, 2, 3] and cues[3].words is None  # no words: kept
    by_chars = writers.split_cues([seg], max_chars=15)
    assert [c.text for c in by_chars] == [" ask not what", " your country", " can do for you,"]
    assert all(len(c.text.strip()) <= 15 for c in by_chars)
    long_word = writers.split_cues([_worded(0.0, "a supercalifragilistic b")], max_chars=5)
    assert [c.text for c in long_word] == [" a", " supercalifragilistic", " b"]
    with pytest.raises(ValueError, match="at least 1"):
        writers.split_cues([seg], max_words=0)


def test_words_go_to_json_and_cue_limits_to_subtitles_only(tmp_path):
    seg = _worded(0.0, "one two three four five")
    write_result([seg], INFO, tmp_path, "w", "all", max_words_per_cue=2)
    srt = (tmp_path / "w.srt").read_text()
    assert srt.count(" --> ") == 3 and "00:00:01,000 --> 00:00:01,900\nthree four" in srt
    assert (tmp_path / "w.vtt").read_text().count(" --> ") == 3
    assert (tmp_path / "w.txt").read_text() == "one two three four five\n"  # not cut
    data = json.loads((tmp_path / "w.json").read_text())
    words = data["segments"][0]["words"]
    assert [w["word"] for w in words] == [" one", " two", " three", " four", " five"]
    assert set(words[0]) == {"start", "end", "word", "probability"}
    assert "words" not in json.loads(format_result(SEGMENTS, INFO, "json"))["segments"][0]


def test_highlighted_cues_underline_each_word_in_turn(tmp_path):
    seg = _worded(1.0, "ask not")  # " ask" 1.0-1.4, " not" 1.5-1.9
    cues = writers.highlight_cues([seg, SEGMENTS[0]])
    assert [(c.start, c.end, c.text) for c in cues[:3]] == [
        (1.0, 1.4, " <u>ask</u> not"), (1.4, 1.5, " ask not"), (1.5, 1.9, " ask <u>not</u>"),
    ]  # fmt: skip
    assert cues[3].text == SEGMENTS[0].text and [c.id for c in cues] == [0, 1, 2, 3]
    write_result([seg], INFO, tmp_path, "k", ["srt", "txt"], highlight_words=True)
    assert "00:00:01,500 --> 00:00:01,900\nask <u>not</u>" in (tmp_path / "k.srt").read_text()
    assert (tmp_path / "k.txt").read_text() == "ask not\n"


def test_vtt_escapes_what_the_format_reads_as_markup_and_keeps_highlights():
    seg = Segment(id=0, start=0.0, end=1.0, text=" AT&T <3 x>y")
    vtt = format_result([seg], INFO, "vtt")
    assert "AT&amp;T &lt;3 x>y" in vtt
    assert "AT&T <3 x>y" in format_result([seg], INFO, "srt")  # SubRip has no escapes
    marked = writers.highlight_cues([_worded(0.0, "R&D <now>")])
    assert "<u>R&amp;D</u> &lt;now>" in format_result(marked, INFO, "vtt")
