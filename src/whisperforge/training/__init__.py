"""Generic training infrastructure shared by the recipes (distillation, speech tokenizer).

- ``config``: YAML -> frozen dataclass, ``key=value`` dotted overrides, one validation place.
- ``schedule``: linear warm-up, then linear / cosine / no decay to a final fraction.
- ``checkpoint``: atomic checkpoints (trainable state, optimizer, scheduler, step, RNG, data
  position) for exact resume; the last K kept.
- ``data``: a seeded, sharded, resumable order over a dataset's indices.
- ``log``: CSV + TensorBoard scalars and a PNG of the curves.
- ``encoder_cache``: frozen-encoder outputs on disk, computed once per utterance.
- ``loop``: the outer step loop (log / evaluate / checkpoint on schedule, finish) that the
  recipes drive with their own step, evaluate and save functions.
"""

from whisperforge.training.config import ConfigError, TrainingConfig, load_config
from whisperforge.training.schedule import lr_factor, make_scheduler

__all__ = ["ConfigError", "TrainingConfig", "load_config", "lr_factor", "make_scheduler"]
