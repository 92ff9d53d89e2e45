"""The models that ship with whisperforge: found by short name, small, and good on real audio."""

from __future__ import annotations

from tests.conftest import JFK, JFK_TEXT

from whisperforge.metrics import word_errors
from whisperforge.models import load_model, resolve_model
from whisperforge.models.zoo import zoo_models

STUDENT = "distil-whisper-base.en"


def test_shipped_models_have_cards_and_store_only_a_delta():
    shipped = zoo_models()
    assert STUDENT in shipped
    folder = shipped[STUDENT]
    card = (folder / "README.md").read_text()
    assert "whisperforge evaluate" in card and "WER" in card  # figures say how they were made
    delta = (folder / "delta.safetensors").stat().st_size
    assert delta < 25e6  # two decoder layers in float16, not the 145 MB teacher


def test_shipped_student_transcribes_jfk_exactly():
    from whisperforge.transcribe import transcribe

    student = load_model(STUDENT)
    assert student.model.config.decoder_layers == 2
    assert resolve_model(STUDENT) == student.path  # rebuilt once into the cache, then reused
    segments, info = transcribe(JFK, model=STUDENT, language="en")
    text = " ".join(s.text for s in segments)
    assert word_errors(JFK_TEXT, text).wer == 0, text
