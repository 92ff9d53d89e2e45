"""Speech-tokenizer training and evaluation on a tiny seeded Whisper (d_model 32) with the real
tiny.en vocabulary and a 16-code bottleneck: a falling phase-1 loss, no KL in phase 2, the KL
masked to real labels, mixing by weight, 2 processes killed and resumed exactly, growth ->
training -> merge, and the evaluation report."""

from __future__ import annotations

import json
import os
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

from whisperforge.cli import main
from whisperforge.losses import tokenizer_loss
from whisperforge.recipes.train_tokenizer import (
    TokenizerTrainConfig,
    build_bottleneck,
    target_tokens,
    train,
)
from whisperforge.tokens import SpeechTokenizer, load_bottleneck
from whisperforge.training.config import ConfigError, load_config
from whisperforge.training.mixing import MixedOrder

pytestmark = needs_flite


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_en_tokenizer) -> Path:
    """A random Whisper (d_model 32, 2 + 2 layers) saved as an HF folder. Its weights are
    drawn wider than usual (std 0.5) so that its logits depend on the features it reads and
    a bottleneck has something to learn."""
    return save_tiny_whisper(tmp_path_factory.mktemp("teacher"), tiny_en_tokenizer,
                             decoder_layers=2, init_std=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Two training manifests (4 + 2 clips, two voices) and a 2-row dev manifest."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(6):
        path = synthesize(SENTENCES[i], folder / f"c{i}.wav", "slt" if i % 2 else "kal16")
        rows.append({"audio": path.name, "text": SENTENCES[i], "language": "en",
                     "speaker": "flite", "id": path.stem})  # fmt: skip
    for name, part in (("a", rows[:4]), ("b", rows[4:]), ("dev", rows[:2])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return {name: folder / f"{name}.jsonl" for name in ("a", "b", "dev")}


def _config(tmp: Path, teacher: Path, data: dict, out: str, **options) -> Path:
    training = {
        "output_dir": str(tmp / out),
        "lr": 1e-2,
        "warmup_steps": 1,
        "batch_size": 2,
        "log_every": 1,
        "save_every": 2,
        "eval_every": 0,
        **options.pop("training", {}),
    }
    config = {
        "teacher": str(teacher), "eval_batch_size": 2, "usage_window": 3,
        "train": [{"manifest": str(data["a"]), "weight": 7},
                  {"manifest": str(data["b"]), "weight": 3}],
        "bottleneck": {"codebook_size": 16, "codebook_dim": 8, "n_heads": 2,
                       **options.pop("bottleneck", {})},
        "phase1_steps": 4, "phase2_steps": 2, "training": training, **options,
    }  # fmt: skip
    return write_yaml(tmp / f"{out}.yaml", config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, teacher_dir, data) -> Path:
    """A two-phase run from a random bottleneck: 12 steps with the KL, 4 without; dev WER at
    the end."""
    tmp = tmp_path_factory.mktemp("run")
    path = _config(tmp, teacher_dir, data, "run", phase1_steps=12, phase2_steps=4,
                   dev_manifest=str(data["dev"]), bottleneck={"init": "random"})  # fmt: skip
    train(load_config(TokenizerTrainConfig, path), progress=False)
    return tmp / "run"


def test_phase1_lowers_the_loss_and_writes_a_tokenizer(trained, teacher_dir):
    log = read_log(trained)
    loss = {step: float(row["loss"]) for step, row in log.items()}
    assert sorted(loss) == list(range(1, 17))
    assert np.mean([loss[11], loss[12]]) < 0.9 * np.mean([loss[1], loss[2]])
    for step in range(1, 13):  # codebook usage over the last steps is logged
        assert 0 < float(log[step]["utilisation"]) <= 1
        assert 1 <= float(log[step]["perplexity"]) <= 16
        assert 0 <= int(float(log[step]["dead_codes"])) < 16
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["dev_wer"] is not None and summary["steps"] == 16
    assert (trained / "curves.png").stat().st_size > 5000
    vq, meta = load_bottleneck(trained / "tokenizer")
    assert meta["teacher"] == str(teacher_dir) and vq.config.n_ids == 17
    assert (trained / "phase1-tokenizer" / "speech_tokenizer.json").exists()


def test_checkpoints_load_as_tokenizers(trained, tmp_path):
    """A run's checkpoints are tokenizer sources: the last one is the final tokenizer, and
    `tokens average` / `tokens save` read them (checkpoint averaging)."""
    last, before = (trained / "checkpoints" / f"step-{n:08d}" for n in (16, 14))
    final, meta = load_bottleneck(trained / "tokenizer")
    from_checkpoint, checkpoint_meta = load_bottleneck(last)
    assert checkpoint_meta == json.loads((trained / "tokenizer/speech_tokenizer.json").read_text())
    for key, value in final.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[key], value), key
    assert main(["tokens", "average", str(before), str(last), "--out", str(tmp_path / "mean")]) == 0
    mean, _ = load_bottleneck(tmp_path / "mean")
    earlier, _ = load_bottleneck(before)
    for key in ("mlp.0.weight", "blocks.0.qkv.weight", "ln_post.bias"):
        expected = (earlier.state_dict()[key] + final.state_dict()[key]) / 2
        assert torch.allclose(mean.state_dict()[key], expected, atol=1e-6), key
    assert main(["tokens", "save", str(last), "--out", str(tmp_path / "saved")]) == 0
    assert load_bottleneck(tmp_path / "saved")[1]["teacher"] == meta["teacher"]
    # a checkpoint without the tokenizer's metadata (another recipe's) is a one-line error
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes((last / "model.safetensors").read_bytes())
    (foreign / "state.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(ValueError, match="without speech tokenizer metadata"):
        load_bottleneck(foreign)
    (foreign / "state.json").write_text("not json")
    with pytest.raises(ValueError, match="state.json: not a speech tokenizer config"):
        load_bottleneck(foreign)
    (foreign / "state.json").write_text((last / "state.json").read_text())
    (foreign / "model.safetensors").write_bytes(b"")  # empty
    with pytest.raises(ValueError, match="model.safetensors: unreadable weights"):
        load_bottleneck(foreign)


def test_phase2_has_no_kl_term(trained):
    log = read_log(trained)
    for step in range(1, 13):
        assert log[step]["phase"] == "1" and float(log[step]["kl_loss"]) > 0
    for step in range(13, 17):
        row = log[step]
        assert row["phase"] == "2" and row["kl_loss"] == ""
        parts = float(row["ce_loss"]) + float(row["commitment_loss"])
        assert float(row["loss"]) == pytest.approx(parts, rel=1e-5)


def test_kl_is_masked_to_real_labels_and_ignores_padding():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    commitment = torch.tensor(0.25)
    clean = tokenizer_loss(student, teacher, labels, mask, commitment, kl_weight=0.5)
    noisy_s, noisy_t = student.clone(), teacher.clone()
    noisy_s[~mask], noisy_t[~mask] = 1e4, -1e4  # padding holds anything: never seen
    noisy = tokenizer_loss(noisy_s, noisy_t, labels, mask, commitment, kl_weight=0.5)
    assert noisy.kl.item() == pytest.approx(clean.kl.item(), rel=1e-6)
    rows = [(r, t) for r in range(2) for t in range(5) if mask[r, t]]  # 7 real positions
    per_token = [
        torch.nn.functional.kl_div(
            student[r, t].log_softmax(-1),
            teacher[r, t].log_softmax(-1),
            log_target=True,
            reduction="sum",
        )  # fmt: skip
        for r, t in rows
    ]
    assert clean.kl.item() == pytest.approx(torch.stack(per_token).mean().item(), rel=1e-5)
    assert clean.loss.item() == pytest.approx(clean.ce.item() + 0.25 + 0.5 * clean.kl.item())
    phase2 = tokenizer_loss(student, None, labels, mask, commitment)
    assert phase2.kl is None and phase2.loss.item() == pytest.approx(phase2.ce.item() + 0.25)


def test_mixing_follows_the_ratio_and_is_deterministic():
    order = MixedOrder((5, 3), (7.0, 3.0), batch_size=4, rank=0, world_size=2, seed=3)
    other = MixedOrder((5, 3), (7.0, 3.0), batch_size=4, rank=1, world_size=2, seed=3)
    draws = [d for p in range(1000) for d in order.batch(p) + other.batch(p)]
    sources = np.array([s for s, _ in draws])
    assert (sources == 0).mean() == pytest.approx(0.7, abs=0.005)
    assert (sources[:1000] == 0).sum() == 700  # exact over every block of 1000 draws
    first = [i for s, i in draws if s == 0][:10]  # a permutation of source 0's rows, twice
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    again = MixedOrder((5, 3), (7.0, 3.0), batch_size=4, rank=0, world_size=2, seed=3)
    assert [again.batch(p) for p in (0, 17, 250)] == [order.batch(p) for p in (0, 17, 250)]
    reseeded = MixedOrder((5, 3), (7.0, 3.0), batch_size=4, rank=0, world_size=2, seed=4)
    assert [reseeded.batch(p) for p in range(5)] != [order.batch(p) for p in range(5)]


def test_targets_are_the_transcribe_prompt_and_capped(tiny_en_tokenizer):
    tokenizer = tiny_en_tokenizer
    seq = target_tokens(tokenizer, "Hello there.", "en", 448)
    assert seq == [tokenizer.sot, tokenizer.no_timestamps, *tokenizer.encode(" Hello there."),
                   tokenizer.eot]  # fmt: skip
    capped = target_tokens(tokenizer, "word " * 600, "en", 448)
    assert len(capped) == 449 and capped[-1] != tokenizer.eot  # no false end of text


def _torchrun(path: Path, **popen) -> subprocess.Popen:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "whisperforge.cli",
               "tokenizer", "train", str(path), "-q"]  # fmt: skip
    return subprocess.Popen(command, env=SUBPROCESS_ENV, start_new_session=True, **popen)


def test_two_processes_killed_after_a_checkpoint_resume_exactly(tmp_path, teacher_dir, data):
    # both refine the codebook at the end: each process encodes half the rows
    whole = _torchrun(_config(tmp_path, teacher_dir, data, "whole", refine_codebook=1),
                      stderr=subprocess.PIPE)  # fmt: skip
    path = _config(tmp_path, teacher_dir, data, "killed", refine_codebook=1)
    killed = _torchrun(path, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "killed" / "checkpoints" / "step-00000002", killed, timeout=120)
    os.killpg(killed.pid, signal.SIGKILL)  # torchrun and both workers
    killed.wait(30)
    assert not (tmp_path / "killed" / "tokenizer").exists()  # it died mid-run
    assert whole.wait(180) == 0, whole.stderr.read().decode()[-3000:]
    resumed = _torchrun(path, stderr=subprocess.PIPE)
    assert resumed.wait(180) == 0, resumed.stderr.read().decode()[-3000:]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6
    a, b = read_log(tmp_path / "whole"), read_log(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        for column in ("loss", "ce_loss", "commitment_loss", "perplexity"):
            assert float(b[step][column]) == pytest.approx(float(a[step][column]), rel=1e-6)
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["refinement"] == whole_summary["refinement"]  # refined once, resumed or not
    torch.testing.assert_close(load_bottleneck(tmp_path / "killed" / "tokenizer")[0].vq.codebook,
                               load_bottleneck(tmp_path / "whole" / "tokenizer")[0].vq.codebook,
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_grow_train_merge_keeps_the_layout(tmp_path, trained, teacher_dir, data, capsys):
    path = _config(tmp_path, teacher_dir, data, "grown", phase1_steps=2, phase2_steps=1,
                   init_from=str(trained / "tokenizer"),
                   bottleneck={"codebook_size": 64})  # fmt: skip
    result = train(load_config(TokenizerTrainConfig, path), progress=False)
    assert result.data["bottleneck"] == {"init": str(trained / "tokenizer"), "from_codes": 16,
                                         "grown_to": 64}  # fmt: skip
    merged = tmp_path / "merged"
    assert main(["tokens", "merge", str(result.tokenizer), str(trained / "tokenizer"),
                 "--out", str(merged)]) == 0  # fmt: skip
    meta = json.loads((merged / "speech_tokenizer.json").read_text())
    parts = {p["name"]: (p["start"], p["size"]) for p in meta["codebook"]["parts"]}
    assert parts == {"codes": (0, 64), "mask": (64, 1), "merged": (65, 16)}
    ids = SpeechTokenizer.load(merged).tokenize(data["a"].parent / "c0.wav")
    assert ids and all(0 <= i < 81 and i != 64 for i in ids)


def test_continuing_applies_the_quantizer_settings_given(tmp_path, trained, teacher_dir, data):
    source = trained / "tokenizer"
    kept = _config(tmp_path, teacher_dir, data, "kept", phase1_steps=1, phase2_steps=0,
                   init_from=str(source))  # fmt: skip
    result = train(load_config(TokenizerTrainConfig, kept), progress=False)
    assert "quantizer" not in result.data["bottleneck"]
    assert load_bottleneck(result.tokenizer)[0].config.threshold_ema_dead_code == 2.0
    changed = _config(tmp_path, teacher_dir, data, "changed", phase1_steps=1, phase2_steps=0,
                      init_from=str(source),
                      bottleneck={"threshold_ema_dead_code": 0.05, "ema_decay": 0.9})  # fmt: skip
    result = train(load_config(TokenizerTrainConfig, changed), progress=False)
    assert result.data["bottleneck"]["quantizer"] == {"ema_decay": 0.9,
                                                      "threshold_ema_dead_code": 0.05}  # fmt: skip
    config = load_bottleneck(result.tokenizer)[0].config
    assert (config.threshold_ema_dead_code, config.ema_decay) == (0.05, 0.9)


def test_continuing_deeper_starts_where_the_source_was(tmp_path, trained, teacher_dir, data):
    from transformers import WhisperModel

    source = trained / "tokenizer"
    deeper = _config(tmp_path, teacher_dir, data, "deeper", phase1_steps=1, phase2_steps=0,
                     init_from=str(source), bottleneck={"n_layers": 2})  # fmt: skip
    config = load_config(TokenizerTrainConfig, deeper)
    vq, origin = build_bottleneck(config, WhisperModel.from_pretrained(teacher_dir).encoder)
    assert origin["deepened"] == {"from_layers": 1, "to_layers": 2}
    # the new block starts as the identity: same features and codes as the source
    before = load_bottleneck(source)[0].eval()
    shape = (1, before.config.n_audio_ctx, before.config.d_model)
    states = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    a, b = before(states), vq.eval()(states)
    torch.testing.assert_close(b.features, a.features)
    assert torch.equal(b.codes, a.codes)
    result = train(config, progress=False)
    grown = load_bottleneck(result.tokenizer)[0]
    assert grown.config.n_layers == 2
    assert grown.blocks[1].out.weight.abs().sum() > 0  # it trained
    shallower = _config(tmp_path, teacher_dir, data, "shallower", phase1_steps=1,
                        phase2_steps=0, init_from=str(result.tokenizer),
                        bottleneck={"n_layers": 1})  # fmt: skip
    with pytest.raises(ValueError, match="n_layers 1 is below init_from's 2; blocks only grow"):
        train(load_config(TokenizerTrainConfig, shallower), progress=False)


def test_refining_at_the_end_is_tokens_refine_of_the_run(tmp_path, trained, teacher_dir, data,
                                                          capsys):  # fmt: skip
    from whisperforge.audio import audio_samples
    from whisperforge.models.vq import tokens_for_samples

    runs = {}
    # a source listed twice (to weigh it up) still counts each of its files once
    train_mix = [{"manifest": str(data[k]), "weight": w} for k, w in (("a", 5), ("b", 3), ("a", 2))]
    for name, refine in (("plain", 0), ("refined", 1)):
        path = _config(tmp_path, teacher_dir, data, name, phase1_steps=2, phase2_steps=0,
                       init_from=str(trained / "tokenizer"), refine_codebook=refine,
                       train=train_mix)  # fmt: skip
        runs[name] = train(load_config(TokenizerTrainConfig, path), progress=False).tokenizer
    summary = json.loads((tmp_path / "refined" / "summary.json").read_text())
    refinement = summary["refinement"]
    files = {r["audio"] for m in (data["a"], data["b"]) for r in map(json.loads, m.open())}
    folder = data["a"].parent
    assert refinement["vectors"] == sum(tokens_for_samples(audio_samples(folder / f))
                                        for f in files)  # fmt: skip
    assert refinement["error_after"] < refinement["error_before"]
    assert "refinement" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    # the run's refinement is what `tokens refine` does to the unrefined run's tokenizer
    out = tmp_path / "by-command"
    code = main(["tokens", "refine", str(runs["plain"]), "--manifest", str(data["a"]),
                 str(data["b"]), "--out", str(out), "--dtype", "float32", "-q"])  # fmt: skip
    assert code == 0 and f"{refinement['vectors']} vectors" in capsys.readouterr().out
    plain, refined, command = (load_bottleneck(f)[0] for f in (runs["plain"], runs["refined"], out))
    torch.testing.assert_close(refined.vq.codebook, command.vq.codebook)
    assert not torch.allclose(refined.vq.codebook, plain.vq.codebook)
    torch.testing.assert_close(refined.mlp[0].weight, plain.mlp[0].weight)
    with pytest.raises(ConfigError, match="refine_codebook must be >= 0"):
        load_config(TokenizerTrainConfig, _config(tmp_path, teacher_dir, data, "bad",
                                                  refine_codebook=-1))  # fmt: skip


def test_frozen_parts_stay_as_they_were(tmp_path, trained, teacher_dir, data):
    source = trained / "tokenizer"
    path = _config(tmp_path, teacher_dir, data, "frozen", phase1_steps=2, phase2_steps=0,
                   init_from=str(source), freeze=["after_codes"])  # fmt: skip
    result = train(load_config(TokenizerTrainConfig, path), progress=False)
    assert result.data["bottleneck"]["frozen"]["parts"] == ["after_codes"]
    before, after = load_bottleneck(source)[0], load_bottleneck(result.tokenizer)[0]
    torch.testing.assert_close(after.blocks[0].qkv.weight, before.blocks[0].qkv.weight)
    torch.testing.assert_close(after.positions.weight, before.positions.weight)
    assert not torch.allclose(after.mlp[0].weight, before.mlp[0].weight)  # the other side trains
    for parts in (["after_codes", "before_codes"], ["decoder"]):
        with pytest.raises(ConfigError, match="freeze takes at most one of"):
            load_config(TokenizerTrainConfig, _config(tmp_path, teacher_dir, data, "bad",
                                                      freeze=parts))  # fmt: skip


def test_evaluate_reports_both_wers_bitrates_and_usage(trained, data, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    tokenizer = str(trained / "tokenizer")
    args = ["--manifest", str(data["a"]), "--model", tokenizer, "--report", str(report_path)]
    assert main(["tokenizer", "evaluate", *args, "--limit", "3"]) == 0
    report = json.loads(report_path.read_text())
    assert report["utterances"] == 3 and len(report["per_utterance"]) == 3
    assert report["wer"] > 0 and report["teacher"]["wer"] > 0
    assert report["wer_ratio"] == pytest.approx(report["wer"] / report["teacher"]["wer"])
    assert report["bitrate"]["nominal_bps"] == pytest.approx(25 * 4)  # log2(16) bits
    assert 0 < report["bitrate"]["entropy_bps"] <= 100
    assert report["tokens_per_second"] == pytest.approx(25, abs=0.5)
    assert 0 < report["codebook"]["utilisation"] <= 1 and report["codebook"]["n_codes"] == 16
    row = report["per_utterance"][0]
    assert {"hypothesis", "teacher_hypothesis", "teacher_wer", "n_tokens"} <= set(row)
    assert "from tokens" in capsys.readouterr().out

    # the teacher's side taken from that report: the same scores, the teacher not decoded
    again_path = tmp_path / "again.json"
    reuse = ["--teacher-from", str(report_path), "--limit", "3"]
    assert main(["tokenizer", "evaluate", *args[:4], "--report", str(again_path), *reuse]) == 0
    again = json.loads(again_path.read_text())
    assert again["teacher_from"] == str(report_path)
    assert again["teacher"] == report["teacher"] and again["wer"] == report["wer"]
    assert [r["teacher_hypothesis"] for r in again["per_utterance"]] == [
        r["teacher_hypothesis"] for r in report["per_utterance"]
    ]
    assert again["timing"]["teacher_throughput"] is None
    assert f"teacher from {report_path}" in capsys.readouterr().out
    # ... and refused where the report cannot stand for this run
    assert main(["tokenizer", "evaluate", *args[:4], *reuse, "--beam-size", "2"]) == 2
    assert "other options (beam_size)" in capsys.readouterr().err
    assert main(["tokenizer", "evaluate", *args[:4], *reuse, "--timestamps"]) == 2
    assert "other options (without_timestamps)" in capsys.readouterr().err
    assert main(["tokenizer", "evaluate", *args[:4], *reuse[:2], "--limit", "4"]) == 2
    assert "is not in the report" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{cut off")
    broken = ["--teacher-from", str(tmp_path / "broken.json")]
    assert main(["tokenizer", "evaluate", *args[:4], *broken]) == 2
    assert "broken.json: not a JSON report" in capsys.readouterr().err
    assert report["encoder_dtype"] == "float32"
    from whisperforge.models.inference import cpu_has_bf16_matmul

    assert report["vocab_screen"] is cpu_has_bf16_matmul()
    bf16 = ["--encoder-dtype", "bfloat16"]
    assert main(["tokenizer", "evaluate", *args[:4], *reuse, *bf16]) == 2
    assert "encoder ran in float32, this one runs in bfloat16" in capsys.readouterr().err
    bf16_path = tmp_path / "bf16.json"
    assert main(["tokenizer", "evaluate", *args[:4], "--report", str(bf16_path), "--limit", "3",
                 *bf16]) == 0  # fmt: skip
    assert "bfloat16 encoder" in capsys.readouterr().out
    assert json.loads(bf16_path.read_text())["encoder_dtype"] == "bfloat16"


def test_a_killed_tokenizer_evaluation_resumes_from_its_journal(trained, data, tmp_path):
    from whisperforge.recipes.evaluate import usable_items
    from whisperforge.recipes.evaluate_tokens import evaluate_tokens

    tok = SpeechTokenizer.load(trained / "tokenizer")
    six = data["a"].parent / "six.jsonl"  # both manifests: 6 clips
    six.write_text(data["a"].read_text() + data["b"].read_text())
    items, _ = usable_items(six)
    assert len(items) == 6
    whole = evaluate_tokens(tok, items, batch_size=2)
    journal = tmp_path / "r.json.partial.jsonl"
    calls = []

    def kill_at_the_second_batch(seconds):
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_tokens(tok, items, batch_size=2, progress=kill_at_the_second_batch,
                        journal=journal)  # fmt: skip
    # one window an item: after two batches the first three are finished (the fourth may
    # have more windows to come)
    assert len(journal.read_text().splitlines()) == 1 + 3
    resumed = evaluate_tokens(tok, items, batch_size=2, journal=journal)
    assert resumed["resumed"] == 3 and whole["resumed"] == 0
    for key in ("wer", "cer", "tokens", "codebook", "bitrate", "teacher"):
        assert resumed[key] == whole[key], key
    assert [r["hypothesis"] for r in resumed["per_utterance"]] == [
        r["hypothesis"] for r in whole["per_utterance"]
    ]
    # another run (other options) starts the journal afresh
    again = evaluate_tokens(tok, items, batch_size=3, journal=journal)
    assert again["resumed"] == 0 and again["wer"] == whole["wer"]
    # the command removes it once the report is written
    report = tmp_path / "r.json"
    args = ["tokenizer", "evaluate", "--manifest", str(six), "--model",
            str(trained / "tokenizer"), "--batch-size", "2", "-q"]  # fmt: skip
    journal.unlink()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        evaluate_tokens(tok, items, batch_size=2, progress=kill_at_the_second_batch,
                        journal=journal, name=str(trained / "tokenizer"))  # fmt: skip
    assert main([*args, "--report", str(report)]) == 0
    written = json.loads(report.read_text())
    assert written["resumed"] == 3 and written["wer"] == whole["wer"] and not journal.exists()


def test_evaluate_with_vad_reads_only_the_speech(trained, data, tmp_path, capsys):
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, load_audio
    from whisperforge.vad import speech_map

    rows = [json.loads(line) for line in data["a"].read_text().splitlines()][:2]
    clip = load_audio(data["a"].parent / rows[0]["audio"])
    padded = np.concatenate([np.zeros(8 * SAMPLE_RATE, np.float32), clip])
    sf.write(tmp_path / "padded.wav", padded, SAMPLE_RATE)
    sf.write(tmp_path / "quiet.wav", np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({**rows[0], "audio": str(tmp_path / "padded.wav"), "id": "padded"}) + "\n"
        + json.dumps({**rows[1], "audio": str(tmp_path / "quiet.wav"), "id": "quiet"}) + "\n"
    )  # fmt: skip
    report_path = tmp_path / "vad.json"
    args = ["tokenizer", "evaluate", "--manifest", str(manifest), "--model",
            str(trained / "tokenizer"), "--language", "en", "-q"]  # fmt: skip
    assert main([*args, "--vad", "--report", str(report_path)]) == 0
    assert "s of speech kept" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    kept = speech_map(padded).duration_after_vad
    assert 0 < kept < len(padded) / SAMPLE_RATE - 6
    assert report["duration_after_vad"] == pytest.approx(kept, abs=1e-3)
    assert report["options"]["vad"] == {"threshold": 0.5, "min_silence": 2.0, "speech_pad": 0.4}
    assert report["audio_seconds"] == pytest.approx(len(padded) / SAMPLE_RATE + 3, abs=1e-3)
    by_id = {r["id"]: r for r in report["per_utterance"]}
    assert by_id["padded"]["n_tokens"] == -(-round(kept * SAMPLE_RATE) // 640)
    # no speech found: nothing decoded on either side, every word of the reference missed
    assert by_id["quiet"]["n_tokens"] == 0 and by_id["quiet"]["hypothesis"] == ""
    assert by_id["quiet"]["teacher_hypothesis"] == "" and by_id["quiet"]["wer"] == 1.0
    # a report made with VAD does not stand in for a run without it, nor the other way round
    assert main([*args, "--teacher-from", str(report_path)]) == 2
    assert "other options (vad)" in capsys.readouterr().err
    assert main([*args, "--vad", "--teacher-from", str(report_path)]) == 0
    # a tokenizer whose config asks for VAD is evaluated with it unless told otherwise
    flagged = str(tmp_path / "flagged")
    assert main(["tokens", "save", str(trained / "tokenizer"), "--out", flagged, "--vad"]) == 0
    on = [a if a != str(trained / "tokenizer") else flagged for a in args]
    assert main([*on, "--teacher-from", str(report_path)]) == 0
    assert main([*on, "--no-vad", "--teacher-from", str(report_path)]) == 2


def test_evaluate_reads_a_long_recording_as_a_user_would(trained, data, tmp_path):
    """Over 30 s: the tokens through ``transcribe_tokens``' overlapping windows, the teacher
    through Whisper's own chunked long-form, not 30 s windows cut anywhere."""
    import soundfile as sf

    from whisperforge.audio import SAMPLE_RATE, load_audio
    from whisperforge.decoding import DecodingOptions
    from whisperforge.recipes.evaluate import usable_items
    from whisperforge.recipes.evaluate_tokens import evaluate_tokens, teacher_texts
    from whisperforge.transcribe import Transcriber

    lines = data["a"].read_text().splitlines() + data["b"].read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    clips = [load_audio(data["a"].parent / r["audio"]) for r in rows * 2]
    audio = np.concatenate([x for clip in clips for x in (clip, pause)])
    assert len(audio) > 31 * SAMPLE_RATE
    sf.write(tmp_path / "long.wav", audio, SAMPLE_RATE)
    manifest = tmp_path / "m.jsonl"
    text = " ".join(r["text"] for r in rows * 2)
    manifest.write_text(
        json.dumps({"audio": str(tmp_path / "long.wav"), "text": text, "id": "long"}) + "\n"
        + json.dumps({**rows[0], "audio": str(data["a"].parent / rows[0]["audio"])}) + "\n"
    )  # fmt: skip
    items, _ = usable_items(manifest)
    tok = SpeechTokenizer.load(trained / "tokenizer")
    seen = []
    report = evaluate_tokens(tok, items, language="en", progress=seen.append)
    seconds = (len(audio) + len(load_audio(data["a"].parent / rows[0]["audio"]))) / SAMPLE_RATE
    assert sum(seen) == pytest.approx(seconds, abs=1e-3)
    assert report["options"]["long_form"] == "chunked"
    long_row, clip_row = report["per_utterance"]
    ids = tok.tokenize(audio, vad=False)
    assert long_row["n_tokens"] == len(ids) and len(tok.token_windows(len(ids))) == 4  # 56 s
    assert long_row["hypothesis"] == tok.transcribe_tokens([ids], language="en")[0]
    whisper = next(iter(Transcriber(tok.whisper).transcribe_batch([audio], language="en",
                                                                  vad=False)))  # fmt: skip
    assert long_row["teacher_hypothesis"] == whisper.text  # (a random teacher: any text)
    # a clip of one window is still decoded from the same encoder states on both paths
    assert clip_row["n_tokens"] == len(tok.tokenize(data["a"].parent / rows[0]["audio"]))
    # a report from before long recordings were read this way cannot stand in for one now
    old = {**report, "options": {k: v for k, v in report["options"].items() if k != "long_form"}}
    with pytest.raises(ValueError, match=r"other options \(long_form\)"):
        teacher_texts(old, items, tok, DecodingOptions(without_timestamps=True), "en")
    assert teacher_texts(report, items, tok, DecodingOptions(without_timestamps=True), "en")


def test_clear_errors(tmp_path, trained, data, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    tokenizer = str(trained / "tokenizer")
    assert main(["tokenizer", "evaluate", "--manifest", str(broken), "--model", tokenizer]) == 2
    assert "no usable utterances" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jsonl")
    assert main(["tokenizer", "evaluate", "--manifest", missing, "--model", tokenizer]) == 2
    assert "could not load" in capsys.readouterr().err
    default = ["tokenizer", "evaluate", "--manifest", str(data["a"]), "--limit", "1", "-q"]
    assert main(default) == 0  # the shipped whisper-vq-base
    assert "whisper-vq-base" in capsys.readouterr().out
    nowhere = str(tmp_path / "nowhere")
    assert main(["tokenizer", "evaluate", "--manifest", str(data["a"]), "--model", nowhere]) == 2
    assert "no speech tokenizer at" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="set phase1_steps and phase2_steps"):
        load_config(TokenizerTrainConfig, None, ["train=[{manifest: a.jsonl}]",
                                                 "training.max_steps=10"])  # fmt: skip
    with pytest.raises(ConfigError, match="unknown option 'phase_steps'; did you mean"):
        load_config(TokenizerTrainConfig, None, ["train=[{manifest: a.jsonl}]", "phase_steps=1"])


def test_feature_matching_adds_a_positive_term(tmp_path, teacher_dir, data):
    path = _config(tmp_path, teacher_dir, data, "feat", phase1_steps=1, phase2_steps=2,
                   feature_weight=0.5)  # fmt: skip
    train(load_config(TokenizerTrainConfig, path), progress=False)
    for step in (2, 3):  # phase 2: loss = CE + commitment + 0.5 * MSE(features, encoder)
        row = read_log(tmp_path / "feat")[step]
        assert float(row["loss"]) > float(row["ce_loss"]) + float(row["commitment_loss"]) + 1e-4
    with pytest.raises(ConfigError, match="feature_weight"):
        load_config(TokenizerTrainConfig, path, ["feature_weight=-1"])


def test_code_swap_changes_what_the_decoder_reads_not_the_codes(tmp_path, teacher_dir, data):
    rows = {}
    for name, swap in (("plain", 0.0), ("swap", 0.5)):
        path = _config(tmp_path, teacher_dir, data, name, phase1_steps=0, phase2_steps=1,
                       code_swap=swap)  # fmt: skip
        train(load_config(TokenizerTrainConfig, path), progress=False)
        rows[name] = read_log(tmp_path / name)[1]
    # the same codes (usage) from the same start; half the tokens read as another code
    for key in ("utilisation", "perplexity", "commitment_loss"):
        assert rows["swap"][key] == rows["plain"][key], key
    assert float(rows["swap"]["ce_loss"]) != pytest.approx(float(rows["plain"]["ce_loss"]))
    with pytest.raises(ConfigError, match="code_swap"):
        load_config(TokenizerTrainConfig, path, ["code_swap=1"])


def test_new_bottleneck_output_norm_starts_as_the_encoders(teacher_dir, data, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from whisperforge.recipes.train_tokenizer import build_bottleneck

    config = load_config(TokenizerTrainConfig, _config(tmp_path, teacher_dir, data, "init"))
    encoder = WhisperForConditionalGeneration.from_pretrained(teacher_dir).model.encoder
    vq, how = build_bottleneck(config, encoder)
    assert "encoder" in how["init"]
    torch.testing.assert_close(vq.ln_post.weight, encoder.layer_norm.weight)
    torch.testing.assert_close(vq.ln_post.bias, encoder.layer_norm.bias)


def test_warns_when_the_dead_code_threshold_is_too_high_for_the_batch(
    tmp_path, teacher_dir, data, caplog
):
    from whisperforge.models.vq import tokens_for_samples
    from whisperforge.recipes.train_tokenizer import setup

    path = _config(tmp_path, teacher_dir, data, "thr")
    run = setup(load_config(TokenizerTrainConfig, path))
    a, b = ([tokens_for_samples(e.samples) for e in source] for source in run.examples)
    mean = 0.7 * sum(a) / len(a) + 0.3 * sum(b) / len(b)  # windows drawn 7 : 3
    expected = mean * 2 / 16  # batch 2, one process, 16 codes
    assert run.report["tokens_per_code_per_step"] == pytest.approx(expected, abs=1e-3)
    assert "threshold_ema_dead_code" not in caplog.text  # 2 is well below ~expected / 2
    high = expected  # an evenly used code would sit at the threshold
    with caplog.at_level("WARNING"):
        setup(
            load_config(
                TokenizerTrainConfig,
                path,
                [
                    f"bottleneck.threshold_ema_dead_code={high}",
                    f"training.output_dir={tmp_path}/thr2",
                ],
            )
        )
    assert "threshold_ema_dead_code" in caplog.text and "re-seeded" in caplog.text


def test_data_init_starts_below_a_random_bottleneck(tmp_path, teacher_dir, data, trained):
    path = _config(tmp_path, teacher_dir, data, "fit", phase1_steps=2, phase2_steps=0)
    result = train(load_config(TokenizerTrainConfig, path), progress=False)
    fitted = read_log(tmp_path / "fit")
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["data"]["bottleneck"]["init"].startswith("data")
    assert summary["data"]["bottleneck"]["fit"]["windows"] == 6  # every training clip
    assert result.steps == 2
    random = read_log(trained)
    for step in (1, 2):  # same data order and seed; only the start differs
        assert float(fitted[step]["ce_loss"]) < float(random[step]["ce_loss"])


def test_encoder_cache_command_fills_what_the_recipes_read(
    tmp_path, teacher_dir, data, capsys, monkeypatch
):
    from whisperforge.audio import load_audio
    from whisperforge.models.loading import load_model
    from whisperforge.training.encoder_cache import EncoderCache, SharedEncoder, cache_fingerprint

    broken = data["a"].parent / "broken.wav"
    broken.write_bytes(b"RIFF but not audio")
    rows = [json.loads(line) for line in data["a"].read_text().splitlines()]
    rows = [r | {"audio": str(data["a"].parent / r["audio"])} for r in rows]
    rows.insert(1, {"audio": str(broken), "text": "lost", "id": "broken"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache_dir = tmp_path / "enc"
    command = ["encoder-cache", str(manifest), str(data["b"]), "--model", str(teacher_dir),
               "--cache", str(cache_dir), "--batch-size", "2", "-q"]  # fmt: skip

    # the second of two processes (torchrun's RANK 1 of 2) takes every other file
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 1  # its share holds the broken file
    out, err = capsys.readouterr()
    assert "process 2/2: 3 files" in out and " 2 encoded" in out and "1 failed" in out
    assert "broken.wav" in err
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(command) == 1
    out, _ = capsys.readouterr()
    assert "7 files" in out and "2 already cached, 4 encoded" in out and "1 failed" in out

    # the recipes' cache key finds every good file: the encoder does not run again
    teacher = load_model(str(teacher_dir))
    cache = EncoderCache(cache_dir, cache_fingerprint(teacher))
    encoder = SharedEncoder(teacher.model.model.encoder, teacher.n_mels, "cpu", cache)
    good = [r["audio"] for r in rows if r["id"] != "broken"]
    fresh = encoder.encode(encoder.mel([load_audio(a) for a in good]))
    monkeypatch.setattr(encoder, "encode", lambda _: pytest.fail("encoder ran on a cached file"))
    states = encoder(good)
    assert torch.equal(states, fresh.half().float())
    assert not list(cache_dir.rglob("*.tmp"))


def test_a_dead_code_count_is_refused_where_the_library_reads_a_ratio():
    from whisperforge.models.vq import VQConfig, WhisperVQ
    from whisperforge.recipes.train_tokenizer import _check_quantizer_library

    vq = WhisperVQ(VQConfig(d_model=32, n_heads=2, codebook_size=16, codebook_dim=8))
    _check_quantizer_library(vq)  # the pinned library keeps the count
    del vq.vq._codebook.threshold_ema_dead_code  # as vector-quantize-pytorch 1.34 builds it
    with pytest.raises(RuntimeError, match="vector-quantize-pytorch<1.33"):
        _check_quantizer_library(vq)
    off = WhisperVQ(VQConfig(d_model=32, n_heads=2, codebook_size=16, codebook_dim=8,
                             threshold_ema_dead_code=0.0))  # fmt: skip
    del off.vq._codebook.threshold_ema_dead_code
    _check_quantizer_library(off)  # no re-seeding: nothing to misread
