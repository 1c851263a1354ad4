"""The `bertflow` command: each command parses its options into a validated config, calls a flow, shows the result.

One module per command group: `embed` (embed, verify), `fit` (train-pooler, fit-reduction),
`search`, `publish`, `report`, `service` (deploy, serve, backfill); `common` holds what they share.
"""

from __future__ import annotations

from bertflow.cli import embed, fit, publish, report, search, service  # noqa: F401  (each registers its commands on `app`)
from bertflow.cli.app import app

__all__ = ["app"]
