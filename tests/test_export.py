"""Export to Hugging Face and CTranslate2 folders, read back by whisperforge, CTranslate2,
faster-whisper and the transformers pipeline."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch
from tests.conftest import JFK, JFK_TEXT

from whisperforge.audio import load_audio, log_mel_spectrogram
from whisperforge.cli import main
from whisperforge.metrics import normalize_text
from whisperforge.models import ModelNotFoundError, load_model
from whisperforge.models.ct2 import ct2_to_hf_state_dict, read_ct2_model
from whisperforge.models.export import ExportError, export_model, remap_alignment_heads
from whisperforge.models.presets import PRESETS, preset_files
from whisperforge.models.student import create_student, save_student

ctranslate2 = pytest.importorskip("ctranslate2")
faster_whisper = pytest.importorskip("faster_whisper")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Conversions of the exported folders go to a cache of this module, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WHISPERFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
    return export_model("whisper-tiny.en", tmp_path_factory.mktemp("export") / "ct2", "ct2")


def _faster_whisper_text(folder, **options) -> str:
    model = faster_whisper.WhisperModel(str(folder), device="cpu", cpu_threads=2)
    segments, _ = model.transcribe(str(JFK), beam_size=1, language="en", **options)
    return "".join(s.text for s in segments)


def test_ct2_export_of_a_preset_is_its_shipped_checkpoint(tiny_ct2):
    parts, meta = preset_files(PRESETS["whisper-tiny.en"])
    assert filecmp.cmp(tiny_ct2 / "model.bin", parts[0], shallow=False)  # byte for byte
    assert (tiny_ct2 / "vocabulary.txt").read_text() == (meta / "vocabulary.txt").read_text()
    ours, shipped = (json.loads((d / "config.json").read_text()) for d in (tiny_ct2, meta))
    for key in ("alignment_heads", "suppress_ids", "suppress_ids_begin"):
        assert ours[key] == shipped[key]
    assert (tiny_ct2 / "preprocessor_config.json").exists()


def test_faster_whisper_transcribes_the_export(tiny_ct2):
    assert normalize_text(_faster_whisper_text(tiny_ct2)) == normalize_text(JFK_TEXT)


def test_word_times_agree_with_faster_whisper_on_the_export(tiny_ct2):
    """An independent implementation of the same method (CTranslate2's alignment, the
    exported heads): the same words, and the same times but where whisperforge moves a
    word off a pause (docs/transcribe.md, *Word timestamps*)."""
    from whisperforge.transcribe import Transcriber

    model = faster_whisper.WhisperModel(str(tiny_ct2), device="cpu", cpu_threads=2)
    theirs = [w for s in model.transcribe(str(JFK), beam_size=1, language="en",
                                          word_timestamps=True)[0] for w in s.words]  # fmt: skip
    ours = [w for s in Transcriber("whisper-tiny.en").transcribe(str(JFK), word_timestamps=True)[0]
            for w in s.words]  # fmt: skip
    assert [w.word.strip(" ,.") for w in ours] == [w.word.strip(" ,.") for w in theirs]
    starts = np.abs([a.start - b.start for a, b in zip(ours, theirs)])
    assert np.median(starts) <= 0.04 and np.mean(starts <= 0.1) >= 0.75, starts


def test_ctranslate2_greedy_ids_equal_the_original_checkpoints(tiny_ct2, tiny_en):
    _, meta = preset_files(PRESETS["whisper-tiny.en"])
    jfk = load_audio(JFK)
    windows = [jfk, jfk[: 16000 * 4]]
    features = log_mel_spectrogram(np.stack([np.pad(w, (0, 480000 - len(w))) for w in windows]))
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))
    prompt = [tiny_en.tokenizer.sot, tiny_en.tokenizer.no_timestamps]

    def greedy(folder) -> list[list[int]]:
        model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
        results = model.generate(features, [prompt] * len(windows), beam_size=1)
        return [r.sequences_ids[0] for r in results]

    want = greedy(meta)
    assert greedy(tiny_ct2) == want
    assert all(len(ids) > 5 for ids in want)


def test_whisperforge_loads_the_export_back(tiny_ct2, tiny_en):
    back = load_model(tiny_ct2).model.state_dict()
    original = tiny_en.model.state_dict()
    assert back.keys() == original.keys()
    for key, value in original.items():  # float16 on disk, as the source checkpoint
        torch.testing.assert_close(back[key], value, atol=1e-3, rtol=1e-3, msg=key)


def test_int8_export_keeps_one_scale_per_row_and_transcribes(tiny_en, tmp_path):
    folder = export_model("whisper-tiny.en", tmp_path / "int8", "ct2", "int8")
    variables = read_ct2_model(folder / "model.bin").variables
    weight = variables["decoder/layer_0/self_attention/linear_0/weight"]
    assert weight.dtype == np.int8
    assert variables["decoder/layer_0/self_attention/linear_0/weight_scale"].shape == (1152,)
    assert variables["encoder/conv1/weight"].dtype == np.int8  # (384, 80, 3): per channel
    original = tiny_en.model.state_dict()
    for key, value in ct2_to_hf_state_dict(read_ct2_model(folder / "model.bin")).items():
        step = value.abs().reshape(len(value), -1).amax(dim=1) / 127  # one int8 step per row
        bound = step.reshape((-1,) + (1,) * (value.ndim - 1)) if value.ndim > 1 else 1e-6
        assert ((value - original[key]).abs() <= bound + 1e-6).all(), key
    assert normalize_text(_faster_whisper_text(folder)) == normalize_text(JFK_TEXT)


def test_hf_export_runs_in_the_transformers_pipeline(tmp_path):
    from transformers import pipeline

    folder = export_model("whisper-tiny.en", tmp_path / "hf", "hf", "float32")
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "preprocessor_config.json"} <= files  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    asr = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
    assert normalize_text(asr(load_audio(JFK))["text"]) == normalize_text(JFK_TEXT)


def test_two_layer_student_exports_to_ct2_for_faster_whisper(tiny_en, tmp_path):
    student, layers = create_student(tiny_en.model, 2)
    with torch.no_grad():  # stand-in for training, so the delta holds the two layers
        for p in student.model.decoder.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    delta = save_student(student, tiny_en.model, "whisper-tiny.en", layers, tmp_path / "s")
    folder = export_model(delta, tmp_path / "student-ct2", "ct2")
    heads = json.loads((folder / "config.json").read_text())["alignment_heads"]
    assert heads == [[1, h] for h in range(5)]  # teacher layer 3's heads, now layer 1
    text = _faster_whisper_text(folder, temperature=0.0, max_new_tokens=20, word_timestamps=True)
    assert isinstance(text, str)  # untrained: any text, but the model runs end to end
    assert load_model(folder).model.config.decoder_layers == 2


def test_alignment_heads_follow_the_layers_a_student_keeps():
    teacher = [[1, 0], [2, 0], [3, 1], [3, 4]]
    assert remap_alignment_heads(teacher, 2, 6, layer_map=[0, 3]) == [[1, 1], [1, 4]]
    assert remap_alignment_heads(teacher, 4, 6) == teacher
    assert remap_alignment_heads([[5, 0]], 2, 2) == [[1, 0], [1, 1]]  # none fit: upper half


def test_bad_requests_fail_with_clear_errors(tmp_path, capsys):
    with pytest.raises(ModelNotFoundError, match="unknown model 'whisper-huge'"):
        export_model("whisper-huge", tmp_path / "x")
    with pytest.raises(ValueError, match="'int8' is not available for hf exports"):
        export_model("whisper-tiny.en", tmp_path / "x", "hf", "int8")
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_model("whisper-tiny.en", tmp_path / "x", "onnx")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty; choose another folder or pass --overwrite"):
        export_model("whisper-tiny.en", taken, "ct2")
    assert (taken / "notes.txt").read_text() == "keep me"
    assert main(["export", "no-such-model", "--format", "ct2", "--out", str(tmp_path / "y")]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        main(["export", "whisper-tiny.en", "--format", "onnx", "--out", str(tmp_path / "z")])
