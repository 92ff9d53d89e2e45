"""The outer loop the recipes share: micro-batches until ``total_steps`` optimizer steps,
then logging, dev evaluation and checkpoints on the ``TrainingConfig``'s schedule.

A recipe keeps its own ``setup``, ``train_step``, ``evaluate``, ``save_checkpoint`` and
``finish`` and hands them to these functions as plain callables; nothing here knows what a
step computes. ``run`` is the recipe's run object: it has ``accelerator``, ``step``
(optimizer steps done), ``position`` (batches of this process consumed), ``total_steps`` and
``log`` (a ``TrainingLog`` on the main process, else None).

    run_steps(run, step=..., after_step=..., postfix=...)   # the loop
      after_step: mean_over_processes -> row -> evaluate_and_log -> checkpoint_on_schedule
    finish_run(run, evaluate, save_checkpoint, write_outputs)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from whisperforge.training.config import TrainingConfig


def run_steps(
    run,
    step: Callable[[int], tuple[Any, bool]],
    after_step: Callable[[list[Any]], float],
    postfix: Callable[[], dict] = dict,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """Train from ``run.position`` until ``run.step == run.total_steps``.

    ``step(position)`` trains on this process's batch number ``position`` and returns a
    record of it and whether the optimizer stepped; ``after_step(records)`` gets the records
    of the micro-batches of one optimizer step (``run.step`` already counts it) and returns
    its loss. The progress bar shows the loss and ``postfix()``; ``on_step(step, loss)`` is
    called after each optimizer step."""
    from whisperforge.progress import progress_bar

    shown = progress and run.accelerator.is_main_process
    bar = progress_bar(run.total_steps, initial=run.step, unit="step", enabled=shown)
    records: list[Any] = []
    position = run.position
    while run.step < run.total_steps:
        record, stepped = step(position)
        position += 1
        run.position = position
        records.append(record)
        if not stepped:
            continue
        run.step += 1
        loss = after_step(records)
        records = []
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", **postfix())
        if on_step is not None:
            on_step(run.step, loss)
    bar.close()


def mean_over_processes(accelerator, values: list[torch.Tensor]) -> torch.Tensor:
    """The mean of per-micro-batch scalars ``values`` (each ``(k,)``; NaN entries skipped) of
    one optimizer step, averaged over processes -> ``(k,)`` on the CPU."""
    mean = torch.stack(values).nanmean(0).to(accelerator.device)
    return accelerator.reduce(mean, reduction="mean").cpu()


def evaluate_and_log(
    run, config: TrainingConfig, row: dict[str, float], evaluate: Callable[[], float | None]
) -> None:
    """Add the dev WER to ``row`` every ``eval_every`` steps (not at the last: ``finish``
    evaluates), and write ``row`` to the log when it has anything (main process)."""
    if config.eval_every and run.step % config.eval_every == 0 and run.step < run.total_steps:
        wer = evaluate()
        if wer is not None:
            row["dev_wer"] = wer
    if run.log is not None and row:
        run.log.write(run.step, **row)


def checkpoint_on_schedule(
    run, config: TrainingConfig, save_checkpoint: Callable[[], None]
) -> None:
    """Checkpoint every ``save_every`` steps (not at the last: ``finish`` does) and redraw the
    curves; all processes call this."""
    if run.step % config.save_every == 0 and run.step < run.total_steps:
        save_checkpoint()
        if run.log is not None:
            run.log.plot()


def finish_run(
    run,
    evaluate: Callable[[], float | None],
    save_checkpoint: Callable[[], None],
    write_outputs: Callable[[float | None], None],
) -> float | None:
    """The end of a run on every process: final dev WER and checkpoint; on the main process
    ``write_outputs(dev_wer)`` (the trained artifact, the summary), then the final log row,
    curves and log closed. Returns the dev WER (None without a dev set)."""
    acc = run.accelerator
    wer = evaluate()
    save_checkpoint()
    if acc.is_main_process:
        write_outputs(wer)
        if wer is not None:
            run.log.write(run.step, dev_wer=wer)
        run.log.plot()
        run.log.close()
    acc.wait_for_everyone()
    return wer
