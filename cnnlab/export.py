"""A trained run as a file that leaves cnnlab: ONNX (PyTorch's dynamo exporter) or a
`torch.export` program (.pt2).

The exported graph takes what a camera or a PNG gives, uint8 images (B, C, H, W) at the run's
size, and answers every task by name: a classification its probabilities (B, K), a per-pixel
classification its probabilities (B, K, H, W), a regression its values in the target's units
(B,) or (B, D), a task type of one's own its head's decoded values, or its probabilities.
Everything training did to an image before the model saw it is inside: scaling to [0, 1],
luminance when colorizing, the training split's normalization, the recipe's test-time views, and
a fitted temperature when the run has one; so the file gives the metrics the run's test
reported. The batch size is free; the image size is the run's. What the outputs mean (class
names, components, units) is written into the ONNX file's metadata (`cnnlab.outputs`, JSON) and
beside a .pt2 file (`<file>.json`).

    exported = export_checked("runs/fashion_fast-...", "onnx")  # onnxruntime against torch
    exported.parity.accuracy, exported.predict(["shoe.png"])
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from cnnlab.build import Built, build, images_per_pass
from cnnlab.data import colorize
from cnnlab.errors import CnnlabError
from cnnlab.inference import (
    ImageLike,
    Prediction,
    Predictions,
    classified,
    decoded_batch,
    named,
    with_interval,
)
from cnnlab.recipe import read_yaml
from cnnlab.runs import RunFolder, load_checkpoint
from cnnlab.tasks.base import labelled
from cnnlab.tasks.intervals import Interval, widths_said
from cnnlab.tasks.thresholds import Threshold, answered
from cnnlab.tasks.thresholds import saved as saved_threshold

Format = Literal["onnx", "pt2"]
INPUT = "images"
OPSET = 18


class Exported(nn.Module):
    """uint8 images in, each task's answer out, in the order of `names`."""

    def __init__(self, built: Built):
        super().__init__()
        self.model, self.views, self.tasks = built.model, built.views, built.tasks
        self.view_names = list(built.recipe.train.tta) if built.views is not None else []
        self.names = list(built.tasks)
        self.grey = built.splits.grey
        self.resize = getattr(built.recipe.data, "resize", "squash")
        self.bits = getattr(built.recipe.data, "bits", 16)
        self.register_buffer("mean", built.splits.mean.view(1, -1, 1, 1).float().cpu())
        self.register_buffer("std", built.splits.std.view(1, -1, 1, 1).float().cpu())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.float() / 255.0
        if self.grey:
            x = colorize.luminance(x)
        x = (x - self.mean) / self.std
        out = self.views(self.model, x) if self.views is not None else self.model(x)
        return tuple(self._answer(name, out[name]) for name in self.names)

    def _answer(self, name: str, out: torch.Tensor) -> torch.Tensor:
        task = self.tasks[name]
        if not task.probabilistic:
            return self.model.heads[name].decode(out)
        # logits, or the log of the views' mean probabilities (cnnlab/tta.py), at the fitted
        # temperature (a constant in the graph): the probabilities the test scored
        return task.probabilities(out)

    def describe(self) -> list[dict]:
        """What each output is: name, kind, classes or components."""
        outs = []
        for name in self.names:
            task = self.tasks[name]
            info, probabilistic = task.info, task.probabilistic
            kind = "probabilities" if probabilistic else "values"
            outs.append(
                {
                    "name": name,
                    "kind": kind,
                    "task": type(self.tasks[name]).__name__,
                    "classes": info.classes,
                    "components": info.components,
                    "temperature": task.temperature if probabilistic else None,
                    "bounds": list(task.bounds) if task.bounds else None,  # clamped inside
                    # a calibrated regression's: predict adds each value's low and high
                    "interval": asdict(task.interval) if task.interval else None,
                    # a two-class task's fitted threshold: its predict answers at it
                    "threshold": asdict(task.threshold) if task.threshold else None,
                }
            )
        return outs


