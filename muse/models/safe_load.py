"""Load torch checkpoints that may come from someone else, without running code.

Profiles and models get shared like workflows, so every `.pt` MUSE reads is
loaded with `weights_only=True`: a pickle that names a function or class is
refused before anything runs. Failures become one clear line naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint file could not be read safely; the message is one line naming the file."""


def one_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception message, shortened: torch's unpickler errors run to many lines."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """Why torch refused: its unpickler error suggests `weights_only=False`, which MUSE never does,
    so only the line naming what was refused is kept."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            detail = line.split("error:", 1)[-1].split(" was not an allowed global")[0].strip()
            return f"it holds code or objects other than weights, refused: {detail}"
    return one_line(exc)


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", hint: str = "delete it or replace it with a good copy") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` of a dict; anything else (pickled code, truncated zip,
    random bytes, not a dict) raises CheckpointError with one line naming the file and what to do."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files; the error below says enough
            warnings.simplefilter("ignore", UserWarning)
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (code in the pickle), RuntimeError (bad zip), EOFError, OSError...
        raise CheckpointError(f"{what} {path} cannot be read safely ({_reason(exc)}); {hint}") from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"{what} {path} holds a {type(blob).__name__}, not a MUSE checkpoint; {hint}")
    return blob
