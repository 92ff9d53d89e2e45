"""Distillation training on a tiny seeded Whisper with the real tiny.en vocabulary: targets,
a falling loss, 2 processes under torchrun, and a killed run that resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import (
    SENTENCES,
    SUBPROCESS_ENV,
    needs_flite,
    read_log,
    save_tiny_whisper,
    synthesize,
    wait_for,
    write_yaml,
)

from whisperforge.recipes.distill import (
    DistillConfig,
    Example,
    build_sequence,
    collate,
    context_length,
    train,
)
from whisperforge.tokenizer import Tokenizer
from whisperforge.training.config import load_config

pytestmark = needs_flite


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_en_tokenizer) -> Path:
    """A random Whisper (d_model 32, 2 encoder + 4 decoder layers) saved as an HF folder."""
    return save_tiny_whisper(tmp_path_factory.mktemp("teacher"), tiny_en_tokenizer,
                             decoder_layers=4)  # fmt: skip


def _row(path: Path, text: str, tokenizer: Tokenizer, wer: float | None) -> dict:
    import soundfile as sf

    duration = sf.info(str(path)).duration
    end = tokenizer.timestamp_begin + min(1500, round(duration / 0.02))
    tokens = [tokenizer.timestamp_begin, *tokenizer.encode(" " + text), end]
    return {"audio": path.name, "text": text, "language": "en", "duration": duration,
            "speaker": "flite:slt", "id": path.stem, "pseudo_text": text,
            "pseudo_tokens": tokens, "teacher_wer": wer}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_en_tokenizer) -> dict:
    """6 usable label rows, 2 the WER filter drops, and a 2-row dev manifest."""
    folder = tmp_path_factory.mktemp("labels")
    wers = [0.0, 5.0, 0.0, 8.0, 0.0, 0.0, 50.0, None]
    rows = []
    for i, wer in enumerate(wers):
        path = synthesize(SENTENCES[i], folder / f"w{i}.wav", "slt" if i % 2 else "kal16")
        rows.append(_row(path, SENTENCES[i], tiny_en_tokenizer, wer))
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return {"labels": folder / "labels.jsonl", "dev": folder / "dev.jsonl"}


def _config(tmp: Path, teacher: Path, data: dict, out: str, **training) -> Path:
    config = {
        "teacher": str(teacher), "decoder_layers": 2, "train_manifests": [str(data["labels"])],
        "dev_manifest": None, "eval_batch_size": 2,
        "training": {"output_dir": str(tmp / out), "lr": 3e-3, "warmup_steps": 1,
                     "batch_size": 2, "max_steps": 6, "log_every": 1, "save_every": 2,
                     "eval_every": 0, **training},
    }  # fmt: skip
    return write_yaml(tmp / f"{out}.yaml", config)


def _losses(out: Path) -> dict[int, float]:
    return {step: float(row["loss"]) for step, row in read_log(out).items()}


def test_targets_mask_the_prompt_and_pad_to_the_longest(tiny_en_tokenizer):
    tokenizer = tiny_en_tokenizer
    tokens = [tokenizer.timestamp_begin, *tokenizer.encode(" Hello there."),
              tokenizer.timestamp_begin + 50]  # fmt: skip
    example = Example("a.wav", tokens, "en", "Before this.")
    with_all, sot = build_sequence(example, tokenizer, np.random.default_rng(0), 1.0, 1.0, 448)
    prev = tokenizer.encode(" Before this.")
    assert with_all[: sot + 1] == [tokenizer.sot_prev, *prev, tokenizer.sot]
    assert with_all[sot + 1 :] == [*tokens, tokenizer.eot]
    plain, start = build_sequence(example, tokenizer, np.random.default_rng(0), 0.0, 0.0, 448)
    assert start == 0
    assert plain == [tokenizer.sot, tokenizer.no_timestamps, *tokens[1:-1], tokenizer.eot]
    batch = collate([(with_all, sot), (plain, start)], ["a", "b"], tokenizer.eot)
    assert batch.input_ids.shape == (2, len(with_all) - 1)  # the longest, not 448
    assert batch.labels_mask[0].tolist() == [False] * sot + [True] * (len(with_all) - 1 - sot)
    assert batch.labels_mask[1].sum() == len(plain) - 1
    assert batch.labels[0, sot].item() == tokens[0]  # after <|sot|> comes the first target


def test_training_lowers_the_loss_and_writes_a_loadable_student(
    tmp_path, teacher_dir, data, monkeypatch
):
    from whisperforge.models import load_model

    monkeypatch.setenv("WHISPERFORGE_CACHE", str(tmp_path / "cache"))
    path = _config(tmp_path, teacher_dir, data, "run", max_steps=10, eval_every=5, lr=1e-2)
    config = load_config(DistillConfig, path, [f"dev_manifest={data['dev']}",
                                               f"encoder_cache={tmp_path / 'enc'}"])  # fmt: skip
    result = train(config, progress=False)
    out = tmp_path / "run"
    losses = _losses(out)
    assert len(losses) == 10
    assert np.mean([losses[9], losses[10]]) < 0.9 * np.mean([losses[1], losses[2]])
    assert result.data["kept"] == 6 and result.data["rows"] == 8
    assert result.data["dropped"] == {
        "teacher WER >= max_wer": 1,
        "no reference (teacher_wer null)": 1,
    }
    assert result.dev_wer is not None and (out / "curves.png").stat().st_size > 5000
    assert len(list((tmp_path / "enc").rglob("*.safetensors"))) == 6  # each window once
    student = load_model(result.student)
    assert student.model.config.decoder_layers == 2
    assert json.loads((out / "summary.json").read_text())["shared_encoder"] is True


def test_killed_run_resumes_with_the_same_losses(tmp_path, teacher_dir, data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic as the 1-thread subprocess
    try:
        train(load_config(DistillConfig, _config(tmp_path, teacher_dir, data, "whole")),
              progress=False)  # fmt: skip
        path = _config(tmp_path, teacher_dir, data, "killed")
        proc = subprocess.Popen([sys.executable, "-m", "whisperforge.cli", "distill", "train",
                                 str(path), "-q"], env=SUBPROCESS_ENV,
                                stderr=subprocess.PIPE)  # fmt: skip
        wait_for(tmp_path / "killed" / "checkpoints" / "step-00000002", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        assert not (tmp_path / "killed" / "student").exists()  # it died mid-run
        steps = []
        train(load_config(DistillConfig, path), progress=False,
              on_step=lambda step, _: steps.append(step))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert steps[0] > 2 and steps[-1] == 6  # resumed after a checkpoint, not from scratch
    whole, resumed = _losses(tmp_path / "whole"), _losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 7))
    for step in whole:
        assert resumed[step] == pytest.approx(whole[step], abs=1e-6, rel=1e-6), step


@pytest.mark.parametrize("audio_context", ["full", "dynamic"])
def test_two_cpu_processes_with_torchrun(tmp_path, teacher_dir, data, audio_context):
    path = _config(tmp_path, teacher_dir, data, "ddp", max_steps=3, save_every=3)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "whisperforge.cli",
               "distill", "train", str(path), f"dev_manifest={data['dev']}",
               f"audio_context={audio_context}", f"vad={str(audio_context == 'dynamic').lower()}",
               *(["chunk_length=20", "stride_length=2", "condition_on_previous_text=true"]
                 if audio_context == "dynamic" else []),
               "-q"]  # fmt: skip
    done = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert summary["dev_wer"] is not None  # both processes decoded their half of dev
    assert len(_losses(tmp_path / "ddp")) == 3
    assert (tmp_path / "ddp" / "student" / "delta.safetensors").exists()
    assert done.stdout.count("trained 3 steps") == 1  # printed by the main process only
    meta = json.loads((tmp_path / "ddp" / "student" / "student.json").read_text())
    assert meta["config"].get("audio_context", "full") == audio_context  # transcribe reads it
    assert meta["config"].get("vad", False) is (audio_context == "dynamic")  # so does vad
    chunking = (meta["config"].get("chunk_length"), meta["config"].get("stride_length"))
    assert chunking == ((20.0, 2.0) if audio_context == "dynamic" else (None, None))
    assert meta["config"]["languages"] == ["en"]  # the languages of its training rows
    # sequential long-form's prompt: off unless the config turns it on
    assert meta["config"]["condition_on_previous_text"] is (audio_context == "dynamic")


def test_dynamic_context_rows_read_states_of_their_own_length(teacher_dir, data):
    """Each row of a dynamic-context batch gets logits from its own shortened window: the
    same as the student run on that row alone."""
    from whisperforge.recipes.distill import _student_logits, compute_loss, make_batch, setup

    config = load_config(DistillConfig, _config(Path(data["labels"]).parent, teacher_dir, data,
                                                "dyn"), ["audio_context=dynamic"])  # fmt: skip
    run = setup(config)
    epoch, indices = run.order.batch(0)
    batch = make_batch(run, epoch, indices)
    assert batch.margins is not None and len(batch.margins) == len(indices)
    ids = batch.input_ids
    with torch.no_grad():
        hidden = run.encoder(batch.audio)
        logits = _student_logits(run, batch, hidden, ids)
        for row, (audio, margin) in enumerate(zip(batch.audio, batch.margins)):
            n = context_length(run.encoder.samples([audio])[0], margin)
            states = run.encoder.short([audio], n)
            assert states.shape[1] == n // 320 < 1500
            alone = run.student(encoder_outputs=(states,), decoder_input_ids=ids[row : row + 1],
                                use_cache=False).logits  # fmt: skip
            torch.testing.assert_close(logits[row : row + 1], alone, rtol=1e-4, atol=1e-4)
        assert torch.isfinite(compute_loss(run, batch).loss)


def test_audio_context_option_is_checked(tmp_path, teacher_dir, data):
    from whisperforge.training.config import ConfigError

    path = _config(tmp_path, teacher_dir, data, "bad")
    with pytest.raises(ConfigError, match="audio_context must be full or dynamic"):
        load_config(DistillConfig, path, ["audio_context=short"])
    with pytest.raises(ConfigError, match="needs freeze_encoder"):
        load_config(DistillConfig, path, ["audio_context=dynamic", "freeze_encoder=false"])
    with pytest.raises(ConfigError, match="stride_length must be in"):
        load_config(DistillConfig, path, ["chunk_length=20", "stride_length=12"])


def test_reference_manifests_train_on_the_transcripts(tmp_path, teacher_dir, data,
                                                      tiny_en_tokenizer):  # fmt: skip
    """Rows of a plain manifest: the reference text is the target (no timestamps, no WER
    filter), the row before gives the prompt, and a run needs no labels.jsonl at all."""
    from whisperforge.recipes.distill import reference_examples

    manifest = tmp_path / "plain.jsonl"
    rows = [json.loads(line) for line in Path(data["labels"]).read_text().splitlines()]
    plain = [{"audio": str(Path(data["labels"]).parent / r["audio"]), "text": r["text"] + "  ",
              "language": "en"} for r in rows[:4]]  # fmt: skip
    plain.append({"audio": str(tmp_path / "missing.wav"), "text": "Gone.", "language": "en"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in plain))
    examples, report = reference_examples((str(manifest),), tiny_en_tokenizer)
    assert report["rows"] == 5 and report["kept"] == 4 and sum(report["dropped"].values()) == 1
    assert [e.tokens for e in examples] == [tiny_en_tokenizer.encode(" " + r["text"])
                                            for r in rows[:4]]  # fmt: skip
    assert [e.prev_text for e in examples] == [None, *(r["text"] for r in rows[:3])]
    sequence, _ = build_sequence(examples[1], tiny_en_tokenizer, np.random.default_rng(0),
                                 1.0, 0.0, 448)  # fmt: skip
    assert tiny_en_tokenizer.no_timestamps in sequence  # no timestamps to give it
    assert not [t for t in sequence if t >= tiny_en_tokenizer.timestamp_begin]

    timed, _ = reference_examples((str(manifest),), tiny_en_tokenizer, timestamps=True)
    first = tiny_en_tokenizer.timestamp_begin
    import soundfile as sf

    end = first + round(sf.info(plain[0]["audio"]).duration / 0.02)  # from the file header
    assert timed[0].tokens == [first, *examples[0].tokens, end]

    path = _config(tmp_path, teacher_dir, data, "ref", max_steps=2, save_every=2)
    config = load_config(DistillConfig, path, ["train_manifests=[]",
                                               f"reference_manifests=[{manifest}]"])  # fmt: skip
    result = train(config, progress=False)
    assert result.data["kept"] == 4 and len(_losses(tmp_path / "ref")) == 2
    with pytest.raises(Exception, match="reference_manifests"):
        load_config(DistillConfig, path, ["train_manifests=[]"])
    # an empty manifest, or one in another format, leaves nothing to train on: said so
    from whisperforge.recipes.distill import _load_data

    empty, wrong = tmp_path / "empty.jsonl", tmp_path / "wrong.jsonl"
    empty.write_text("")
    wrong.write_text("audio,text\nfile.wav,hello\n")
    for bad in (empty, wrong):
        config = load_config(DistillConfig, path, ["train_manifests=[]",
                                                   f"reference_manifests=[{bad}]"])  # fmt: skip
        with pytest.raises(ValueError, match="no training rows left"):
            _load_data(config, tiny_en_tokenizer, 448)