@dataclass
class Loaded:
    """A run's best model, wrapped for export, with its test images (uint8, CPU) and their
    targets; which model it is (`provenance`) and what a user must know of the file."""

    module: Exported
    images: torch.Tensor
    targets: dict[str, torch.Tensor]
    recipe_name: str
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def wrap(built: Built) -> Exported:
    """The built model as it will be exported: fp32, NCHW, on the CPU, eval mode."""
    built.model.eval().requires_grad_(False)
    built.model = built.model.float().to(memory_format=torch.contiguous_format)
    return Exported(built).eval()


def load_for_export(path: str | Path, views: bool = True) -> Loaded:
    """The run's judged weights in fp32 on the CPU, temperature included, and the recipe's
    test-time views unless `views` is off (one pass per image instead of one per view)."""
    run = RunFolder.open(path)
    run.check_trained("export")
    saved = load_checkpoint(run.best_path, "cpu")
    with torch.inference_mode(False):
        built = build(run.recipe(), saved, device="cpu", weights="judged")
    if not views:
        built.views = None
    test = built.splits.test
    targets = {k: v.cpu() for k, v in test.targets.items()}
    images = test.images[:].cpu()  # [:]: mapped test images are read, in-memory ones viewed
    module = wrap(built)
    about = provenance(run, saved)
    return Loaded(module, images, targets, recipe_name(run), about, notes(run, module, about))


def recipe_name(run: RunFolder) -> str:
    """The recipe a file's model trained by, by name: a sweep trial's is its sweep's base
    recipe (its own name, trial0003, only names its folder; the provenance says which
    trial); its own where the sweep folder is gone."""
    sweep = run.trial().get("sweep")
    base = Path(sweep) / "recipe.yaml" if sweep else None
    if base is not None and base.is_file():
        with contextlib.suppress(CnnlabError, KeyError):  # unreadable: the run's own name
            return str(read_yaml(base)["name"])
    return run.recipe().name


def provenance(run: RunFolder, saved: dict) -> dict:
    """Which model a file holds, for whoever is handed it without the run folder: the run
    (and the sweep's study and trial it trained for), its best epoch, the precision it
    trained in, what its test measured, and the versions that trained and exported it."""
    env, trial = run.env(), run.trial()
    sweep = {"study": trial.get("study"), "trials": trial.get("trials", [])} if trial else None
    return {
        "run": run.path.name,
        **({"sweep": sweep} if sweep else {}),  # a sweep trial's: which study, which trial
        "best_epoch": saved.get("loop", {}).get("best_epoch"),
        "trained_precision": saved.get("precision"),
        "test_metrics": run.test_metrics(),  # {} when it was never tested
        "trained_with": {**env.get("packages", {}), "git_commit": env.get("git_commit")},
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "exported_with": {"torch": torch.__version__},
    }


def notes(run: RunFolder, module: Exported, about: dict) -> list[str]:
    """What the export's lines say of the file beyond its check: a run still training (the
    file holds its best weights so far), what is inside the graph, and why `cnnlab predict
    RUN` answers a little otherwise where the run trained in bf16 or fp16."""
    said = []
    trainer = run.trainer()
    if trainer is not None:
        epoch = run.status().get("epoch", 0)
        said.append(
            f"warning: {run.path} is still training ({trainer}; {epoch} epoch(s) done): the "
            f"file holds its best weights so far, of epoch {about['best_epoch']}; export "
            "again once it has finished"
        )
    inside = ["scaling and normalization"]
    if module.view_names:
        inside.append(f"the test-time views ({', '.join(module.view_names)})")
    outputs = dict(zip(module.names, module.describe(), strict=True))
    inside += [
        f"{name}'s temperature T = {out['temperature']:.3g}"
        for name, out in outputs.items()
        if out["temperature"] not in (None, 1.0)
    ]
    said.append(f"inside the file: {', '.join(inside)}; it computes in fp32")
    said += [line for name, out in outputs.items() for line in _in_metadata(name, out)]
    if about["trained_precision"] in ("bf16", "fp16"):
        said.append(
            f"the run trained in {about['trained_precision']}: `cnnlab predict RUN` answers "
            "in it, and differs from the file in about the third digit"
        )
    return said


