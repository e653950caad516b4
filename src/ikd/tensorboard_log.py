"""Live TensorBoard logging of a campaign: one TensorBoard run per node under RUN_DIR/tb/<node>.

Optional: needs the `tensorboard` package (`pip install -e '.[tensorboard]'`), imported only when
asked for, so ikd itself does not depend on it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ikd.errors import ConfigError
from ikd.lineage import TB_DIR, check_node_id
from ikd.train import EpochRecord

if TYPE_CHECKING:  # the optional package, imported at run time only when asked for
    from torch.utils.tensorboard import SummaryWriter


class TensorBoardLog:
    """An `on_epoch` callback for ikd.train.train_models: writes a node's loss terms, train and
    validation accuracy, validation loss, learning rate and throughput after each epoch."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log: 'tensorboard' needs the tensorboard package; "
                "pip install tensorboard (or, in ikd's checkout, pip install -e '.[tensorboard]') and rerun"
            ) from None
        self._writer_class = SummaryWriter
        self.root = Path(run_dir) / TB_DIR
        self._writers: dict[str, SummaryWriter] = {}
        self._steps: dict[str, int] = {}

    def __call__(self, node_id: str, record: EpochRecord) -> None:
        writer = self._writers.get(node_id)
        if writer is None:
            directory = self.root / check_node_id(node_id)
            # Its first record in this process is its first epoch (a resumed run replays the epochs it
            # resumes after): the curves are written afresh, not on top of an interrupted run's.
            shutil.rmtree(directory, ignore_errors=True)
            writer = self._writers[node_id] = self._writer_class(log_dir=str(directory))
        # Two-stage training restarts epoch numbers; the step keeps counting.
        step = self._steps[node_id] = self._steps.get(node_id, 0) + 1
        for name, value in record.train.items():
            writer.add_scalar(f"train/{name}", value, step)
        writer.add_scalar("val/accuracy", record.val_accuracy, step)
        writer.add_scalar("val/loss", record.val_loss, step)
        if record.ema_val_accuracy is not None and record.ema_val_loss is not None:
            writer.add_scalar("val/ema_accuracy", record.ema_val_accuracy, step)
            writer.add_scalar("val/ema_loss", record.ema_val_loss, step)
        writer.add_scalar("lr", record.lr, step)
        writer.add_scalar("images_per_s", record.images_per_s, step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
