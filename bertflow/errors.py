"""Errors a user sees: one line that says what was wrong and what to do, and the exit code it gives.

Every command maps errors to exit codes the same way: bad input 2 (fix the command, the data, the
model or the storage credentials, then run again), a failure at run time 1 (storage faults that
outlasted their retries, failed shards or days: rerun to finish). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


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


class ReuseMismatchError(DestMismatchError):
    """An earlier output given to reuse was embedded otherwise; `reason` says how, in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StorageError(BertflowError):
    """Object storage refused an operation: access denied, no such bucket; fix the URI or credentials."""

    exit_code = 2


class TransientStorageError(StorageError):
    """A storage fault that a retry may get past (throttling, 5xx, reset, timeout)."""

    exit_code = 1


class HostError(BertflowError):
    """This host cannot do the work (its copy of the model is missing or differs, no device): another host may."""


class RunFailedError(BertflowError):
    """Some units of a run (shards, backfill days) failed after their retries; rerunning redoes only those."""


class ShardsFailedError(RunFailedError):
    """Shard runs that still failed after Prefect's retries; a rerun redoes only these."""

    @classmethod
    def of(cls, failed: list[str], planned: int) -> ShardsFailedError:
        """From the failed shards ('shard-3-of-8 (why)') of `planned`."""
        failed = sorted(failed)
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        return cls(
            f"{len(failed)} of {planned} shards failed after retries: {shown}; rerun the same command to redo only these"
        )


class BackfillFailedError(RunFailedError):
    """Some days' runs failed; repeating the backfill reruns only those."""

    @classmethod
    def of(cls, failed: dict[str, str], days: int) -> BackfillFailedError:
        """From the failed days (partition -> final state) of `days` run."""
        shown = ", ".join(f"{d} ({s})" for d, s in list(failed.items())[:5])
        return cls(f"{len(failed)} of {days} partitions failed: {shown}; repeat the backfill to rerun only these")


def one_line(e: BaseException) -> str:
    """Why something failed, in one line: a bertflow error as is, anything else with its type."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(e, BertflowError) and first else f"{type(e).__name__}: {first}".rstrip(": ")


def first_problem(e: ValidationError) -> tuple[str, str]:
    """A pydantic validation error's first problem: (where, as `field.sub`; what is wrong)."""
    first = e.errors()[0]
    return ".".join(str(x) for x in first["loc"]), first["msg"].removeprefix("Value error, ")


def problem_line(e: ValidationError) -> str:
    """`first_problem` as one line: `field: what is wrong`."""
    where, what = first_problem(e)
    return f"{where}: {what}" if where else what