def export_checked(
    path: str | Path, fmt: Format | None = None, out: str | Path | None = None,
    check: bool = True, views: bool = True,
) -> ExportedModel:  # fmt: skip
    """Write the run's model as `fmt` (default: RUN/export/model.onnx or .pt2), then
    (`check`) compare the file with torch on the run's test images, with each
    classification's test accuracy in both: the run's data and model built once. `views`
    off: without the recipe's test-time views, as many times faster as it has views, and
    scoring what the model alone scores."""
    fmt, target = export_target(Path(path), fmt, out)
    loaded = load_for_export(path, views)
    replaced = target.exists()
    module, name, about = loaded.module, loaded.recipe_name, loaded.provenance
    target = export_module(module, loaded.images[:2], target, fmt, name, about)
    said = [*loaded.notes, *(["it replaced the file there"] if replaced else [])]
    if fmt == "pt2":
        said.append(f"what its outputs are: {target.name}.json beside it; keep the two together")
    return ExportedModel(target, parity_of(loaded, target) if check else None, said)


def export_target(run: Path, fmt: str | None, out: str | Path | None) -> tuple[Format, Path]:
    """The format and the file: `--format`, else the suffix of `--out`, else onnx. An `--out`
    without a suffix (or a folder already there) is a folder, model.FORMAT inside; a suffix
    other than the two, or one the format contradicts, is refused: the file's suffix is how
    it is read back (a .pt2 file of ONNX bytes failed only then)."""
    target = Path(out) if out is not None else run / "export"
    folder = target.is_dir() or not target.suffix
    suffix = "" if folder else target.suffix.lower().lstrip(".")
    chosen = (fmt or (suffix if suffix in ("onnx", "pt2") else "") or "onnx").lower()
    if chosen not in ("onnx", "pt2"):
        raise CnnlabError(f"export: format {chosen!r}; choose onnx or pt2")
    if suffix and suffix != chosen:
        given, fix = (
            (f"--format {fmt} but ", f"name the file .{fmt}, or leave --format out")
            if suffix in ("onnx", "pt2")
            else ("", "name a .onnx or .pt2 file, or a folder (model.onnx is written inside)")
        )
        raise CnnlabError(f"export: {given}--out {out} ends in .{suffix}; {fix}")
    target = target / f"model.{chosen}" if folder else target
    for parent in (target.parent, *target.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise CnnlabError(f"export: --out {out}: {parent} is a file, not a folder")
    return chosen, target


def export_module(
    module: Exported, example: torch.Tensor, target: Path, fmt: Format, name: str = "",
    about: dict | None = None,
) -> Path:  # fmt: skip
    """`module` written to `target` with a free batch size; `example`: uint8 (B, C, H, W)."""
    if fmt not in ("onnx", "pt2"):
        raise CnnlabError(f"export: format {fmt!r}; choose onnx or pt2")
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "recipe": name,
        "input": {
            "name": INPUT,
            "dtype": "uint8",
            "shape": ["batch", *example.shape[1:]],
            "layout": "NCHW",
            "channels": "RGB" if example.shape[1] == 3 else "grey",
            "made_grey": bool(module.grey),  # a colorizer's: it colours grey images
        },
        "resize": module.resize,  # how image files become the input's square
        "bits": module.bits,  # of a 16-bit image's, those its values use: 2**bits - 1 is 255
        "test_time_views": module.view_names,  # averaged inside the graph; [] for none
        "outputs": module.describe(),
        "provenance": about or {},  # which run, epoch and versions: it travels without them
    }
    # a copy of its own: a slice of the test images shares their storage, and torch.export
    # saves an example's whole storage (seed 002's .pt2 held all 768 images: 117 MB, not 2 MB)
    example = example.clone(memory_format=torch.contiguous_format)
    shapes = {INPUT: {0: free_batch()}}
    try:
        with _quiet():
            if fmt == "onnx":
                _onnx(module, example, target, shapes, meta)
            else:
                program = torch.export.export(module, (example,), dynamic_shapes=shapes)
                torch.export.save(program, target)
                Path(f"{target}.json").write_text(json.dumps(meta, indent=1))
    except Exception as err:  # the exporter's own errors name the operation that failed
        where, why = culprit(module, example, fmt) or ("", _first_line(err))
        if re.search(r"\bbatch\b", why):  # a guard on the free batch dimension, in sympy
            why += " (the layer's code tests the batch size, which the file leaves free)"
        raise CnnlabError(f"export: the model cannot be exported to {fmt}: {where}{why}") from None
    return target


