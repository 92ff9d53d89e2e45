"""Dynamic audio context: windows padded to the batch's longest + 1 s instead of 30 s, with
the encoder run on the shorter log-mel (tiny seeded models, and whisper-tiny.en on speech)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from whisperforge.audio import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from whisperforge.models.inference import encoder_states
from whisperforge.recipes.distill import context_length
from whisperforge.transcribe import TranscribeOptions, context_samples

TINY = {
    "vocab_size": 51864, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64, "num_mel_bins": 80,
}  # fmt: skip


def _tiny(positions: int) -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(WhisperConfig(**TINY, max_source_positions=positions))


def test_shortened_encoder_equals_transformers_built_for_that_length():
    full = _tiny(1500).eval()
    short = _tiny(200).eval()  # the same weights, the first 200 learned positions
    state = full.state_dict()
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][
        :200
    ]
    short.load_state_dict(state)
    torch.manual_seed(1)
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        reference = short.model.encoder(features[..., :400]).last_hidden_state
        mine = encoder_states(full.model.encoder, features[..., :400])
        assert mine.shape == (2, 200, 32)
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
        # 30 s goes through transformers itself
        whole = full.model.encoder(features).last_hidden_state
        torch.testing.assert_close(encoder_states(full.model.encoder, features), whole)
        # shorter context is not a crop of the 30 s states (attention sees less padding)
        assert not torch.allclose(mine, whole[:, :200], atol=1e-3)
    for frames in (3001, 3002, 401, 0):
        with pytest.raises(ValueError, match="even number of frames"):
            encoder_states(full.model.encoder, features.new_zeros(1, 80, frames))


def test_log_mel_of_a_shortened_window_starts_like_the_30_s_one():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    n = 4 * SAMPLE_RATE  # the clip + 1 s of silence
    short = log_mel_spectrogram(audio, n_samples=n)
    full = log_mel_spectrogram(audio)
    assert short.shape == (80, 400) and full.shape == (80, 3000)
    torch.testing.assert_close(short, full[:, :400], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 160"):
        log_mel_spectrogram(audio, n_samples=1000)


def test_context_samples_pad_to_the_longest_plus_a_second_in_whole_frames():
    assert context_samples([5 * SAMPLE_RATE], "full") == N_SAMPLES
    assert context_samples([5 * SAMPLE_RATE, 2 * SAMPLE_RATE], "dynamic") == 6 * SAMPLE_RATE
    assert context_samples([16001], "dynamic") == 32320  # 2 s + 1 sample -> next 320
    assert context_samples([29 * SAMPLE_RATE + 1], "dynamic") == N_SAMPLES
    assert context_samples([N_SAMPLES], "dynamic") == N_SAMPLES
    with pytest.raises(ValueError, match="audio context"):
        context_samples([1], "short")
    with pytest.raises(ValueError, match="audio_context"):
        TranscribeOptions(audio_context="short")
    # training draws: margin 0 is inference's shortest context, 1 the whole 30 s
    assert context_length(5 * SAMPLE_RATE, 0.0) == 6 * SAMPLE_RATE
    assert context_length(5 * SAMPLE_RATE, 1.0) == N_SAMPLES
    assert 6 * SAMPLE_RATE < context_length(5 * SAMPLE_RATE, 0.5) < N_SAMPLES
    assert context_length(5 * SAMPLE_RATE, 0.37) % 320 == 0


def test_model_default_and_option_choose_the_context(tiny_en, speech_clips):
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(tiny_en)
    assert tiny_en.audio_context == "full"
    seen = []
    encode = transcriber.session.encode
    transcriber.session.encode = lambda mel: seen.append(mel.shape[-1]) or encode(mel)
    clips = [str(path) for path, _ in speech_clips[:3]]
    longest = max(sf.info(c).frames for c in clips)
    full = [r.text for r in transcriber.transcribe_batch(clips, language="en")]
    dynamic = [
        r.text for r in transcriber.transcribe_batch(clips, language="en", audio_context="dynamic")
    ]
    assert seen[0] == 3000 and seen[-1] == context_samples([longest], "dynamic") // 160 < 3000
    # an untrained model loses little on clean short clips: mostly the same words
    from whisperforge.metrics import corpus_error_rates

    assert corpus_error_rates(full, dynamic)["wer"] < 0.25, (full, dynamic)
    tiny_en.model.config.audio_context = "dynamic"  # as a student trained for it says
    try:
        assert tiny_en.audio_context == "dynamic"
        list(transcriber.transcribe_batch(clips[:1], language="en"))
        assert seen[-1] < 3000
        list(transcriber.transcribe_batch(clips[:1], language="en", audio_context="full"))
        assert seen[-1] == 3000
    finally:
        del tiny_en.model.config.audio_context
