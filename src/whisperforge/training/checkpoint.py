"""Atomic training checkpoints for exact resume.

A checkpoint is a folder ``step-00001200/`` under the run's ``checkpoints/`` folder:

- ``model.safetensors``: the trainable tensors (frozen ones are rebuilt from the config),
- ``training.pt``: optimizer and scheduler state dicts (plain tensors and numbers, read back
  with ``torch.load(weights_only=True)``, so no code is unpickled),
- ``rng.pt``: the python / numpy / torch (/ CUDA) generator states of every process,
- ``state.json``: the step, the data position and anything else the recipe records.

It is written into a temporary folder beside its final name and renamed in one step, so a
run killed at any moment leaves only whole checkpoints; the newest ``keep`` are kept. One
process (rank 0) writes; the recipe gathers the other processes' RNG states to it first.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whisperforge.fileio import atomic_folder

MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
_NAME = re.compile(r"^step-(\d{8,})$")
logger = logging.getLogger(__name__)


def capture_rng() -> dict:
    """This process's generator states (python, numpy, torch CPU and every CUDA device)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set this process's generators to a ``capture_rng`` result."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    """A checkpoint on disk; its parts are read on demand."""

    path: Path
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def model_state(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / MODEL_FILE))

    def training_state(self) -> dict[str, Any]:
        return torch.load(self.path / TRAINING_FILE, weights_only=True)

    def rng_state(self, rank: int) -> dict | None:
        """Process ``rank``'s generator states (None if the run had fewer processes)."""
        states = torch.load(self.path / RNG_FILE, weights_only=True)
        return states[rank] if rank < len(states) else None


class Checkpointer:
    """Writes, lists and prunes the checkpoints in ``root``."""

    def __init__(self, root: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep}")
        self.root = Path(root)
        self.keep = keep

    def save(
        self,
        step: int,
        model_state: dict[str, torch.Tensor],
        training_state: dict[str, Any],
        rng_states: list[dict],
        state: dict | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically, then drop all but the newest ``keep``."""
        from safetensors.torch import save_file

        dest = self.root / f"step-{step:08d}"
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        with atomic_folder(dest) as tmp:
            save_file(tensors, str(tmp / MODEL_FILE))
            torch.save(training_state, tmp / TRAINING_FILE)
            torch.save(rng_states, tmp / RNG_FILE)
            (tmp / STATE_FILE).write_text(json.dumps({**(state or {}), "step": step}, indent=2))
        self._prune()
        return dest

    def list(self) -> list[Path]:
        """Whole checkpoints, oldest first (temporary folders of a killed write are ignored)."""
        if not self.root.is_dir():
            return []
        found = [
            p for p in self.root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).exists()
        ]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def latest(self) -> Checkpoint | None:
        paths = self.list()
        if not paths:
            return None
        return Checkpoint(paths[-1], json.loads((paths[-1] / STATE_FILE).read_text()))

    def clear(self) -> None:
        """Remove every checkpoint (a run that starts afresh in a used folder)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _prune(self) -> None:
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".step-*"):  # left by a write that was killed
            shutil.rmtree(stale, ignore_errors=True)


def save_run_state(
    accelerator,
    checkpointer: Checkpointer,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    state: dict,
    extra: dict | None = None,
) -> None:
    """Checkpoint a training loop at ``step`` (every process calls this): every process's
    RNG states are gathered to the main one, which writes ``model_state``, the optimizer and
    scheduler states (plus ``extra`` tensors), and ``state`` with the world size."""
    from accelerate.utils import gather_object

    rng_states = gather_object([capture_rng()])
    if accelerator.is_main_process:
        training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        checkpointer.save(step, model_state, training | (extra or {}), rng_states,
                          {**state, "world_size": accelerator.num_processes})  # fmt: skip
    accelerator.wait_for_everyone()


def restore_run_state(accelerator, checkpoint: Checkpoint, optimizer, scheduler) -> dict:
    """Load a ``save_run_state`` checkpoint's optimizer, scheduler and this process's RNG
    states; returns its training state (for the recipe's ``extra`` entries)."""
    world = checkpoint.state.get("world_size")
    if world != accelerator.num_processes:
        logger.warning("resuming a %s-process run on %d processes: the data order differs",
                       world, accelerator.num_processes)  # fmt: skip
    training = checkpoint.training_state()
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    rng = checkpoint.rng_state(accelerator.process_index)
    if rng is not None:
        restore_rng(rng)
    return training