def free_batch() -> torch.export.Dim:
    """The exported file's batch dimension: any size from 1 up."""
    return torch.export.Dim("batch", min=1, max=65536)


def _capture(module: nn.Module, args: tuple, fmt: Format) -> None:
    """Export without writing, the first input's batch free as in `export_module`: what
    fails here fails there (a layer that tests the batch size too)."""
    shapes = tuple(
        {0: free_batch()} if i == 0 and isinstance(a, torch.Tensor) and a.dim() else None
        for i, a in enumerate(args)
    )
    if fmt == "onnx":
        torch.onnx.export(
            module, args, dynamo=True, verbose=False, report=False, dynamic_shapes=shapes
        )
    else:
        torch.export.export(module, args, dynamic_shapes=shapes)


def _called_below(module: nn.Module, seen: dict) -> Iterator[nn.Module]:
    """The outermost layers under `module` that were called (a backbone wrapper reached
    through a method is skipped for the layers it calls)."""
    for child in module.children():
        if child in seen:
            yield child
        else:
            yield from _called_below(child, seen)


def culprit(module: Exported, example: torch.Tensor, fmt: Format) -> tuple[str, str] | None:
    """("layer NAME (Class): ", the exporter's line) for the innermost layer that cannot be
    exported on its own inputs while each of its children can; None when none is found.

    Each layer's first inputs are recorded in one eager pass; from the whole model down,
    the first child that fails on its own is followed, so only one path of layers is tried.
    """
    seen: dict[nn.Module, tuple] = {}
    record = lambda m, args: seen.setdefault(m, args) and None  # noqa: E731
    handles = [m.register_forward_pre_hook(record) for m in module.modules()]
    try:
        with torch.no_grad():
            module(example)
    except Exception:  # the model fails eagerly: no layer to name
        return None
    finally:
        for h in handles:
            h.remove()
    current, failure = module, None
    while True:
        for child in _called_below(current, seen):
            try:
                with _quiet():
                    _capture(child, seen[child], fmt)
            except Exception as err:  # probing: any failure is the answer
                current, failure = child, _first_line(err)
                break
        else:
            break
    if failure is None:
        return None
    name = next(n for n, m in module.named_modules() if m is current).removeprefix("model.")
    return f"layer {name} ({type(current).__name__}): ", failure


