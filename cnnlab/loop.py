"""The training loop, written out in one place: fit, validate, checkpoint, resume, test.

The Trainer receives a built run (`cnnlab.build`) and only loops; `cnnlab.experiment`
makes the run folder around it, tests the best checkpoint and writes the report.

Determinism: the batch order and augmentation draws of epoch e come from a generator
seeded with (seed, e); dropout uses torch's global generator. Both states go into every
checkpoint, so a resumed run replays the uninterrupted one exactly (on the same device
and thread count). In fp16 the loss scaler's state goes in as well.
"""

from __future__ import annotations

import gc
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cnnlab import distributed, feature_cache
from cnnlab.build import Built, with_calibration
from cnnlab.ema import WeightAverage
from cnnlab.errors import CnnlabError, listed
from cnnlab.evaluation import Recorder, measure
from cnnlab.models.compiled import compiled_kernels
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.precision import autocast_for, scaler_for, tune_cuda
from cnnlab.progress import EpochProgress, console
from cnnlab.recipe import LogConfig, better_epoch
from cnnlab.runs import RunFolder, load_checkpoint, write_json
from cnnlab.tasks import EpochMeter, evaluate, metric_goal, metric_parts, total_loss
from cnnlab.tasks.base import NO_CLASS, unlabelled_trouble
from cnnlab.tta import ViewAverage

# ----------------------------------------------------------------------- state


