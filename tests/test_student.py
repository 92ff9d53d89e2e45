"""Student creation from a teacher's layers, stored as a delta and rebuilt."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import JFK

from whisperforge.audio import load_audio, log_mel_spectrogram
from whisperforge.cli import main
from whisperforge.models import load_model, resolve_model
from whisperforge.models.student import create_student, save_student, select_layers


def test_layers_spread_from_first_to_last():
    assert select_layers(32, 2) == [0, 31]
    assert select_layers(6, 2) == [0, 5]
    assert select_layers(6, 3) == [0, 2, 5] or select_layers(6, 3) == [0, 3, 5]
    assert select_layers(6, 1) == [5]
    assert select_layers(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="between 1 and 6"):
        select_layers(6, 7)


def _logits(model, features, tokens):
    with torch.inference_mode():
        return model(input_features=features, decoder_input_ids=tokens).logits


def test_student_with_all_layers_reproduces_teacher_logits(tiny_en):
    student, layers = create_student(tiny_en.model, tiny_en.model.config.decoder_layers)
    assert layers["decoder"] == list(range(tiny_en.model.config.decoder_layers))
    features = log_mel_spectrogram(load_audio(JFK))[None]
    tokens = torch.tensor([[50257, 50362, 843, 523, 616]])
    torch.testing.assert_close(
        _logits(student.eval(), features, tokens), _logits(tiny_en.model, features, tokens)
    )


def test_student_delta_is_small_and_rebuilds_exactly(tiny_en, tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPERFORGE_CACHE", str(tmp_path / "cache"))
    student, layers = create_student(tiny_en.model, 2)
    with torch.no_grad():  # stand-in for training: the kept decoder layers change
        for p in student.model.decoder.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = save_student(student, tiny_en.model, "whisper-tiny.en", layers, tmp_path / "s")
    delta_bytes = (folder / "delta.safetensors").stat().st_size
    assert delta_bytes < 0.15 * 75_537_502  # only the two decoder layers are stored
    rebuilt = load_model(folder)
    assert rebuilt.model.config.decoder_layers == 2
    features = log_mel_spectrogram(load_audio(JFK))[None]
    tokens = torch.tensor([[50257, 50362, 843, 523]])
    want = _logits(student.eval().half().float(), features, tokens)  # delta is float16
    torch.testing.assert_close(_logits(rebuilt.model, features, tokens), want)
    assert resolve_model(folder) == rebuilt.path  # built once, then reused


def test_distill_init_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WHISPERFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "student"
    assert main(["distill", "init", "--teacher", "whisper-tiny.en", "--decoder-layers", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "decoder layers [0, 3]" in capsys.readouterr().out
    assert (out / "student.json").exists()
    # an untrained student is all teacher: its delta holds nothing
    assert (out / "delta.safetensors").stat().st_size < 1000
    assert load_model(out).model.config.decoder_layers == 2


@pytest.mark.parametrize("layers", [4, 2])
@pytest.mark.parametrize("mode", ["chunked", "sequential"])
def test_speculative_decoding_gives_the_teachers_exact_output(
    tiny_en, long_recording, layers, mode
):
    """Whatever the assistant drafts (all teacher layers, or 2 untrained ones), the text and
    tokens are the teacher's own greedy output."""
    from whisperforge.transcribe import Transcriber

    path, _ = long_recording
    audio = load_audio(path)[: 16000 * 70]
    student, _ = create_student(tiny_en.model, layers)
    plain = Transcriber(tiny_en)
    assisted = Transcriber(tiny_en, assistant=_bundle(tiny_en, student.eval()))
    assert assisted.assistant_shares_encoder
    want = list(plain.transcribe_batch([audio, JFK], long_form=mode))
    got = list(assisted.transcribe_batch([audio, JFK], long_form=mode))
    assert [s.tokens for r in got for s in r.segments] == [
        s.tokens for r in want for s in r.segments
    ]
    stats = assisted.speculative_stats
    assert stats.tokens > 100 and stats.teacher_passes > 0
    if layers == 4:  # a perfect assistant: the teacher verifies several tokens per pass
        assert stats.teacher_passes < stats.tokens / 3


def _bundle(base, model):
    from dataclasses import replace

    return replace(base, model=model, name="student")
