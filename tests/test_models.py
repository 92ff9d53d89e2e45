"""Model conversion and loading with the real Whisper weights."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import JFK

from whisperforge.audio import load_audio, log_mel_spectrogram
from whisperforge.decoding import DecodingOptions, decode
from whisperforge.models import ModelNotFoundError, resolve_model
from whisperforge.models.convert import ChecksumError, convert_ct2_to_hf
from whisperforge.models.ct2 import CT2FormatError
from whisperforge.models.inference import InferenceSession
from whisperforge.models.presets import PRESETS, preset_files


def _windows() -> list[np.ndarray]:
    jfk = load_audio(JFK)
    return [jfk, jfk[: 16000 * 3], np.concatenate([jfk, jfk, jfk])[: 16000 * 30]]


@pytest.mark.parametrize("timestamps", [False, True])
def test_converted_tiny_en_reproduces_ctranslate2_greedy_ids(tiny_en, timestamps):
    ctranslate2 = pytest.importorskip("ctranslate2")
    parts, meta = preset_files(PRESETS["whisper-tiny.en"])
    reference = ctranslate2.models.Whisper(
        str(meta), device="cpu", compute_type="float32", intra_threads=2
    )
    session = InferenceSession(tiny_en.model)
    tok = tiny_en.tokenizer
    features = log_mel_spectrogram(np.stack([np.pad(w, (0, 480000 - len(w))) for w in _windows()]))
    prompt = [tok.sot] if timestamps else [tok.sot, tok.no_timestamps]
    expected = reference.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy())),
        [prompt] * len(features),
        beam_size=1,
    )
    ours = decode(
        session,
        tok,
        tiny_en.suppress_tokens,
        session.encode(features),
        DecodingOptions(without_timestamps=not timestamps),
    )
    for want, got in zip(expected, ours):
        assert got.tokens == want.sequences_ids[0]
        assert len(got.tokens) > 5


def test_incremental_decoder_matches_transformers_forward(tiny_en):
    session = InferenceSession(tiny_en.model, vocab_screen=False)
    features = log_mel_spectrogram(load_audio(JFK))[None]
    tokens = [tiny_en.tokenizer.sot, tiny_en.tokenizer.no_timestamps, 843, 523, 616, 5891]
    with torch.inference_mode():
        enc = session.encode(features)
        want = tiny_en.model(input_features=features, decoder_input_ids=torch.tensor([tokens]))
        state = session.start(enc, [2], 8)
        got = [session.logits(session.prompt(state, [tokens[:2]]))[0, -1]]
        for t in tokens[2:]:
            got.append(session.logits(session.step(state, torch.tensor([t])))[0, -1])
    torch.testing.assert_close(torch.stack(got), want.logits[0, 1:], atol=2e-4, rtol=1e-4)


def test_bfloat16_encoder_runs_on_a_copy_and_hands_back_float32_states(tiny_en):
    session = InferenceSession(tiny_en.model, "bfloat16")
    full = InferenceSession(tiny_en.model)
    assert session.encoder_dtype == torch.bfloat16
    assert next(session.encoder.parameters()).dtype == torch.bfloat16
    assert next(tiny_en.model.model.encoder.parameters()).dtype == torch.float32  # untouched
    features = log_mel_spectrogram(load_audio(JFK))[None]
    low, ref = session.encode(features), full.encode(features)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert not torch.equal(low, ref)  # it really ran in bfloat16
    cosine = F.cosine_similarity(low.flatten(1), ref.flatten(1)).item()
    assert cosine > 0.99, cosine
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        InferenceSession(tiny_en.model, "int4")


def test_cpu_encoder_takes_a_batch_in_groups_with_the_states_of_one_call(tiny_en, monkeypatch):
    from whisperforge.models import inference
    from whisperforge.models.inference import cpu_encoder_rows, encoder_states

    assert cpu_encoder_rows(3000) == 1 and cpu_encoder_rows(1000) == 3
    assert cpu_encoder_rows(200) == 15 and cpu_encoder_rows(2) == 1500
    session = InferenceSession(tiny_en.model)
    gen = torch.Generator().manual_seed(0)
    calls = []
    original = inference.encoder_states

    def spy(encoder, features):
        calls.append(features.shape[0])
        return original(encoder, features)

    monkeypatch.setattr(inference, "encoder_states", spy)
    for frames, groups in ((3000, [1, 1, 1]), (1000, [3]), (600, [3])):
        features = torch.randn(3, 80, frames, generator=gen)
        calls.clear()
        grouped = session.encode(features)
        assert calls == groups, frames
        whole = encoder_states(session.encoder, features)  # one call
        assert grouped.shape == whole.shape
        torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 384), (1, 1, 384), (5, 1, 384), (2, 3, 384)])
def test_vocabulary_projection_matches_linear_for_any_row_count(tiny_en, shape):
    session = InferenceSession(tiny_en.model, vocab_screen=False)
    hidden = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    got = session.logits(hidden)
    assert got.shape == (*shape[:-1], session.embed.shape[0]) and got.is_contiguous()
    torch.testing.assert_close(got, torch.nn.functional.linear(hidden, session.embed))


def _jfk_hidden(session, tok) -> torch.Tensor:
    """The decoder's final states at every position of jfk's transcript, teacher-forced."""
    features = log_mel_spectrogram(load_audio(JFK))[None]
    tokens = [tok.sot, tok.no_timestamps, *tok.encode(" And so my fellow Americans, ask not.")]
    with torch.inference_mode():
        state = session.start(session.encode(features), [len(tokens)], 1)
        return session.prompt(state, [tokens])[0]


@pytest.mark.parametrize("rows", [1, 3, 12])
def test_vocabulary_screen_keeps_what_decoding_reads_exact(tiny_en, rows):
    from whisperforge.models.inference import SCREEN_EXACT

    exact = InferenceSession(tiny_en.model, vocab_screen=False)
    screened = InferenceSession(tiny_en.model, vocab_screen=True)
    assert screened.screen.dtype == torch.bfloat16 and exact.screen is None
    hidden = _jfk_hidden(exact, tiny_en.tokenizer)[:rows]
    want, got = exact.logits(hidden), screened.logits(hidden)
    assert got.shape == want.shape and got.is_contiguous()
    eot = tiny_en.tokenizer.eot
    torch.testing.assert_close(got[:, eot:], want[:, eot:])  # specials, timestamps
    best = want[:, :eot].topk(SCREEN_EXACT // 2, dim=-1).indices
    torch.testing.assert_close(got.gather(1, best), want.gather(1, best))
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    rest = (got - want).abs().max().item()
    assert 0 < rest < 0.25, rest  # the others keep bfloat16 values


def test_vocabulary_screen_decodes_the_same_tokens(tiny_en):
    exact = InferenceSession(tiny_en.model, vocab_screen=False)
    screened = InferenceSession(tiny_en.model, vocab_screen=True)
    tok = tiny_en.tokenizer
    mel = log_mel_spectrogram(np.stack([np.pad(w, (0, 480000 - len(w))) for w in _windows()]))
    enc = exact.encode(mel)
    for options in (DecodingOptions(), DecodingOptions(beam_size=3)):
        want = decode(exact, tok, tiny_en.suppress_tokens, enc, options)
        got = decode(screened, tok, tiny_en.suppress_tokens, enc, options)
        assert [r.tokens for r in got] == [r.tokens for r in want]
        for a, b in zip(got, want):
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-3)
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-3)


def test_vocabulary_screen_is_on_by_default_only_where_bfloat16_is_fast(tiny_en, monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert InferenceSession(tiny_en.model).screen is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert InferenceSession(tiny_en.model).screen is not None
    half = copy.deepcopy(tiny_en.model).half()
    assert InferenceSession(half).screen is None
    with pytest.raises(ValueError, match="float32 model"):
        InferenceSession(half, vocab_screen=True)


def test_variable_length_prompts_in_one_batch_match_single_rows(tiny_en):
    session = InferenceSession(tiny_en.model)
    tok = tiny_en.tokenizer
    features = log_mel_spectrogram(load_audio(JFK))[None].repeat(2, 1, 1)
    context = tok.encode(" Fellow citizens, here is the speech.")
    opts = DecodingOptions(without_timestamps=True)
    enc = session.encode(features)
    batched = decode(session, tok, tiny_en.suppress_tokens, enc, opts, contexts=[context, None])
    alone = [
        decode(session, tok, tiny_en.suppress_tokens, enc[:1], opts, contexts=[c])[0]
        for c in (context, None)
    ]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]


def test_converted_folder_loads_in_transformers_pipeline(tiny_en):
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(tiny_en.path), device="cpu")
    text = asr(load_audio(JFK))["text"]
    assert "ask not what your country can do for you" in text.lower()


def test_unknown_model_lists_available_names():
    with pytest.raises(ModelNotFoundError, match="whisper-base, whisper-tiny.en"):
        resolve_model("whisper-huge")


def test_unreachable_hub_id_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="could not be fetched from the Hugging Face Hub"):
        resolve_model("openai/whisper-small")


def test_local_ct2_folder_is_converted_into_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPERFORGE_CACHE", str(tmp_path / "cache"))
    _, meta = preset_files(PRESETS["whisper-tiny.en"])
    folder = resolve_model(meta)
    assert (folder / "model.safetensors").exists()
    assert json.loads((folder / "whisperforge.json").read_text())["source_bytes"] == 75_537_502
    assert resolve_model(meta) == folder  # second call reuses the cache entry


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path):
    parts, meta = preset_files(PRESETS["whisper-tiny.en"])
    dest = tmp_path / "models" / "tiny"
    with pytest.raises(ChecksumError, match="reinstall"):
        convert_ct2_to_hf(parts, meta, dest, multilingual=False, expected_sha256="0" * 64)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == [".tiny.lock"]


def test_failed_conversion_leaves_no_half_written_cache(tmp_path):
    parts, meta = preset_files(PRESETS["whisper-tiny.en"])
    truncated = tmp_path / "model.bin"
    with open(parts[0], "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    dest = tmp_path / "models" / "broken"
    with pytest.raises(CT2FormatError, match="truncated"):
        convert_ct2_to_hf([truncated], meta, dest, multilingual=False)
    assert not dest.exists()
    leftovers = [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


@pytest.mark.parametrize("left", ["config.json", "whisperforge.json"])
def test_incomplete_cache_entry_is_redone(monkeypatch, tmp_path, left):
    """A destination without the completion stamp (e.g. copied by hand), or stamped but
    without its weights (as a conversion on a non-zero distributed rank once left it), is
    converted again, not loaded."""
    monkeypatch.setenv("WHISPERFORGE_CACHE", str(tmp_path))
    preset = PRESETS["whisper-tiny.en"]
    dest = tmp_path / "models" / f"whisper-tiny.en-{preset.sha256[:12]}"
    dest.mkdir(parents=True)
    (dest / left).write_text("{}")
    folder = resolve_model("whisper-tiny.en")
    assert "source_sha256" in json.loads((folder / "whisperforge.json").read_text())
    assert os.path.getsize(folder / "model.safetensors") > 70_000_000
    assert Path(folder) == dest


def _convert_on_rank(rank: int, init_file: str, cache: str) -> None:
    import torch.distributed as dist

    os.environ["WHISPERFORGE_CACHE"] = cache
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # transformers' save_pretrained writes nothing on this rank
            resolve_model("whisper-tiny.en")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_conversion_on_a_nonzero_distributed_rank_writes_the_weights(tmp_path, tiny_en):
    """The first ``torchrun`` launch on a fresh machine may convert on any rank."""
    import torch.multiprocessing as mp

    cache = tmp_path / "cache"
    mp.spawn(_convert_on_rank, args=(str(tmp_path / "init"), str(cache)), nprocs=2)
    from safetensors.torch import load_file

    folder = next((cache / "models").glob("whisper-tiny.en-*"))
    assert (folder / "config.json").exists() and (folder / "generation_config.json").exists()
    got, want = (load_file(str(f / "model.safetensors")) for f in (folder, tiny_en.path))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _ask_not_loop() -> np.ndarray:
    """jfk's "ask not" (3.2-4.4 s) said 24 times: whisper-tiny.en reads it greedily as a
    repetition loop ("S-0-S-0-...") that runs to the token limit."""
    piece = load_audio(JFK)[int(3.2 * 16000) : int(4.4 * 16000)]
    return np.tile(piece, 24)


def test_a_looping_greedy_row_is_cut_and_the_rest_of_its_batch_is_not(tiny_en):
    from whisperforge.decoding import LOOP_EVERY, LOOP_MIN_TOKENS

    session, tok = InferenceSession(tiny_en.model), tiny_en.tokenizer
    windows = [load_audio(JFK), _ask_not_loop()]
    mel = log_mel_spectrogram(np.stack([np.pad(w, (0, 480000 - len(w))) for w in windows]))
    enc = session.encode(mel)
    run = lambda **kw: decode(session, tok, tiny_en.suppress_tokens, enc, DecodingOptions(**kw))  # noqa: E731
    whole, cut = run(), run(stop_compression_ratio=2.4)
    assert len(whole[1].tokens) == 224 and whole[1].compression_ratio > 2.4
    n = len(cut[1].tokens)
    assert LOOP_MIN_TOKENS <= n < LOOP_MIN_TOKENS + LOOP_EVERY
    assert cut[1].tokens == whole[1].tokens[:n]  # the same greedy path, stopped early
    assert cut[1].compression_ratio > 2.4  # so a caller's fallback rule still fires
    assert cut[0].tokens == whole[0].tokens and cut[0].text == whole[0].text
    sampled = []
    for stop in (None, 2.4):
        options = DecodingOptions(temperature=0.5, stop_compression_ratio=stop)
        seeded = torch.Generator().manual_seed(0)
        suppress = tiny_en.suppress_tokens
        sampled.append(decode(session, tok, suppress, enc, options, generator=seeded))
    assert [r.tokens for r in sampled[0]] == [r.tokens for r in sampled[1]]  # greedy rows only


def test_beam_search_rows_leave_the_batch_and_give_what_they_give_alone(tiny_en):
    session, tok = InferenceSession(tiny_en.model), tiny_en.tokenizer
    windows = [*_windows(), _ask_not_loop()]
    mel = log_mel_spectrogram(np.stack([np.pad(w, (0, 480000 - len(w))) for w in windows]))
    enc = session.encode(mel)
    options = DecodingOptions(beam_size=3)
    batched = decode(session, tok, tiny_en.suppress_tokens, enc, options)
    alone = [decode(session, tok, tiny_en.suppress_tokens, enc[i : i + 1], options)[0]
             for i in range(len(windows))]  # fmt: skip
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    sums = [r.sum_logprob for r in alone]
    assert [r.sum_logprob for r in batched] == pytest.approx(sums, abs=1e-4)
    assert len({len(r.tokens) for r in batched}) == len(windows)  # rows end at different steps
    assert len(batched[3].tokens) > 100 and batched[3].compression_ratio > 2.4
    cut = decode(session, tok, tiny_en.suppress_tokens, enc,
                 DecodingOptions(beam_size=3, stop_compression_ratio=2.4))  # fmt: skip
    assert len(cut[3].tokens) < 80 and cut[3].compression_ratio > 2.4
    assert [r.tokens for r in cut[:3]] == [r.tokens for r in batched[:3]]


def test_cutting_loops_changes_no_transcription(tiny_en, monkeypatch):
    """The transcriber cuts loops only where a higher temperature will decode the window
    again, so its results are the ones it gives without the cut; at the last temperature the
    loop is kept whole."""
    from whisperforge import decoding
    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber("whisper-tiny.en")
    windows = [load_audio(JFK), _ask_not_loop()]
    last_only = transcriber.decode_windows(windows[1:], temperature=0.0)[0]
    assert len(last_only.tokens) == 224
    cut = transcriber.decode_windows(windows)
    assert cut[1].temperature > 0  # fell back, as without the cut
    beam = transcriber.decode_windows(windows, beam_size=2)
    monkeypatch.setattr(decoding, "LOOP_MIN_TOKENS", 10**6)
    whole = transcriber.decode_windows(windows)
    assert [(r.tokens, r.temperature) for r in cut] == [(r.tokens, r.temperature) for r in whole]
    whole = transcriber.decode_windows(windows, beam_size=2)
    assert [(r.tokens, r.temperature) for r in beam] == [(r.tokens, r.temperature) for r in whole]
