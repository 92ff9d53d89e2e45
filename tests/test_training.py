"""Training infrastructure: configs, schedule, checkpoints, data order, logs, encoder cache."""

from __future__ import annotations

import multiprocessing
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from whisperforge.training import runtime
from whisperforge.training.checkpoint import Checkpointer, capture_rng, restore_rng
from whisperforge.training.config import ConfigError, TrainingConfig, load_config
from whisperforge.training.data import ShardedOrder
from whisperforge.training.encoder_cache import EncoderCache, module_fingerprint
from whisperforge.training.log import TrainingLog
from whisperforge.training.schedule import lr_factor, make_scheduler


@dataclass(frozen=True)
class _Recipe:
    name: str = "run"
    weight: float = 1.0
    layers: tuple[int, ...] = (0, 1)
    cache: str | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)


def test_config_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\nweight: 2\ntraining:\n  lr: 1e-3\n  batch_size: 4\n")
    config = load_config(_Recipe, path, ["training.lr=3e-4", "layers=[2, 5]", "cache=null"])
    assert config.name == "base" and config.weight == 2.0 and isinstance(config.weight, float)
    assert config.training.lr == 3e-4 and config.training.batch_size == 4  # file value kept
    assert config.layers == (2, 5) and config.cache is None
    assert config.training.betas == (0.9, 0.999)  # default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["traning.lr=1"], "unknown option 'traning'; did you mean 'training'"),
        (["training.lrr=1"], "unknown option 'training.lrr'; did you mean 'training.lr'"),
        (["training.batch_size=two"], "training.batch_size must be int"),
        (["training.lr_decay=step"], "training.lr_decay must be one of 'linear', 'cosine'"),
        (["training.lr=-1"], "training: lr must be > 0"),
        (["weight"], "not of the form key=value"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(_Recipe, None, overrides)


def test_mixed_precision_no_survives_yaml_and_auto_follows_the_hardware(tmp_path, monkeypatch):
    # YAML 1.1 reads a bare `no` as False; the option still means float32
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  mixed_precision: no\n")
    assert load_config(_Recipe, path, []).training.mixed_precision == "no"
    override = load_config(_Recipe, None, ["training.mixed_precision=no"])
    assert override.training.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        load_config(_Recipe, None, ["training.mixed_precision=false16"])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert not runtime.cpu_has_bf16_matmul() and runtime.resolve_precision("auto") == "no"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.cpu_has_bf16_matmul() and runtime.resolve_precision("auto") == "bf16"
    assert runtime.resolve_precision("no") == "no"  # an explicit choice is kept


def test_schedule_warms_up_then_decays_to_the_final_fraction():
    linear = [lr_factor(s, 100, 10, "linear", 0.1) for s in range(101)]
    assert linear[0] == pytest.approx(1 / 11) and linear[9] == pytest.approx(10 / 11)
    assert linear[10] == 1.0 and linear[100] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(linear[:10], linear[1:11]))  # rising
    assert all(a > b for a, b in zip(linear[10:100], linear[11:]))  # falling
    cosine = [lr_factor(s, 100, 10, "cosine", 0.0) for s in range(101)]
    assert cosine[55] == pytest.approx(0.5) and cosine[100] == pytest.approx(0.0, abs=1e-12)
    assert cosine[20] > linear[20]  # cosine stays high longer
    assert lr_factor(50, 100, 10, "constant") == 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make_scheduler(optimizer, 100, 10, "linear", 0.1)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0)


def _save(checkpointer, step):
    return checkpointer.save(step, {"w": torch.full((3,), float(step))}, {"opt": {"step": step}},
                             [capture_rng()], {"position": step * 2})  # fmt: skip


