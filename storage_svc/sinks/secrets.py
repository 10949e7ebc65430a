"""Secrets a sink reads from a file or an environment variable, never from its config."""

from __future__ import annotations

import os
from pathlib import Path


class SecretUnavailable(Exception):
    """The configured file or variable holds no secret; the message names the key only."""


def read_secret(key: str, file: Path | None, env: str | None) -> str | None:
    """The secret (surrounding whitespace stripped), or None when neither source is set.

    Read at each use, so a rotated file takes effect without a restart."""
    if file is not None:
        try:
            secret = file.read_text().strip()
        except OSError as exc:
            raise SecretUnavailable(f"{key}_file: cannot read {file}: {exc.strerror}") from None
        if not secret:
            raise SecretUnavailable(f"{key}_file: {file} is empty")
        return secret
    if env is not None:
        secret = os.environ.get(env, "").strip()
        if not secret:
            raise SecretUnavailable(f"{key}_env: environment variable {env} is not set")
        return secret
    return None
