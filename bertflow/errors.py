"""Errors a user sees: one line that says what was wrong and what to do, and the exit code it gives.

Every command maps errors to exit codes the same way: bad input 2 (fix the command, the data, the
model or the storage credentials, then run again), a failure at run time 1 (storage faults that
outlasted their retries, failed shards or days: rerun to finish). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class BertflowError(Exception):
    """Base of every error bertflow raises on purpose (never a bug)."""

    exit_code = 1


class InputError(BertflowError):
    """The source, a column or an option is wrong; retrying cannot help."""

    exit_code = 2


class ModelError(InputError):
    """The model cannot be resolved or loaded as asked."""


class DestMismatchError(InputError):
    """DEST holds output made with a different configuration."""


class StorageError(BertflowError):
    """Object storage refused an operation: access denied, no such bucket; fix the URI or credentials."""

    exit_code = 2


class TransientStorageError(StorageError):
    """A storage fault that a retry may get past (throttling, 5xx, reset, timeout)."""

    exit_code = 1


class RunFailedError(BertflowError):
    """Some units of a run (shards, backfill days) failed after their retries; rerunning redoes only those."""


def one_line(e: BaseException) -> str:
    """Why something failed, in one line: a bertflow error as is, anything else with its type."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, BertflowError) and first else f"{type(e).__name__}: {first}".rstrip(": ")