def test_checkpoint_round_trip_restores_rng_and_keeps_last_k(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ck", keep=2)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    for step in (1, 2, 3):
        _save(checkpointer, step)
    want = (torch.rand(3), np.random.rand(), random.random())  # what follows the last save
    assert [p.name for p in checkpointer.list()] == ["step-00000002", "step-00000003"]
    latest = checkpointer.latest()
    assert latest.step == 3 and latest.state["position"] == 6
    assert torch.equal(latest.model_state()["w"], torch.full((3,), 3.0))
    assert latest.training_state() == {"opt": {"step": 3}}
    restore_rng(latest.rng_state(0))
    assert torch.equal(torch.rand(3), want[0])
    assert (np.random.rand(), random.random()) == want[1:]
    assert latest.rng_state(1) is None


def test_checkpoint_write_that_fails_midway_leaves_the_previous_one(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ck", keep=3)
    _save(checkpointer, 1)
    with pytest.raises(TypeError, match="pickle"):  # fails after the model file is written
        checkpointer.save(2, {"w": torch.ones(2)}, {"bad": (i for i in [])}, [capture_rng()])
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-00000001"]
    (tmp_path / "ck" / ".step-00000003.killed").mkdir()  # what a SIGKILL mid-write leaves
    assert checkpointer.latest().step == 1
    assert [p.name for p in checkpointer.list()] == ["step-00000001"]
    _save(checkpointer, 4)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000001", "step-00000004"]


def test_sharded_order_is_disjoint_complete_and_resumable():
    shards = [ShardedOrder(10, 2, rank, 2, seed=3) for rank in range(2)]
    assert shards[0].batches_per_epoch == 3
    epoch0 = [i for s in shards for p in range(3) for i in s.batch(p)[1]]
    assert sorted(set(epoch0)) == list(range(10))  # every item; 2 repeated to even batches
    assert set(shards[0].batch(0)[1]).isdisjoint(shards[1].batch(0)[1])
    assert shards[0].batch(3)[0] == 1 and shards[0].batch(3)[1] != shards[0].batch(0)[1]
    stream = shards[0].iterate(0)
    first = [next(stream) for _ in range(5)]
    assert list(zip(range(3), shards[0].iterate(2)))[0][1] == first[2]


def test_training_log_csv_resume_and_plot(tmp_path):
    log = TrainingLog(tmp_path, ["loss", "dev_wer"])
    for step in range(1, 6):
        log.write(step, loss=1.0 / step)
    log.write(5, dev_wer=40.0)
    with pytest.raises(ValueError, match="unknown log column"):
        log.write(6, accuracy=1.0)
    log.close()
    resumed = TrainingLog(tmp_path, ["loss", "dev_wer"], resume_step=3)
    assert [r["step"] for r in resumed.read()] == [1.0, 2.0, 3.0]
    resumed.write(4, loss=0.2)
    png = resumed.plot()
    resumed.close()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (tmp_path / "tensorboard").is_dir()


def _fill_cache(folder, fingerprint, audio, value, rounds):
    cache = EncoderCache(folder, fingerprint)
    for _ in range(rounds):
        cache.put(audio, torch.full((4, 3), value))
        got = cache.get(audio)
        assert got is not None and got.shape == (4, 3)


def test_encoder_cache_round_trip_keys_and_two_writers(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF....")
    encoder = torch.nn.Linear(3, 4)
    fingerprint = module_fingerprint(encoder)
    cache = EncoderCache(tmp_path / "cache", fingerprint)
    assert cache.get(audio) is None
    stored = cache.put(audio, torch.tensor([[1 / 3, 2.0]]))
    assert stored.dtype == torch.float16 and torch.equal(cache.get(audio), stored)
    with torch.no_grad():
        encoder.weight[0, 0] += 1
    assert module_fingerprint(encoder) != fingerprint  # changed weights: other entries
    audio.write_bytes(b"RIFF.....")  # the file changed: the old entry no longer applies
    assert cache.get(audio) is None
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_fill_cache, args=(tmp_path / "cache", fingerprint, audio,
                                                       float(v), 30)) for v in (1, 2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert cache.get(audio)[0, 0].item() in (1.0, 2.0)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
