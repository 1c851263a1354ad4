"""The `bertflow` Typer app; each module of this package registers its commands on it."""

from __future__ import annotations

import os

# Process-level defaults, set before Prefect is imported: the CLI draws its own progress and
# summary, so Prefect's console logs (still sent to the API and the UI) stay quiet, and the
# temporary server sends no telemetry. Users can override each one in their environment.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import typer

HELP = "Turn collections of text into embedding datasets with BERT-family models, orchestrated by Prefect."

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Turn collections of text into embedding datasets with BERT-family models, orchestrated by Prefect."""
