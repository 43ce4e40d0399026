"""Reading torch files without running anything in them.

`torch.load(weights_only=True)` unpickles tensors and plain containers only; a file that
carries Python objects (which a full unpickle would execute) is refused unread. Checkpoints
and pretrained weight files both come through here, so both fail the same way: one line
naming the file and the reason.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def torch_load(path: Path, device: torch.device | str = "cpu", what: str = "checkpoint"):
    """torch.load with weights_only=True: a file that carries pickled Python objects is
    refused unread, and any unreadable file is one line naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _saved_by_torch(Path(path)):  # torch reads it as a pickle all the same
            raise CnnlabError(
                f"{path} is not a readable {what}: not a file torch.save writes (neither its "
                "zip archive nor a pickle); it may be corrupt, or another kind of file"
            ) from None
        first = str(err).strip().splitlines()[-1][:160]
        raise CnnlabError(
            f"{path} carries pickled Python objects and was refused (cnnlab loads {what}s "
            f"with weights_only=True; {first}). Re-save it as a plain state_dict"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CnnlabError(f"{path} is not a readable {what} ({err}); it may be truncated") from None


def _saved_by_torch(path: Path) -> bool:
    """Whether the file is one torch.save writes: a zip archive, or (the legacy format) a
    pickle, which opens with the PROTO opcode 0x80."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"
