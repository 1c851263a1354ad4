"""Errors a user sees: one line that says what was wrong and what to do."""

from __future__ import annotations


class BertflowError(Exception):
    """Base of every error bertflow raises on purpose (never a bug)."""


class InputError(BertflowError):
    """The source, a column or an option is wrong; retrying cannot help."""


class ModelError(BertflowError):
    """The model cannot be resolved or loaded as asked."""


class StorageError(BertflowError):
    """Object storage refused or failed an operation."""


class TransientStorageError(StorageError):
    """A storage fault that a retry may get past (throttling, 5xx, reset, timeout)."""


class DestMismatchError(InputError):
    """DEST holds output made with a different configuration."""
