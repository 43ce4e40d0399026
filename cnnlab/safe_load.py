"""Reading torch files without running anything in them.

`torch.load(weights_only=True)` unpickles tensors and plain containers only; a file that
carries Python objects (which a full unpickle would execute) is refused unread. Checkpoints
and pretrained weight files both come through here, so both fail the same way: one line
naming the file and the reason.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def torch_load(path: Path, device: torch.device | str = "cpu", what: str = "checkpoint"):
    """torch.load with weights_only=True: a file that carries pickled Python objects is
    refused unread, and any unreadable file is one line naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1][:160]
        raise CnnlabError(
            f"{path} carries pickled Python objects and was refused (cnnlab loads {what}s "
            f"with weights_only=True; {first}). Re-save it as a plain state_dict"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CnnlabError(f"{path} is not a readable {what} ({err}); it may be truncated") from None
