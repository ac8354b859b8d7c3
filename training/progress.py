"""Rich progress for Keras fit: a bar within each epoch and one summary line per epoch."""

from __future__ import annotations

import time


def EpochProgress(epochs: int, steps: int, best: float = 0.0):  # noqa: N802 - builds a Keras callback class lazily
    """A Keras callback that shows progress with rich and records each epoch's seconds in the logs;
    `best`: the best validation accuracy of the epochs before a resume."""
    import keras
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class _EpochProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.console = Console(stderr=True)
            self.best = best

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()
            self.bar = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                console=self.console, transient=True, disable=not self.console.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task("train", total=steps, info="")

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            self.bar.update(self.task, completed=batch + 1,
                            info=f"loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}")

        def on_epoch_end(self, epoch, logs=None):
            self.bar.stop()
            logs = logs if logs is not None else {}
            logs["seconds"] = round(time.time() - self.t0, 1)
            val = logs.get("val_accuracy", 0.0)
            mark = " [green]best[/]" if val > self.best else ""
            self.best = max(self.best, val)
            self.console.print(
                f"epoch {epoch + 1:3d}/{epochs}  loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}"
                f"  val_loss {logs.get('val_loss', 0):.4f}  val_acc {val:.4f}  {logs['seconds']:.0f}s{mark}",
                highlight=False, soft_wrap=True)

    return _EpochProgress()