def _onnx(module: Exported, example: torch.Tensor, target: Path, shapes: dict, meta: dict) -> None:
    import onnx

    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=module.names,
        dynamic_shapes=shapes,
        opset_version=OPSET,
        verbose=False,
    )
    program.save(str(target))
    model = onnx.load(str(target))
    entry = model.metadata_props.add()
    entry.key, entry.value = "cnnlab.outputs", json.dumps(meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def _first_line(err: BaseException) -> str:
    """The first line of the innermost cause: the exporter wraps what went wrong in advice."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No exporter warnings, log lines or prints on the terminal: a failure becomes one line
    (torch.export prints a failed trace's partial graph to stderr, dozens of lines)."""
    logger = logging.getLogger("torch")
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


# ---------------------------------------------------------------------------- parity


@dataclass
class Parity:
    """onnxruntime (or the loaded .pt2 program) against torch on the run's test images."""

    images: int
    agreement: dict[str, float]  # classification outputs: share of images with the same top-1
    max_abs_diff: dict[str, float]  # every output
    # (torch's, the file's), per output: every test image's, left out of the repr
    outputs: tuple[list, list] = field(default=((), ()), repr=False)
    accuracy: dict[str, tuple[float, float]] = field(default_factory=dict)  # torch, file


def run_exported(path: Path, images: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Each output of an exported file on uint8 images (N, C, H, W), batch by batch."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {INPUT: x})  # noqa: E731
    else:
        program = torch.export.load(str(path)).module()
        run = lambda x: [o.numpy() for o in program(torch.from_numpy(x))]  # noqa: E731
    parts = [run(np.ascontiguousarray(images[i : i + batch])) for i in range(0, len(images), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def compare(module: Exported, path: Path, images: torch.Tensor, batch: int = 256) -> Parity:
    """The exported file and the torch module on the same uint8 images."""
    theirs = run_exported(path, images.numpy(), batch)
    with torch.inference_mode():
        parts = [module(images[i : i + batch]) for i in range(0, len(images), batch)]
    ours = [torch.cat(o).numpy() for o in zip(*parts, strict=True)]
    agreement, diff = {}, {}
    for out, a, b in zip(module.describe(), ours, theirs, strict=True):
        diff[out["name"]] = float(np.abs(a - b).max())
        if out["kind"] == "probabilities" and out["classes"]:  # the same answer
            agreement[out["name"]] = float((_answers(out, a) == _answers(out, b)).mean())
    return Parity(len(images), agreement, diff, outputs=(ours, theirs))


def _in_metadata(name: str, out: dict) -> list[str]:
    """What an output's metadata carries for the file's predict: an interval, a threshold."""
    lines = []
    if out["interval"]:
        widths = widths_said(out["interval"]["halfwidth"], out["components"])
        lines.append(
            f"in its metadata: {name}'s {out['interval']['coverage']:.0%} interval, ± {widths} "
            "(its predict gives each value's low and high)"
        )
    if out["threshold"]:
        lines.append(
            f"in its metadata: {name}'s threshold, {out['threshold']['name']} at p ≥ "
            f"{out['threshold']['probability']:.3g} (its predict answers at it; the file "
            "gives the probabilities)"
        )
    return lines


def _answers(out: dict, probabilities: np.ndarray) -> np.ndarray:
    """The classes (N, ...) that an output's probabilities answer: the top class, or at its
    fitted threshold (`out`: the output's `Exported.describe()`)."""
    return answered(torch.from_numpy(probabilities), _threshold(out)).numpy()


def _threshold(out: dict) -> Threshold | None:
    """An output's fitted threshold (files exported before thresholds have none)."""
    return saved_threshold(out["threshold"]) if out.get("threshold") else None


def parity_of(loaded: Loaded, path: Path) -> Parity:
    """The exported file against the run's torch model on its test images, with each
    per-image classification's test accuracy in both."""
    images = loaded.images
    batch = images_per_pass(loaded.module, images[:1], most=256)  # 256 at 28 px, 55 at 224
    parity = compare(loaded.module, path, images, batch)
    for k, out in enumerate(loaded.module.describe()):
        truth = loaded.targets.get(loaded.module.tasks[out["name"]].target)
        ours, theirs = parity.outputs[0][k], parity.outputs[1][k]
        per_image = truth is not None and truth.ndim == 1  # not a mask
        if out["kind"] == "probabilities" and out["classes"] and per_image:  # a softmax's
            ok = labelled(truth).numpy()  # images without a label count in neither
            t = truth.numpy()[ok]
            parity.accuracy[out["name"]] = (
                float((_answers(out, ours[ok]) == t).mean()),
                float((_answers(out, theirs[ok]) == t).mean()),
            )
    return parity


@dataclass
class ExportedModel:
    """A run's exported file, and how it agreed with torch (None: not checked)."""

    path: Path
    parity: Parity | None = None
    notes: list[str] = field(default_factory=list)  # what a user must know of the file

    def lines(self) -> list[str]:
        """What `cnnlab export` prints: the file, its size, what to know of it, and the
        check, an output a line."""
        lines = [f"exported: {self.path} ({self.path.stat().st_size / 1e6:.1f} MB)", *self.notes]
        if self.parity is None:
            return lines
        engine = "onnxruntime" if self.path.suffix == ".onnx" else "torch.export"
        lines.append(f"{engine} against torch in fp32 on {self.parity.images:,} test images:")
        for name, diff in self.parity.max_abs_diff.items():
            line = f"{name}: max |difference| {diff:.2e}"
            if name in self.parity.agreement:
                line += f", top-1 agreement {self.parity.agreement[name]:.2%}"
            if name in self.parity.accuracy:
                ours, theirs = self.parity.accuracy[name]
                line += f", test accuracy {ours:.4f} in torch, {theirs:.4f} in {engine}"
            lines.append(line)
        return lines

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Predictions:
        """Each task's answer for images as `Run.predict` takes them (files, arrays, PIL
        images, tensors), from the file alone (`predict_exported`)."""
        return predict_exported(self.path, images)


# ------------------------------------------------------------------- predictions


def metadata(path: Path) -> dict:
    """What an exported file says about its input and outputs."""
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and kin: not an ONNX file at all
            raise CnnlabError(
                f"predict: {path} is not a readable ONNX file ({type(err).__name__}); give the "
                "model.onnx `cnnlab export RUN` wrote, or export the run again"
            ) from None
        props = {p.key: p.value for p in model.metadata_props}
        if "cnnlab.outputs" not in props:
            raise CnnlabError(f"predict: {path} was not exported by cnnlab (no cnnlab.outputs)")
        return json.loads(props["cnnlab.outputs"])
    side = Path(f"{path}.json")
    if not side.is_file():
        raise CnnlabError(f"predict: {side} is missing; export the run again")
    return json.loads(side.read_text())


def predict_exported(path: str | Path, images: ImageLike | Sequence[ImageLike]) -> Predictions:
    """Each task's answer from an exported model (onnxruntime for .onnx) for images as
    `Run.predict` takes them, files decoded as the run's source decoded its own: the same
    fields as the run's `predict` gives, a per-pixel task's probabilities (N, K, H, W)
    included. The file takes uint8: pixels in [0, 1] become 0-255 again, rounded."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"predict: {path}: no such file; `cnnlab export RUN` writes one")
    meta = metadata(path)
    channels, size = meta["input"]["shape"][1], meta["input"]["shape"][2]
    resize, bits = meta.get("resize", "squash"), meta.get("bits", 16)
    made_grey = meta["input"].get("made_grey", False)  # a colorizer's: grey images expected
    x, frames = decoded_batch(images, channels, (size, size), resize, bits, not made_grey)
    outputs = run_exported(path, x.mul(255).round().to(torch.uint8).numpy())
    found = {}
    for out, value in zip(meta["outputs"], outputs, strict=True):
        name, classes = out["name"], out["classes"]
        if out["kind"] == "values" or classes is None:  # a multi-label task's probabilities
            found[name] = Prediction(name, values=value, components=out["components"])
            fitted = out.get("interval")  # files exported before intervals have none
            interval = Interval(fitted["coverage"], fitted["halfwidth"]) if fitted else None
            found[name] = with_interval(found[name], interval, out.get("bounds"))
        else:  # (N, K) per image or (N, K, H, W) per pixel: decoded as the run decodes its own
            found[name] = classified(name, value, classes, frames=frames, threshold=_threshold(out))
    return named(images, found)