@dataclass
class LoopState:
    """Where the loop stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    best_loss: float | None = None  # the best epoch's val.loss: it breaks a tie of the monitor
    bad_epochs: int = 0  # epochs since the early-stopping metric last improved
    watch_best: float | None = None  # the early-stopping metric's best value so far
    elapsed: float = 0.0  # training seconds so far, over all sessions


class Trainer:
    """The loop of one run: optimizer, schedule, epochs, validation, checkpoints.

    It receives what `cnnlab.build.build` made of the recipe (tasks, splits, model,
    precision) and adds only what training needs: the optimizer and schedule, the meters,
    the weight average and DDP's wrapper. A run that continues from a checkpoint is built
    with it (`build(recipe, saved)`) and then `restore`d."""

    def __init__(
        self,
        built: Built,
        run: RunFolder | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ):
        recipe = built.recipe
        self.built, self.ranks, self.device = built, built.ranks, built.device
        self.tasks, self.splits, self.model = built.tasks, built.splits, built.model
        self.needed = built.needed
        self.views, self.precision = built.views, built.precision
        if not self.ranks.main:  # only rank 0 shows progress, nor logs to dashboards
            quiet = recipe.train.model_copy(update={"progress": False})
            recipe = recipe.model_copy(update={"train": quiet, "log": LogConfig()})
        self.recipe, self.run = recipe, run
        self.on_epoch = on_epoch  # called with each epoch's metrics row (sweeps prune here)
        self.steps_per_epoch = self.splits.steps_per_epoch(recipe.train.batch_size)
        self.optimizer = build_optimizer(recipe.train.optimizer, self.model)
        self.scheduler, self.per_step = build_scheduler(
            recipe.train, self.optimizer, self.steps_per_epoch
        )
        self.train_meter = EpochMeter(self.tasks, self.device, detailed=False)
        self.val_meter = EpochMeter(self.tasks, self.device)
        self.autocast = autocast_for(self.device, self.precision.precision)
        self.scaler = scaler_for(self.device, self.precision.precision)
        # steps the scaler skipped this epoch (gradients overflowed): counted on the device
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        if self.device.type == "cuda":
            tune_cuda(recipe.train.deterministic)
        # heads on a frozen backbone's pooled features, computed when the first epoch that
        # trains on them starts (`settle`): a run resumed after `unfreeze_at` never needs them
        self.caching = feature_cache.applies(
            self.model, getattr(recipe.model, "cache_features", False)
        )
        if self.caching and self.views:
            raise CnnlabError(
                "train.tta needs images, and a frozen backbone's heads train on cached "
                "features: set model.cache_features=false or train.tta=[]"
            )
        # what trains: the model itself, or DDP's wrapper, which averages the gradients
        self.stepped: nn.Module = self._data_parallel() if self.ranks.active else self.model
        decay = recipe.train.ema_decay
        self.ema = WeightAverage(self.model, decay) if decay else None
        self.state = LoopState()
        self.data_state: torch.Tensor | None = None  # data generator state of a mid-epoch resume
        self._stop = False

    # ------------------------------------------------------- frozen, then not

    def settle(self) -> None:
        """The backbone and the data as the coming epoch (state.epoch + 1) trains: from
        `model.unfreeze_at` on the whole backbone, on images; before it, with `caching`,
        the heads on pooled features. Called as each epoch starts and as `fit` starts (a
        resumed run left only its test), so a resume on either side of the switch sets up
        what the uninterrupted run had there."""
        backbone = self.model.backbone
        if getattr(backbone, "unfreezes_at", lambda epoch: False)(self.state.epoch + 1):
            self._unfreeze()
        elif self.caching and backbone.frozen and self.splits is self.built.splits:
            self._cache_features()

    def _cache_features(self) -> None:
        """A frozen backbone's pooled features, once: the heads train on them (feature_cache)."""
        self.splits = feature_cache.cache_features(
            self.model,
            self.splits,
            self.needed,
            self.built.eval_batch_size,
            self.autocast,
            self.recipe.train.progress,
        )
        self._average_fed_alike()

    def _average_fed_alike(self) -> None:
        """The weight average's copy takes what the backbone takes: pooled features or images."""
        if self.ema:
            self.ema.module.backbone.cached = self.model.backbone.cached

    def _unfreeze(self) -> None:
        """The whole backbone trains from this epoch on. The optimizer has held its
        parameters from the start (optim.param_groups), SGD's momentum buffers at zero
        (build_optimizer), so only their gradients begin; heads that trained on cached
        features go back to the images (and augmentation)."""
        backbone = self.model.backbone
        backbone.unfreeze()
        was_cached, backbone.cached = backbone.cached, False
        self._average_fed_alike()
        self.splits = self.built.splits
        if self.ranks.active:  # DDP reduces the gradients of what trained when it wrapped
            self.stepped = self.model
            gc.collect()  # the old wrapper's hooks go with it, before a new one adds its own
            self.stepped = self._data_parallel(convert=False)
        switch = self.state.epoch + 1 == backbone.cfg.unfreeze_at  # not a resume after it
        if self.recipe.train.progress and switch:
            console.print(self._unfrozen_line(was_cached))

    def _unfrozen_line(self, was_cached: bool) -> str:
        """'epoch 3: the backbone trains from now on, at 0.1 × lr (2.4e-05 now); ...'."""
        first = next(self.model.backbone.body.parameters())
        group = next(g for g in self.optimizer.param_groups if any(p is first for p in g["params"]))
        share = self.model.backbone.cfg.backbone_lr
        rate = (
            f"{share:g} × lr ({group['lr']:.3g} now)" if share != 1.0 else f"lr {group['lr']:.3g}"
        )
        line = f"epoch {self.state.epoch + 1}: the backbone trains from now on, at {rate}"
        return line + (
            "; the heads train on images again, not cached features" if was_cached else ""
        )

    def _backbone_lr(self) -> float | None:
        """The rate of the backbone's own parameter group (`backbone_lr` × lr), in an epoch
        its weights trained; else None. `lr` is the heads' rate only: it hid the backbone's,
        and with `unfreeze_at` the epoch it began to train (the column starts there)."""
        own = getattr(self.model.backbone, "lr_scales", dict)()
        for group in self.optimizer.param_groups:
            if any(id(p) in own and p.requires_grad for p in group["params"]):
                return group["lr"]
        return None

    def _data_parallel(self, convert: bool = True) -> nn.Module:
        """The model inside DistributedDataParallel: gradients averaged across ranks in the
        backward pass; rank 0's weights copied to all at the start. `convert`: BatchNorm
        becomes SyncBatchNorm first when the recipe asks (once: a rewrap keeps it)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.recipe.train.sync_bn and convert:
            if self.device.type != "cuda":
                raise CnnlabError("train.sync_bn needs CUDA GPUs (torch has no CPU SyncBatchNorm)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    @property
    def judged(self) -> nn.Module:
        """The weights validation, checkpoints' `model` and the test see: the average when
        the recipe keeps one (train.ema_decay), else the trained weights themselves."""
        return self.ema.module if self.ema else self.model

    # ------------------------------------------------------------- checkpoints

    def checkpoint(self, gen: torch.Generator | None = None) -> dict:
        """Everything a resume needs. `model` holds the weights the run is judged by (what
        eval, figures and reports load); with an average kept, the weights training goes on
        from are `train_model`."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        trained = {"train_model": self.model.state_dict()} if self.ema else {}
        scaled = {"scaler": self._scaler_state()} if self.scaler else {}  # fp16 only
        return {
            "model": self.judged.state_dict(),
            **trained,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            **scaled,
            "train_meter": self.train_meter.state_dict(),
            "loop": asdict(self.state),
            "rng": rng,
            "data_gen": gen.get_state() if gen is not None and self.state.step else None,
            "recipe": self.recipe.model_dump(mode="json"),
            "precision": self.precision.precision,
            "classes": self.splits.classes,
            "components": self.splits.components,
            "normalize": {"mean": self.splits.mean.tolist(), "std": self.splits.std.tolist()},
            # what the model takes, (C, H, W): predictions on new images need no data set
            "input": [self.built.splits.in_channels, *self.built.splits.image_size],
        }

    def _scaler_state(self) -> dict:
        """The loss scale and its growth counter (plain numbers: weights_only loads them),
        and the epoch's skipped steps so far, so a mid-epoch resume counts on."""
        return {"state": self.scaler.state_dict(), "skipped": int(self.skipped.item())}

    def save_last(self, gen: torch.Generator | None = None, row: dict | None = None) -> None:
        """last.pt; at an epoch's end it also holds that epoch's metrics `row`."""
        extra = {"row": row} if row is not None else {}
        self.run.save_checkpoint(self.run.last_path, {**self.checkpoint(gen), **extra})

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint loaded on the CPU: load_state_dict copies weights and
        optimizer state to the device, while RNG states must stay CPU ByteTensors (a CUDA
        generator's set_state refuses anything else)."""
        self.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        if self.ema:
            self.ema.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"]["state"])
            self.skipped.fill_(ckpt["scaler"]["skipped"])
        self.train_meter.restore(ckpt["train_meter"])
        if not self.ranks.main:  # rank 0 saved its own share of a broken epoch's sums
            self.train_meter.reset()
        self.state = LoopState(**ckpt["loop"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.data_state = ckpt["data_gen"]
        self.run.truncate_metrics(self.state.epoch)
        if "row" in ckpt and len(self.run.read_metrics()) < self.state.epoch:
            self.run.append_metrics(ckpt["row"])  # stopped between the checkpoint and its row

    def where(self) -> str:
        """Where a resumed run picks up, in words."""
        st, epochs = self.state, self.recipe.train.epochs
        if st.epoch >= epochs:  # trained; what comes after did not finish
            train = self.recipe.train
            left = [w for w, on in (("test", train.test_at_end), ("report", train.report)) if on]
            then = f": its {' and '.join(left)}" if left else ", to finish"  # a sweep's trial
            return f"the end of epoch {epochs} of {epochs}{then}"
        if st.step == 0:
            return f"epoch {st.epoch + 1} of {epochs} from its start ({st.epoch} done)"
        return f"epoch {st.epoch + 1} of {epochs}, step {st.step} of {self.steps_per_epoch}"

    # -------------------------------------------------------------------- loop

    def _request_stop(self, signum, frame) -> None:
        if self._stop:  # second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._stop = True

    def fit(self) -> None:
        """Train to the last epoch (or early stop), checkpointing as it goes."""
        # Ctrl-C only sets a flag; the loop stops between steps with a checkpoint written.
        # Data-parallel ranks cannot agree on that step: a signal stops them at once (torchrun
        # signals every rank when one fails), and the last checkpoint is where they resume.
        main = threading.current_thread() is threading.main_thread()
        handlers = (
            dict.fromkeys((signal.SIGINT, signal.SIGTERM), distributed.halt)
            if self.ranks.active
            else {signal.SIGINT: self._request_stop}
        )
        previous = {s: signal.signal(s, h) for s, h in handlers.items()} if main else {}
        self.run.set_status("running", epoch=self.state.epoch)
        self.settle()  # also where no epoch is left: the test sees what the last one trained
        try:
            with compiled_kernels(self.built.fused):
                self._epochs()
        except Exception as err:
            if not (self.ranks.active and distributed.peers_lost(err)):
                raise
            if previous:  # torchrun's SIGTERM may follow: it must not cut the last line short
                previous.pop(signal.SIGTERM)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.run.set_status("interrupted", epoch=self.state.epoch, step=0)
            raise distributed.stopped(err, self.ranks, self.run.path, self.state.epoch) from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        self.run.set_status("trained", epoch=self.state.epoch)

    def _epochs(self) -> None:
        while self.state.epoch < self.recipe.train.epochs and not self._early_stopped():
            if self._stop:  # arrived during validation: last.pt is already current
                self.run.set_status("interrupted", epoch=self.state.epoch, step=0)
                raise KeyboardInterrupt
            self._train_epoch()

    def _epoch_generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.recipe.seed * 1_000_003 + self.state.epoch)
        return gen

    def _train_epoch(self) -> None:
        self.settle()
        cfg, st = self.recipe.train, self.state
        gen = self._epoch_generator()
        if self.ranks.active:  # dropout: each rank its own draws, or their noise would repeat
            torch.manual_seed(distributed.rank_seed(self.recipe.seed, st.epoch, self.ranks))
        if st.step == 0:
            self.train_meter.reset()
            self.skipped.zero_()
        batches = self.splits.train_batches(
            cfg.batch_size,
            gen,
            self.recipe.data.augment,
            self.needed,
            st.step,
            self.data_state,
            part=(self.ranks.rank, self.ranks.world),  # mapped images: read this rank's shard
        )
        self.data_state = None
        self.model.train()
        started, last_save = time.monotonic(), time.monotonic()
        first_step = st.step
        with EpochProgress(
            st.epoch + 1, cfg.epochs, self.steps_per_epoch, st.step, cfg.progress
        ) as bar:
            for x, targets in batches:
                total = self.train_step(x, targets)
                st.step += 1
                st.global_step += 1
                images = (st.step - first_step) * cfg.batch_size
                bar.advance(
                    lambda: self.train_meter.compute("train"),
                    images / max(time.monotonic() - started, 1e-9),
                )
                if self._stop or time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                    self._check_finite(total)
                    st.elapsed += time.monotonic() - last_save
                    self.save_last(gen)
                    last_save = time.monotonic()
                    if self._stop:
                        self.run.set_status("interrupted", epoch=st.epoch, step=st.step)
                        raise KeyboardInterrupt
        st.elapsed += time.monotonic() - last_save
        trained = (st.step - first_step) * cfg.batch_size
        # None: resumed after the epoch's last step (stopped in its validation), no rate
        self._end_epoch(
            started, trained / max(time.monotonic() - started, 1e-9) if trained else None
        )

    def train_step(self, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on a batch (this rank's shard of it), its sums in the epoch's
        meter; the loss stays a tensor, read only when a checkpoint is written."""
        x, targets, share = distributed.shard(x, targets, self.ranks)
        with self.autocast():
            outputs = self.stepped(x)
            total, losses = total_loss(self.tasks, self.model, outputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss = total if share == 1.0 else total * share
        if self.scaler:
            self._scaled_step(loss)
        else:
            loss.backward()
            if clip := self.recipe.train.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        if self.ema:
            self.ema.update(self.state.global_step)
        if self.scheduler and self.per_step:
            self.scheduler.step()
        self.train_meter.update(self.model, outputs, targets, total, losses)
        return total

    def _scaled_step(self, loss: torch.Tensor) -> None:
        """fp16's step: backward through the scaled loss, unscale (before clipping, which
        must see true gradients), step unless the gradients overflowed. The scaler lowers
        its scale exactly when it skipped, so comparing the scale tensors on the device
        counts skipped steps with no wait for the device (no .item() per step)."""
        self.scaler.scale(loss).backward()
        if clip := self.recipe.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        before = self.scaler._scale.clone()  # the scale tensor itself: get_scale() would sync
        self.scaler.update()
        self.skipped += self.scaler._scale < before

    def leave_ranks(self) -> None:
        """Done training together: DDP's wrapper goes first, then the process group, while
        the interpreter is whole. Left to the exit, gloo's threads and the wrapper are torn
        down during the interpreter's finalization, which is where one CI run saw a rank
        abort (SIGABRT) after its trial had finished."""
        if self.ranks.active:
            self.stepped = self.model
            gc.collect()  # now, not at exit, should the wrapper sit in a reference cycle
        distributed.leave()

    def _check_finite(self, total: torch.Tensor) -> None:
        """Stop the run in one line if its loss is not finite. Read at a checkpoint and at an
        epoch's end only (no host sync per step); which task's loss it was, and whether that
        loss counts unlabelled targets, is worked out only then."""
        if torch.isfinite(total).item():
            return
        where = f"epoch {self.state.epoch + 1}, step {self.state.step}"
        self.run.set_status("failed", reason=f"non-finite loss at {where}")
        bad = self._nonfinite_tasks()
        kept = (
            f"the last good checkpoint stays in {self.run.last_path.parent}"
            if self.run.last_path.exists()
            else f"no checkpoint was saved yet; the run's folder is {self.run.path}"
        )
        said = f"the loss became {total.item()} at {where}"
        if found := self._unlabelled_trouble(bad):
            raise CnnlabError(f"{said}, {self._trouble_line(*found)} ({kept})")
        # fp16's scaler handles overflowing gradients; a non-finite loss is the forward
        # pass itself overflowing fp16's range (65,504), which bf16 and fp32 do not
        fix = "set train.precision=bf16 or fp32" if self.scaler else "set train.grad_clip"
        in_tasks = f", in {' and '.join(f'tasks.{n}' for n in bad)}" if bad else ""
        raise CnnlabError(f"{said}{in_tasks}; lower train.optimizer.lr or {fix} ({kept})")

    def _nonfinite_tasks(self) -> list[str]:
        """The tasks whose loss this epoch is not finite so far: one task's NaN makes the
        shared weights NaN through the gradient, and every task's loss after it."""
        row = self.train_meter.compute("train")
        return [n for n in self.tasks if not math.isfinite(row[f"train.{n}.loss"])]

    def _unlabelled_trouble(self, names: list[str]) -> tuple[str, str] | None:
        """The first of `names` whose loss lets unlabelled targets make it non-finite, and
        how (`unlabelled_trouble`); the stand-in output has the shape the model gives."""
        if not names:
            return None
        x, _ = self.splits.eval_batch(self.splits.train, slice(0, 2), self.needed)
        was = self.model.training
        with torch.no_grad():
            shapes = {n: out.shape[1:] for n, out in self.model.eval()(x).items()}  # (K, ...)
        self.model.train(was)
        for name in names:
            task = self.tasks[name]
            if task.target in self.splits.derived:  # made from the images: never blank
                continue
            values = self.splits.values("train", task.target)
            trouble = unlabelled_trouble(task, self.model.heads[name], shapes[name], values)
            if trouble:
                return name, trouble
        return None

    def _trouble_line(self, name: str, trouble: str) -> str:
        """What task `name`'s loss does with unlabelled targets, and the fix."""
        task = self.tasks[name]
        loss, docs = f"{type(task).__name__}.loss", "as docs/components.md#a-task-type shows"
        if trouble == "empty":
            return (
                f"in tasks.{name}: {loss} is not finite on a batch with no label for it (a mean "
                f"over none); make it 0 there (divide by the labelled count clamped to 1), {docs}"
            )
        blank = "NaN" if self.splits.values("train", task.target).is_floating_point() else NO_CLASS
        return (
            f"in tasks.{name}: its targets include unlabelled values ({blank}), which {loss} "
            f"lets into its value or gradient; make it count only self.labelled(target), {docs}"
        )

    def _end_epoch(self, started: float, images_per_s: float | None) -> None:
        st = self.state
        distributed.add_up(self.train_meter.sums, self.ranks)  # each rank saw its shard
        row = {"epoch": st.epoch + 1, **self.train_meter.compute("train")}
        if self.scaler:  # the same on every rank: each scaler saw the averaged gradients
            row["train.skipped_steps"] = int(self.skipped.item())
        if not math.isfinite(row["train.loss"]):
            self._check_finite(torch.tensor(row["train.loss"]))
        row.update(self.validate())
        if self.scheduler and not self.per_step:
            self.scheduler.step()
        seconds = time.monotonic() - started
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        if (backbone_lr := self._backbone_lr()) is not None:
            row["lr.backbone"] = backbone_lr
        row["seconds"] = round(seconds, 2)
        # training steps only, not validation; None when this process trained none of them
        row["images_per_s"] = None if images_per_s is None else round(images_per_s, 1)
        st.epoch, st.step = st.epoch + 1, 0
        self._track_best(row)
        # the checkpoint first, holding its row: whoever reads the row (a sweep pruning the
        # trial) may stop the processes at once, and a resume then still starts here
        self.save_last(row=row)
        self.run.append_metrics(row)
        self.run.set_status("running", epoch=st.epoch)  # the epochs done, as it says when done
        every = self.recipe.train.keep_every
        if every and st.epoch % every == 0:  # weights only: a point of the training path
            path = self.run.last_path.with_name(f"epoch_{st.epoch:03d}.pt")
            self.run.save_checkpoint(path, {"model": self.judged.state_dict()})
        if self.recipe.train.progress:
            EpochProgress.summary(row, self.recipe.train.monitor)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def validate(self) -> dict[str, float]:
        self.val_meter.reset()
        size, part = self.built.eval_batch_size, (self.ranks.rank, self.ranks.world)
        batches = self.splits.eval_batches("val", size, self.needed, part)
        evaluate(self.judged, self.val_meter, batches, self.autocast)
        distributed.add_up(self.val_meter.sums, self.ranks)  # torchmetrics adds up its own
        return self.val_meter.compute("val")

    def _track_best(self, row: dict) -> None:
        cfg, st = self.recipe.train, self.state
        for name in {cfg.monitor, cfg.early_stopping.metric} - {None}:
            if name not in row:  # a task type of one's own whose per_class names another
                _, task, _ = metric_parts(name)
                given = [k for k in row if k.startswith(f"val.{task}.")]
                raise CnnlabError(
                    f"{name!r} is not among the validation metrics tasks.{task} reported "
                    f"({listed(given, ', ')}): its per_class or epoch_values names them "
                    "otherwise; monitor one of these"
                )
        value, loss = row[cfg.monitor], row.get("val.loss")
        if st.best_value is None or better_epoch(
            cfg.monitor, (value, loss), (st.best_value, st.best_loss)
        ):
            st.best_value, st.best_epoch, st.best_loss = value, st.epoch, loss
            self.run.save_checkpoint(self.run.best_path, self.checkpoint())
        # from the loop's state, not the metrics file: every data-parallel rank decides alike
        watch = cfg.early_stopping.metric or cfg.monitor
        sign = metric_goal(watch).sign
        before = st.watch_best
        improved = before is None or sign * (row[watch] - before) > cfg.early_stopping.min_delta
        st.bad_epochs = 0 if improved else st.bad_epochs + 1
        if before is None or sign * (row[watch] - before) > 0:
            st.watch_best = row[watch]

    def _early_stopped(self) -> bool:
        patience = self.recipe.train.early_stopping.patience
        return patience is not None and self.state.bad_epochs >= patience

    # -------------------------------------------------------------------- test

    def test(self, recorder: Recorder | None = None) -> dict[str, float]:
        """Test-set metrics of the best checkpoint: the only place the test set is read
        (`recorder` watches the pass for the report)."""
        ckpt = load_checkpoint(self.run.best_path)
        self.model.load_state_dict(ckpt["model"])
        with_calibration(self.tasks, ckpt)
        measured = self.measure(self.model, self.views, recorder)
        metrics = {"best_epoch": ckpt["loop"]["epoch"], **measured}
        write_json(self.run.test_path, metrics)
        return metrics

    def measure(
        self, model: nn.Module, views: ViewAverage | None, recorder: Recorder | None = None
    ) -> dict[str, float]:
        """`model`'s test-set metrics, averaged over `views` when given."""
        size = self.built.eval_batch_size
        with compiled_kernels(self.built.fused):
            return measure(
                self.tasks, self.splits, model, self.autocast, size, views, recorder=recorder
            )
