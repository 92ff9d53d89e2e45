"""Speech tokens end to end on the real whisper-tiny.en with an untrained tiny-width bottleneck:
rates and windows, save/load, transcription from ids, LLM text and vocabulary, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tests.conftest import JFK

from whisperforge.audio import SAMPLE_RATE, load_audio
from whisperforge.cli import main
from whisperforge.decoding import detect_language
from whisperforge.models import ModelNotFoundError
from whisperforge.models.vq import (
    average_bottlenecks,
    code_agreement,
    grow_codebook,
    merge_codebooks,
    whisper_vq_tiny,
)
from whisperforge.tokens import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SpeechTokenizer,
    add_sound_tokens,
    from_llm_text,
    to_llm_text,
)


@pytest.fixture(scope="module")
def speech_tokenizer(tiny_en):
    torch.manual_seed(0)
    return SpeechTokenizer(whisper_vq_tiny(codebook_size=256), tiny_en, "whisper-tiny.en")


@pytest.fixture(scope="module")
def jfk_ids(speech_tokenizer):
    return speech_tokenizer.tokenize(JFK)


def test_jfk_gives_25_ids_per_second_and_no_mask(speech_tokenizer, jfk_ids):
    assert len(jfk_ids) == 275  # 11.0 s
    assert all(0 <= i < 256 for i in jfk_ids)  # real codes only; the mask id is 256
    assert len(set(jfk_ids)) > 1


def test_a_shared_session_gives_the_same_tokens(speech_tokenizer, jfk_ids, tiny_en):
    import copy
    import dataclasses

    from whisperforge.transcribe import Transcriber

    transcriber = Transcriber(tiny_en)
    shared = SpeechTokenizer(speech_tokenizer.bottleneck, tiny_en, "whisper-tiny.en",
                             session=transcriber.session)  # fmt: skip
    assert shared.session is transcriber.session
    assert shared.tokenize(JFK) == jfk_ids
    with pytest.raises(ValueError, match="keeps its own encoder_dtype"):
        SpeechTokenizer(speech_tokenizer.bottleneck, tiny_en, "whisper-tiny.en",
                        encoder_dtype="bfloat16", session=transcriber.session)  # fmt: skip
    other = dataclasses.replace(tiny_en, model=copy.deepcopy(tiny_en.model))
    with pytest.raises(ValueError, match="session must be one over"):
        SpeechTokenizer(speech_tokenizer.bottleneck, other, "whisper-tiny.en",
                        session=transcriber.session)  # fmt: skip


def test_long_audio_is_tokenized_in_30s_windows(speech_tokenizer):
    rng = np.random.default_rng(0)
    jfk = load_audio(JFK)
    audio = np.concatenate([jfk, 0.05 * rng.standard_normal(65 * SAMPLE_RATE - len(jfk))])
    audio = audio.astype(np.float32)
    ids = speech_tokenizer.tokenize_batch([audio, audio[: 2 * SAMPLE_RATE]], batch_size=4)
    assert [len(x) for x in ids] == [25 * 65, 50]
    window = 30 * SAMPLE_RATE
    assert ids[0][:750] == speech_tokenizer.tokenize(audio[:window])
    assert ids[0][1500:] == speech_tokenizer.tokenize(audio[2 * window :])
    assert 256 not in ids[0]


def test_save_load_round_trip(speech_tokenizer, jfk_ids, tiny_en, tmp_path):
    folder = speech_tokenizer.save(tmp_path / "tok")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["format"] == 1 and meta["teacher"] == "whisper-tiny.en"
    assert meta["codebook"]["mask_id"] == 256 and meta["codebook"]["n_ids"] == 257
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:  # the bottleneck only
        assert set(f.keys()) == set(speech_tokenizer.bottleneck.state_dict())
    loaded = SpeechTokenizer.load(folder, whisper=tiny_en)
    assert loaded.tokenize(JFK) == jfk_ids
    assert loaded.config == speech_tokenizer.config


def test_load_errors_are_clear(tmp_path, speech_tokenizer, tiny_en):
    with pytest.raises(ModelNotFoundError, match="no speech tokenizer at .*speech_tokenizer.json"):
        SpeechTokenizer.load(tmp_path / "missing")
    folder = speech_tokenizer.save(tmp_path / "tok")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="format 99 is not supported"):
        SpeechTokenizer.load(folder, whisper=tiny_en)
    (folder / CONFIG_FILE).write_text("not json")
    with pytest.raises(ValueError, match="speech_tokenizer.json: not a speech tokenizer config"):
        SpeechTokenizer.load(folder, whisper=tiny_en)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    (folder / WEIGHTS_FILE).write_bytes(b"")  # empty
    with pytest.raises(ValueError, match="speech_tokenizer.safetensors: unreadable weights"):
        SpeechTokenizer.load(folder, whisper=tiny_en)
    other = speech_tokenizer.save(tmp_path / "other")
    assert main(["tokens", "average", str(other), str(folder), "--out", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()


def test_transcribe_tokens_batched_and_checked(speech_tokenizer, jfk_ids):
    feats = speech_tokenizer.features([jfk_ids, jfk_ids[:10]])
    assert feats.shape == (2, 1500, 384)
    three = [jfk_ids, jfk_ids[:100], jfk_ids * 3]
    texts = speech_tokenizer.transcribe_tokens(three, batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # a window's text does not depend on its batch, fallback sampling included
    assert speech_tokenizer.detokenize(jfk_ids) == texts[0]
    greedy = speech_tokenizer.transcribe_tokens(three, batch_size=2, fallback=False)
    assert speech_tokenizer.detokenize(jfk_ids, fallback=False) == greedy[0]
    with pytest.raises(ValueError, match=r"sequence 1: token id 999 is outside 0\.\.256"):
        speech_tokenizer.transcribe_tokens([jfk_ids, [1, 999]])


def test_long_sequences_are_decoded_in_overlapping_windows(speech_tokenizer):
    assert speech_tokenizer.token_windows(750) == [(0, 750)]  # one window: decoded whole
    assert speech_tokenizer.token_windows(0) == [(0, 0)]
    windows = speech_tokenizer.token_windows(1625)  # 65 s
    assert windows[0][0] == 0 and windows[-1][1] == 1625
    assert all(b - a <= 500 for a, b in windows)  # 20 s each
    # neighbours share 6 s (150 ids): 3 s of context on each side of every cut
    assert all(b1 - a2 == 150 for (_, b1), (a2, _) in zip(windows, windows[1:]))
    ids = list(range(256)) * 4  # 1024 ids, 41 s
    counted = []
    texts = speech_tokenizer.transcribe_tokens([ids, ids[:100]], batch_size=2,
                                               progress=counted.append, fallback=False)  # fmt: skip
    assert sum(counted) == len(speech_tokenizer.token_windows(1024)) + 1
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_ids_from_both_parts_of_a_merged_codebook_decode(tiny_en):
    torch.manual_seed(0)
    small = whisper_vq_tiny(codebook_size=64)
    merged = merge_codebooks(grow_codebook(small, 256), small)
    tokenizer = SpeechTokenizer(merged, tiny_en, "whisper-tiny.en")
    assert tokenizer.config.n_ids == 321 and tokenizer.config.mask_id == 256
    ids = [0, 255, 256, 257, 320] * 10
    assert isinstance(tokenizer.detokenize(ids), str)
    assert all(i != 256 for i in tokenizer.tokenize(JFK))


def test_averaged_bottlenecks_interpolate_weights_and_codes(tiny_en, tmp_path):
    torch.manual_seed(0)
    base = whisper_vq_tiny(codebook_size=64)
    tuned = grow_codebook(base, 64, noise=0.05, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tuned.mlp[0].weight.add_(0.1 * torch.randn_like(tuned.mlp[0].weight))
    assert float(code_agreement(base, base).min()) > 0.999
    assert 0.5 < float(code_agreement(base, tuned).min()) < 0.999  # near, not equal
    mean = average_bottlenecks([base, tuned], [3, 1])
    expected = 0.75 * base.mlp[0].weight + 0.25 * tuned.mlp[0].weight
    torch.testing.assert_close(mean.mlp[0].weight, expected)
    mixed = 0.75 * base.vq.codebook + 0.25 * tuned.vq.codebook
    codes = torch.nn.functional.normalize(mixed, dim=-1)
    torch.testing.assert_close(mean.vq.codebook, codes)
    # codes re-seeded in between (unrelated at their index) come from the last bottleneck
    reseeded = copy.deepcopy(tuned)
    with torch.no_grad():
        reseeded.vq._codebook.embed[0, :3] = -reseeded.vq._codebook.embed[0, :3]  # cosine -1
    moved = reseeded.vq.codebook[:3].clone()
    kept = average_bottlenecks([base, reseeded])
    torch.testing.assert_close(kept.vq.codebook[:3], moved)
    both = torch.nn.functional.normalize(base.vq.codebook + reseeded.vq.codebook, dim=-1)
    torch.testing.assert_close(kept.vq.codebook[3:], both[3:])
    averaged_all = average_bottlenecks([base, reseeded], drifted="mean")
    assert not torch.allclose(averaged_all.vq.codebook[:3], moved)
    torch.testing.assert_close(averaged_all.vq.codebook[3:], both[3:])
    # averaging a bottleneck with itself changes no token
    same = SpeechTokenizer(average_bottlenecks([base, base]), tiny_en, "whisper-tiny.en")
    original = SpeechTokenizer(base, tiny_en, "whisper-tiny.en")
    assert same.tokenize(JFK) == original.tokenize(JFK)
    with pytest.raises(ValueError, match="differs from bottleneck 0 in codebook_size"):
        average_bottlenecks([base, whisper_vq_tiny(codebook_size=32)])
    with pytest.raises(ValueError, match="weights must be positive"):
        average_bottlenecks([base, tuned], [1, 0])
    with pytest.raises(ValueError, match="at least two"):
        average_bottlenecks([base])

    a = SpeechTokenizer(base, tiny_en, "whisper-tiny.en").save(tmp_path / "a")
    b = SpeechTokenizer(tuned, tiny_en, "whisper-tiny.en").save(tmp_path / "b")
    assert main(["tokens", "average", str(a), str(b), "--out", str(tmp_path / "avg")]) == 0
    loaded = SpeechTokenizer.load(tmp_path / "avg", whisper=tiny_en)
    torch.testing.assert_close(loaded.bottleneck.mlp[0].weight,
                               0.5 * base.mlp[0].weight + 0.5 * tuned.mlp[0].weight)  # fmt: skip
    assert len(loaded.tokenize(JFK)) == 275
    small = SpeechTokenizer(whisper_vq_tiny(codebook_size=32), tiny_en, "whisper-tiny.en")
    c = small.save(tmp_path / "c")
    assert main(["tokens", "average", str(a), str(c), "--out", str(tmp_path / "bad")]) != 0
    assert not (tmp_path / "bad").exists()


def test_llm_text_round_trip():
    ids = [0, 7, 123, 2560]
    text = to_llm_text(ids)
    assert text == (
        "<|sound_start|><|sound_0000|><|sound_0007|><|sound_0123|><|sound_2560|><|sound_end|>"
    )
    assert from_llm_text(text) == ids
    assert from_llm_text(to_llm_text([])) == []
    with pytest.raises(ValueError, match="unexpected text"):
        from_llm_text("<|sound_start|><|sound_0001|>hello<|sound_end|>")
    with pytest.raises(ValueError, match="must start with"):
        from_llm_text("<|sound_0001|>")


def test_hf_tokenizer_helper_adds_sound_tokens_and_resizes_embeddings(tiny_en):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_en.path / "tokenizer.json"))
    before = len(hf_tok)
    torch.manual_seed(0)
    llm = GPT2LMHeadModel(GPT2Config(vocab_size=before, n_embd=16, n_layer=2, n_head=2))
    sound = add_sound_tokens(hf_tok, 2561, llm)
    assert len(hf_tok) == before + 2563
    assert llm.get_input_embeddings().weight.shape[0] == len(hf_tok)
    assert llm.get_output_embeddings().weight.shape[0] == len(hf_tok)
    ids = [0, 2048, 2560, 5]
    encoded = hf_tok(to_llm_text(ids), add_special_tokens=False).input_ids
    assert encoded == sound.encode(ids)
    assert hf_tok.decode(encoded) == to_llm_text(ids)
    assert add_sound_tokens(hf_tok, 2561).codes == sound.codes  # idempotent
    assert llm(torch.tensor([encoded])).logits.shape == (1, 6, len(hf_tok))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_init_encode_transcribe(tmp_path, capsys):
    model = tmp_path / "tok"
    code, out, _ = _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en",
                        "--codebook-size", "128", "--out", str(model))  # fmt: skip
    assert code == 0 and "tiny" in out
    lines = {}
    for fmt in ("ids", "json", "llm"):
        code, out, _ = _run(capsys, "tokens", "encode", str(JFK), "--model", str(model),
                            "--format", fmt, "-q")  # fmt: skip
        assert code == 0
        lines[fmt] = out.strip()
    ids = [int(i) for i in lines["ids"].split()]
    assert len(ids) == 275 and max(ids) < 128
    row = json.loads(lines["json"])
    assert row["tokens"] == ids and row["duration"] == 11.0 and row["audio"] == str(JFK)
    assert from_llm_text(lines["llm"]) == ids
    tokens_file = tmp_path / "t.txt"
    tokens_file.write_text("\n".join(lines.values()) + "\n")
    out_file = tmp_path / "text.txt"
    code, _, _ = _run(capsys, "tokens", "transcribe", str(tokens_file), "--model", str(model),
                      "--output", str(out_file), "-q")  # fmt: skip
    texts = out_file.read_text().splitlines()
    assert code == 0 and len(texts) == 3 and texts[0] == texts[1] == texts[2]


def test_cli_errors(tmp_path, capsys):
    model = tmp_path / "tok"
    code, _, _ = _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en",
                      "--codebook-size", "32", "--out", str(model))  # fmt: skip
    assert code == 0
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    code, out, err = _run(capsys, "tokens", "encode", str(broken), str(JFK), "--model",
                          str(model), "-q")  # fmt: skip
    assert code == 1 and "cannot decode" in err and "broken.wav" in err
    assert len(out.split()) == 275  # the good file is still encoded
    code, _, err = _run(capsys, "tokens", "encode", str(JFK), "--model", str(tmp_path / "nope"))
    assert code == 2 and "no speech tokenizer at" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 40\n")
    code, _, err = _run(capsys, "tokens", "transcribe", str(bad), "--model", str(model), "-q")
    assert code == 2 and "token id 40 is outside 0..32" in err
    bad.write_text("1 2 x\n")
    code, _, err = _run(capsys, "tokens", "transcribe", str(bad), "--model", str(model), "-q")
    assert code == 2 and "line 1: not a token sequence" in err


def test_cli_grow_then_merge_pins_the_layout(tmp_path, capsys):
    small, grown, merged = (tmp_path / n for n in ("small", "grown", "merged"))
    _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en", "--codebook-size", "64",
         "--out", str(small))  # fmt: skip
    code, _, _ = _run(capsys, "tokens", "grow", str(small), "--codebook-size", "256",
                      "--out", str(grown))  # fmt: skip
    assert code == 0
    code, out, _ = _run(capsys, "tokens", "merge", str(grown), str(small), "--out", str(merged))
    assert code == 0 and "mask 256" in out
    layout = json.loads((merged / CONFIG_FILE).read_text())["codebook"]
    assert layout["n_ids"] == 321 and layout["mask_id"] == 256
    assert [(p["name"], p["start"], p["size"]) for p in layout["parts"]] == [
        ("codes", 0, 256), ("mask", 256, 1), ("merged", 257, 64)
    ]  # fmt: skip
    assert layout["parts"][2]["source"] == str(small)
    code, out, _ = _run(capsys, "tokens", "encode", str(JFK), "--model", str(merged), "-q")
    assert code == 0 and len(out.split()) == 275 and "256" not in out.split()


def test_multilingual_teacher_detects_or_takes_the_language():
    from whisperforge.models import load_model

    base = load_model("whisper-base")
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(whisper_vq_tiny(d_model=512, n_heads=8, codebook_size=64), base,
                                "whisper-base")  # fmt: skip
    ids = tokenizer.tokenize(JFK)
    assert len(ids) == 275
    probs = detect_language(tokenizer.session, base.tokenizer, tokenizer.features([ids]))[0]
    language = max(probs, key=probs.get)
    assert tokenizer.detokenize(ids) == tokenizer.detokenize(ids, language=language)
    with pytest.raises(ValueError, match="does not match the Whisper model"):
        SpeechTokenizer(whisper_vq_tiny(), base, "whisper-base")


def test_shipped_tokenizer_loads_by_short_name(speech_tokenizer, jfk_ids, tiny_en, tmp_path,
                                               monkeypatch):  # fmt: skip
    import whisperforge.models.zoo as zoo

    folder = speech_tokenizer.save(tmp_path / "zoo" / "vq-test")
    (folder / "README.md").write_text("# vq-test\n")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    assert SpeechTokenizer.load("vq-test", whisper=tiny_en).tokenize(JFK) == jfk_ids
    with pytest.raises(ModelNotFoundError, match="shipped: vq-test"):
        SpeechTokenizer.load("vq-missing", whisper=tiny_en)


def test_cli_save_in_float16_halves_the_folder_and_keeps_the_tokens(tmp_path, capsys):
    model, half = tmp_path / "tok", tmp_path / "tok16"
    assert _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en", "--codebook-size",
                "128", "--out", str(model))[0] == 0  # fmt: skip
    code, out, _ = _run(capsys, "tokens", "save", str(model), "--out", str(half))
    assert code == 0 and "float16" in out
    size = lambda folder: (folder / WEIGHTS_FILE).stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(model)
    ids = [
        _run(capsys, "tokens", "encode", str(JFK), "--model", str(m), "-q")[1].split()
        for m in (model, half)
    ]
    agree = sum(a == b for a, b in zip(*ids)) / len(ids[0])
    assert len(ids[1]) == 275 and agree > 0.95  # near-ties may flip in half precision
    assert json.loads((half / CONFIG_FILE).read_text())["teacher"] == "whisper-tiny.en"


def test_bfloat16_encoder_keeps_the_rate_and_nearly_all_codes(speech_tokenizer, jfk_ids, tiny_en,
                                                              tmp_path, capsys):  # fmt: skip
    folder = speech_tokenizer.save(tmp_path / "tok")
    fast = SpeechTokenizer.load(folder, whisper=tiny_en, encoder_dtype="bfloat16")
    assert fast.encoder_dtype == "bfloat16" and speech_tokenizer.encoder_dtype == "float32"
    assert next(tiny_en.model.model.encoder.parameters()).dtype == torch.float32  # untouched
    ids = fast.tokenize(JFK)
    assert len(ids) == 275
    agree = sum(a == b for a, b in zip(ids, jfk_ids)) / len(ids)
    assert agree > 0.8, agree  # codes near a tie may flip with the encoder's rounding
    with pytest.raises(ValueError, match="encoder dtype must be one of"):
        SpeechTokenizer.load(folder, whisper=tiny_en, encoder_dtype="int8")
    code, out, _ = _run(capsys, "tokens", "encode", str(JFK), "--model", str(folder),
                        "--encoder-dtype", "bfloat16", "-q")  # fmt: skip
    assert code == 0 and [int(i) for i in out.split()] == ids


def test_cli_encodes_a_manifest_resumably(speech_tokenizer, tmp_path, capsys):
    import soundfile as sf

    folder = speech_tokenizer.save(tmp_path / "tok")
    jfk = load_audio(JFK)
    short, broken = tmp_path / "short.wav", tmp_path / "broken.wav"
    sf.write(short, jfk[: 3 * SAMPLE_RATE], SAMPLE_RATE)
    broken.write_bytes(b"not audio at all")
    rows = [
        {"audio": str(JFK), "text": "ask not", "id": "jfk", "language": "en"},
        {"audio": str(broken), "text": "broken", "id": "broken"},
        {"audio": str(short), "text": "and so my fellow", "id": "short"},
    ]
    manifest, out = tmp_path / "rows.jsonl", tmp_path / "out" / "tokens.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["tokens", "encode", "--manifest", str(manifest), "--model", str(folder),
            "--output", str(out), "--format", "llm", "--batch-size", "2", "-q"]  # fmt: skip
    code, _, err = _run(capsys, *argv)
    assert code == 1 and "(broken)" in err and "2 of 3 rows encoded, 1 failed" in err
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["id"]) for r in first] == [(0, "jfk"), (2, "short")]
    assert first[0]["tokens"] == speech_tokenizer.tokenize(JFK) and first[0]["text"] == "ask not"
    assert first[0]["language"] == "en" and first[0]["audio"] == str(JFK)
    assert from_llm_text(first[1]["llm"]) == first[1]["tokens"] == speech_tokenizer.tokenize(short)

    # killed while writing the second row, and the broken file replaced: a rerun keeps the
    # complete row, drops the cut one and encodes the two missing rows
    text = out.read_text()
    out.write_text(text[: text.index("\n") + 25])
    sf.write(broken, jfk[: 2 * SAMPLE_RATE], SAMPLE_RATE)
    code, _, err = _run(capsys, *argv)
    assert code == 0 and "1 of 3 rows already encoded" in err and "3 of 3 rows encoded" in err
    again = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(again) == ["broken", "jfk", "short"]
    assert again["jfk"] == first[0] and again["short"] == first[1]
    assert len(again["broken"]["tokens"]) == 50
    code, texts, _ = _run(capsys, "tokens", "transcribe", str(out), "--model", str(folder), "-q")
    assert code == 0 and len(texts.splitlines()) == 3  # the output reads back as it is

    rows[0]["id"] = "renamed"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "the manifest changed" in err
    code, _, err = _run(capsys, *argv[:6])
    assert code == 2 and "--manifest needs --output" in err
    for name, text in (("empty.jsonl", ""), ("wrong.jsonl", "audio,text\nfile.wav,hello\n")):
        (tmp_path / name).write_text(text)
        bad = ["--manifest", str(tmp_path / name), "--output", str(tmp_path / "x.jsonl")]
        code, _, err = _run(capsys, "tokens", "encode", *bad, "--model", str(folder))
        assert code == 2 and "no usable utterances" in err, err
        assert not (tmp_path / "x.jsonl").exists()  # nothing written for a bad manifest
    code, _, err = _run(capsys, "tokens", "encode", "--model", str(folder))
    assert code == 2 and "give audio files" in err


def test_vad_tokenizes_only_the_speech(speech_tokenizer, tmp_path, capsys):
    import soundfile as sf

    from whisperforge.vad import VadOptions, speech_map

    jfk = load_audio(JFK)
    silence = np.zeros(4 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([silence, jfk, silence, silence, jfk, silence])
    found = speech_map(audio)
    kept = found.compact(audio)
    assert len(found.chunks) == 2 and len(kept) < len(audio) - 10 * SAMPLE_RATE
    ids = speech_tokenizer.tokenize(audio, vad=True)
    assert ids == speech_tokenizer.tokenize(kept)  # the speech, joined, and nothing else
    assert len(ids) == -(-len(kept) // 640)  # 25 per second of what VAD kept
    assert len(ids) < len(speech_tokenizer.tokenize(audio)) - 250
    # no speech, no ids; the settings reach Silero (a short pause splits jfk)
    assert speech_tokenizer.tokenize_batch([silence, audio], vad=True) == [[], ids]
    finer = speech_tokenizer.tokenize(audio, vad=VadOptions(min_silence=0.3, speech_pad=0.1))
    assert len(finer) < len(ids)
    with pytest.raises(ValueError, match="vad_threshold"):
        VadOptions(threshold=1.0)

    folder = speech_tokenizer.save(tmp_path / "tok")
    padded, quiet = tmp_path / "padded.wav", tmp_path / "quiet.wav"
    sf.write(padded, audio, SAMPLE_RATE)
    sf.write(quiet, silence, SAMPLE_RATE)
    code, out, _ = _run(capsys, "tokens", "encode", str(padded), str(quiet), "--model",
                        str(folder), "--format", "json", "--vad", "-q")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["tokens"] for r in rows] == [ids, []]
    assert rows[0]["duration"] == len(audio) / SAMPLE_RATE
    assert rows[0]["duration_after_vad"] == round(len(kept) / SAMPLE_RATE, 3)
    assert rows[1]["duration_after_vad"] == 0.0
    code, out, _ = _run(capsys, "tokens", "encode", str(padded), "--model", str(folder), "-q")
    assert [int(i) for i in out.split()] == speech_tokenizer.tokenize(audio)  # off by default

    # a manifest written with --vad resumes only with it
    manifest, output = tmp_path / "rows.jsonl", tmp_path / "tokens.jsonl"
    manifest.write_text(json.dumps({"audio": str(padded), "text": "x", "id": "p"}) + "\n")
    argv = ["tokens", "encode", "--manifest", str(manifest), "--model", str(folder),
            "--output", str(output), "-q"]  # fmt: skip
    code, _, _ = _run(capsys, *argv, "--vad")
    row = json.loads(output.read_text())
    assert code == 0 and row["tokens"] == ids and row["duration_after_vad"] > 0
    code, _, err = _run(capsys, *argv, "--no-vad")
    assert code == 2 and "written with VAD" in err

    # a tokenizer whose config says "vad": true uses it unless told otherwise
    from whisperforge.tokens import default_vad

    flagged = SpeechTokenizer(speech_tokenizer.bottleneck, speech_tokenizer.whisper,
                              "whisper-tiny.en", {"vad": True})  # fmt: skip
    assert flagged.vad and not speech_tokenizer.vad
    assert flagged.tokenize(audio) == ids
    assert flagged.tokenize(audio, vad=False) == speech_tokenizer.tokenize(audio)
    on = flagged.save(tmp_path / "tok-vad")
    assert default_vad(on) and not default_vad(folder)
    code, out, _ = _run(capsys, "tokens", "encode", str(padded), "--model", str(on), "-q")
    assert code == 0 and [int(i) for i in out.split()] == ids
    code, out, _ = _run(capsys, "tokens", "encode", str(padded), "--model", str(on), "--no-vad",
                        "-q")  # fmt: skip
    assert code == 0 and [int(i) for i in out.split()] == speech_tokenizer.tokenize(audio)
    code, _, _ = _run(capsys, "tokens", "save", str(on), "--out", str(tmp_path / "off"),
                      "--no-vad")  # fmt: skip
    assert code == 0 and not default_vad(tmp_path / "off")
    assert _run(capsys, "tokens", "save", str(on), "--out", str(tmp_path / "kept"))[0] == 0
    assert default_vad(tmp_path / "kept")  # a copy keeps the source's default


def test_cli_encodes_a_folder_and_a_file_piped_in(tmp_path, capsys, monkeypatch):
    import io
    import shutil

    model = tmp_path / "tok"
    assert _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en",
                "--codebook-size", "32", "--out", str(model))[0] == 0  # fmt: skip
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(JFK, folder / "sub" / "jfk.wav")
    (folder / "notes.txt").write_text("not audio")
    with open(JFK, "rb") as piped:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(piped))
        code, out, _ = _run(capsys, "tokens", "encode", str(folder), "-", "--model", str(model),
                            "--format", "json", "-q")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["audio"] for r in rows] == [str(folder / "sub" / "jfk.wav"), "-"]
    assert rows[0]["tokens"] == rows[1]["tokens"] and len(rows[1]["tokens"]) == 275


def test_decoding_falls_back_where_greedy_text_fails(speech_tokenizer):
    """Rows whose greedy text is too repetitive or too unlikely are decoded again at rising
    temperatures (transcribe's rule), seeded; the other rows keep their greedy text."""
    from whisperforge.decoding import DecodingOptions, decode
    from whisperforge.transcribe import TranscribeOptions, needs_fallback

    tok = speech_tokenizer
    rng = np.random.default_rng(0)
    noise = tok.features([rng.integers(0, 256, 750).tolist() for _ in range(3)])
    speech, _ = tok.encode_windows([load_audio(JFK)])  # the encoder's own states: jfk
    feats = torch.cat([noise, speech])
    options, languages = DecodingOptions(without_timestamps=True), ["en"] * 4
    greedy = decode(tok.session, tok.whisper.tokenizer, tok.whisper.suppress_tokens, feats,
                    options, languages)  # fmt: skip
    failing = [needs_fallback(r, TranscribeOptions()) for r in greedy]
    assert any(failing) and not failing[-1], [(r.text, r.avg_logprob) for r in greedy]
    plain = tok.decode_features(feats, options, languages, fallback=False)
    assert plain == [r.text.strip() for r in greedy]
    retried = tok.decode_features(feats, options, languages)
    assert retried == tok.decode_features(feats, options, languages)  # seeded: repeatable
    for fails, before, after in zip(failing, plain, retried):
        assert (before != after) if fails else (before == after)


def test_sampled_decoding_depends_on_the_row_alone(speech_tokenizer):
    """Asked to sample (temperature above 0), each row draws from its own seeded generator: its
    text is the same alone or in a batch, whatever torch's global generator holds."""
    from whisperforge.decoding import DecodingOptions

    tok = speech_tokenizer
    speech, _ = tok.encode_windows([load_audio(JFK)])
    rng = np.random.default_rng(1)
    noise = tok.features([rng.integers(0, 256, 750).tolist() for _ in range(2)])
    feats = torch.cat([noise, speech])
    options = DecodingOptions(without_timestamps=True, temperature=1.0, sample_len=40)
    torch.manual_seed(0)
    batched = tok.decode_features(feats, options, ["en"] * 3, fallback=False)
    torch.manual_seed(1)
    alone = [tok.decode_features(feats[i : i + 1], options, ["en"], fallback=False)[0]
             for i in range(3)]  # fmt: skip
    assert batched == alone


def test_cli_refine_moves_the_codes_and_reports_a_broken_file(speech_clips, tmp_path, capsys):
    from safetensors.torch import load_file

    model, refined, again = tmp_path / "tok", tmp_path / "refined", tmp_path / "again"
    assert _run(capsys, "tokens", "init", "--teacher", "whisper-tiny.en", "--codebook-size",
                "64", "--out", str(model))[0] == 0  # fmt: skip
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 64)
    rows = [{"audio": str(JFK), "text": "jfk"}, {"audio": str(broken), "text": "x", "duration": 2}]
    rows += [{"audio": str(path), "text": text} for path, text in speech_clips[:3]]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    args = ["--manifest", str(manifest), "--cache-dir", str(cache), "--batch-size", "4", "-q"]
    code, out, err = _run(capsys, "tokens", "refine", str(model), "--out", str(refined), *args)
    assert code == 1 and f"{broken}: cannot be read" in err and "1 of 5 file(s) failed" in err
    assert "4 files" in out and "mean squared distance to the nearest code" in out
    before, after = (float(x) for x in out.split("nearest code ")[1].split()[:3:2])
    assert after < before
    old, new = (load_file(str(m / WEIGHTS_FILE)) for m in (model, refined))
    assert old.keys() == new.keys()
    codebook = [k for k in old if k.startswith("vq._codebook.embed")]
    assert codebook and all(torch.equal(old[k], new[k]) for k in old if k not in codebook)
    assert not torch.equal(old["vq._codebook.embed"], new["vq._codebook.embed"])
    assert len(list(cache.rglob("*.safetensors"))) == 4  # the readable files, once each
    # the cached states give the same codebook; the result still tokenizes
    code, _, _ = _run(capsys, "tokens", "refine", str(model), "--out", str(again), *args)
    assert code == 1
    torch.testing.assert_close(load_file(str(again / WEIGHTS_FILE))["vq._codebook.embed"],
                               new["vq._codebook.embed"])  # fmt: skip
    code, out, _ = _run(capsys, "tokens", "encode", str(JFK), "--model", str(refined), "-q")
    assert code == 0 and len(out.split()) == 275
    code, _, err = _run(capsys, "tokens", "refine", str(model), "--out", str(again),
                        "--manifest", str(manifest), "--iterations", "0")  # fmt: skip
    assert code == 2 and "--iterations must be at least 1" in err
    empty, garbled = tmp_path / "empty.jsonl", tmp_path / "garbled.jsonl"
    empty.write_text("")
    garbled.write_text("not json\n")
    for bad in (empty, garbled):
        code, _, err = _run(capsys, "tokens", "refine", str(model), "--out",
                            str(tmp_path / "none"), "--manifest", str(bad), "-q")  # fmt: skip
        assert code == 2 and "the manifests hold no rows" in err
        assert not (tmp_path / "none").exists()
    assert "skipped 1 row(s): invalid JSON" in err
