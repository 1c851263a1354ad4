"""Storage credentials from a Prefect Secret block, loaded by each process for itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

from prefect.blocks.system import Secret

from bertflow.errors import InputError
from bertflow.io import storage


@contextlib.contextmanager
def storage_from_block(name: str | None) -> Iterator[None]:
    """Use the storage options kept in the Prefect Secret block `name` (JSON) in this process."""
    if not name:
        yield
        return
    try:
        # Block.load dispatches on the caller: from sync code (as here) it returns the block itself.
        options = cast(Secret, Secret.load(name)).get()
    except ValueError:
        raise InputError(
            f"no Prefect Secret block named {name!r}; create it (value: JSON of storage options) or drop --storage-block"
        ) from None
    if not isinstance(options, dict):
        raise InputError(
            f"Secret block {name!r} must hold a JSON object of storage options, e.g. "
            '{"key": "...", "secret": "...", "endpoint_url": "..."}'
        )
    with storage.storage_options({str(k): str(v) for k, v in options.items()}):
        yield
