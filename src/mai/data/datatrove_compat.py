"""The places where mai leans on datatrove's internals, kept together so an upgrade breaks them here, loudly.

datatrove (pinned <0.11) has no switch for its console output: a local task logs dozens of INFO lines
and its stats to the console when its `local_rank` is 0, its dedup steps draw tqdm bars with no way
to turn them off, and each task puts loguru's DEBUG console handler back. mai wants one line per
stage. tests/data/test_datatrove_compat.py checks that the private method overridden here still has
the signature this relies on.
"""

import functools
import sys
from contextlib import contextmanager

from datatrove.executor import LocalPipelineExecutor
from loguru import logger


def console_logs_warnings_only() -> None:
    """datatrove logs through loguru, whose default console handler prints everything down to DEBUG."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


@contextmanager
def tqdm_bars(enabled: bool):
    """Turn off every tqdm bar made without an explicit `disable` while the block runs, unless enabled.

    datatrove's dedup steps draw bars with no switch to turn them off ("Initializing pq...",
    "Reading dup files", exact dedup's bare 0/1 bars); readers take `doc_progress`, which
    `progress_bars()` already sets. tqdm's own TQDM_DISABLE variable is read once, when tqdm is
    imported, which in this process happened long before.
    """
    from tqdm import tqdm

    if enabled:
        yield
        return
    init = vars(tqdm)["__init__"]
    tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    try:
        yield
    finally:
        tqdm.__init__ = init


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with each task's console output cut to one line per stage and errors.

    datatrove prints a task's INFO logs and stats (dozens of lines per task) to the console only
    for local_rank 0, which is all that local_rank is used for; every task here runs as 1, so its
    full log lands in the stage's logs/ folder alone. Progress bars are drawn on a terminal only,
    decided here, in the process that owns the console, and applied in whichever process runs a task.
    """

    progress_bars = True  # set by Stages.executor; travels with the executor to the worker processes

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        try:
            with tqdm_bars(self.progress_bars):
                return super()._run_for_rank(rank, local_rank=1, node_rank=node_rank)
        finally:
            console_logs_warnings_only()  # datatrove puts its DEBUG console handler back after each task
