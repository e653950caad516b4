"""Fault injection inside Ray workers, for tests/test_executor.py: loaded into every worker process
as its `worker_process_setup_hook`. With IKD_TEST_KILL_NODE set (node ids, comma-separated), a
worker training one of those nodes kills itself (SIGKILL, no clean-up) when the node's first epoch
ends: a worker lost mid-job."""

import os
import signal


def kill_on_first_epoch() -> None:
    targets = set(filter(None, os.environ.get("IKD_TEST_KILL_NODE", "").split(",")))
    if not targets:
        return
    import ikd.training_pass

    original = ikd.training_pass.train_models

    def train_models(models, data, config, *, descriptions=None, on_epoch=None, **kwargs):
        if targets & set(descriptions or []):

            def on_epoch(description, record):
                os.kill(os.getpid(), signal.SIGKILL)

        return original(models, data, config, descriptions=descriptions, on_epoch=on_epoch, **kwargs)

    ikd.training_pass.train_models = train_models
