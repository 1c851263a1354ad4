"""The parent run's lease on DEST (see `bertflow.io.lease`): taken before DEST is touched, renewed
while the run lives, released when it ends; what a person watching the run sees of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import get_run_logger
from prefect.runtime import flow_run

from bertflow.io import lease
from bertflow.io.lease import Lease


@contextlib.contextmanager
def dest_lease(dest: str) -> Iterator[Lease]:
    """Hold DEST for this run; a live holder stops it with LeaseHeldError (exit 2), a dead one's lease is taken over."""
    run_id = flow_run.id
    with lease.hold(dest, run_id=str(run_id) if run_id else None, run_name=flow_run.name) as held:
        logger = get_run_logger()
        if held.took_over is not None:
            logger.warning(
                "took over %s from %s, whose lease expired (the run died): resuming its work", dest,
                held.took_over.describe(),
            )  # fmt: skip
        logger.info("holding the lease on %s (renewed every %d s, expires %d s after the last renewal)",
                    dest, held.seconds // 3, held.seconds)  # fmt: skip
        yield held
