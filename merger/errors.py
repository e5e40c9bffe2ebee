"""Typed errors of the merge core.

Every error names what is wrong and what to change. The gateway maps these types
(never their messages) onto gRPC status codes, so each class carries the kind of
failure it is:

- ``ConfigError``: the request or configuration is malformed (INVALID_ARGUMENT).
- ``NotFoundError``: a named model, variant or file does not exist (NOT_FOUND).
- ``IncompatibleError``: the inputs exist but do not fit together, e.g. a delta
  for another base or mismatched shapes (FAILED_PRECONDITION).
- ``UnsafeFormatError``: a checkpoint in a format we refuse to load (pickle)
  (INVALID_ARGUMENT).
- ``CorruptError``: a stored artifact fails its checksum or its header lies
  (DATA_LOSS when it was ours, INVALID_ARGUMENT when it was supplied).
"""

from __future__ import annotations


class MergeError(Exception):
    """Base class of every error the merge core raises on purpose."""


class ConfigError(MergeError, ValueError):
    """A parameter, config key or argument is invalid; the message says how to fix it."""


class NotFoundError(MergeError, FileNotFoundError):
    """A model folder, tensor, variant or file that was named does not exist."""


class IncompatibleError(MergeError):
    """Inputs that exist but do not fit together (another base, other shapes, other vocab)."""


class UnsafeFormatError(MergeError):
    """A checkpoint in a format that can execute code when loaded (pickle: .bin, .pt, .pth)."""


class CorruptError(MergeError):
    """Stored bytes that do not match their manifest, or a file whose header lies."""
