"""The fit loop: the compiled training step (noise drawn inside it), validation, KL
annealing, early stopping, and the weights, checkpoint and history written every epoch.

Random numbers are keyed on (seed, epoch, step) (:func:`cvae_pms.backend.stream_key`), so a
run resumed from a checkpoint gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import TrainingError
from .data import TrainingData
from .history import HISTORY_COLUMNS, write_history
from .inputs import Batching, TrainingInputs
from .state import TrainingState


@dataclass
class FitOutcome:
    """What the loop did: the full history (earlier calls' epochs included) and rates."""

    history: list[dict]
    stop_reason: str
    start_epoch: int
    t_train: float        # seconds spent in training steps
    n_trained: int        # noisy spectra trained on


def _steps_module():
    """:mod:`.steps_jax` under the JAX backend, else :mod:`.steps_tf`."""
    from cvae_pms import backend
    if backend.name() == "jax":
        from . import steps_jax as module
    else:
        from . import steps_tf as module
    return module


def make_steps(state: TrainingState, inputs: TrainingInputs, batching: Batching, strategy, *,
               prior_warmup: bool, mixed_precision: bool, jit_compile: bool):
    """The compiled steps of the backend in use (:class:`~.steps_tf.TFSteps` or
    :class:`~.steps_jax.JaxSteps`): noise path, loss and gradient step; validation terms."""
    return _steps_module().Steps(state, inputs, batching, strategy, prior_warmup=prior_warmup,
                                 mixed_precision=mixed_precision, jit_compile=jit_compile)


def select_device(mixed_precision: bool, log: Callable[[str], None]):
    """(device description, distribution strategy or None) of the backend in use."""
    return _steps_module().select_device(mixed_precision, log)


@dataclass
class FitLoop:
    """One run's epochs, from the checkpoint's epoch to ``training.epochs`` or early stop."""

    run: Path
    cfg: dict
    data: TrainingData
    inputs: TrainingInputs
    state: TrainingState
    batching: Batching
    annealing: object           # cvae_pms.model.cvae.Annealing
    steps: object               # TFSteps or JaxSteps (make_steps)
    log: Callable[[str], None]

    @property
    def seed(self) -> int:
        return int(self.cfg["training"]["seed"])

    def fit(self, history: list[dict]) -> FitOutcome:
        """Run the epochs, appending to ``history``; stops early on ``val_L`` patience."""
        tcfg = self.cfg["training"]
        b = self.batching
        start_epoch = self.state.epoch
        stop_reason = "finished"
        t_train, n_trained = 0.0, 0
        for epoch in range(start_epoch, tcfg["epochs"]):
            t0 = time.time()
            self._set_annealing(epoch)
            tr = self._train_epoch(epoch)
            self.steps.push()
            dt = time.time() - t0
            t_train += dt
            n_trained += b.steps * b.rows * b.copies
            vs = self._validate()
            row = self._history_row(epoch, tr, vs, history, t0, dt)
            history.append(row)
            self._report(epoch, row)
            stop = self._save_epoch(epoch, vs, history)
            if stop:
                stop_reason = (f"early stopping: val_L = val_H + val_KL did not improve for "
                               f"{tcfg['early_stopping_patience']} epochs")
                self.log(stop_reason)
                break
        return FitOutcome(history=history, stop_reason=stop_reason, start_epoch=start_epoch,
                          t_train=t_train, n_trained=n_trained)

    def _set_annealing(self, epoch: int) -> None:
        self.state.beta = float(self.annealing.beta(epoch))
        self.state.t_low, self.state.t_high = map(float, self.annealing.truncation_bounds(epoch))

    def _train_epoch(self, epoch: int) -> np.ndarray:
        """Mean (H, KL, L) over the epoch's steps; a non-finite loss saves the state to
        ``checkpoints/nonfinite`` and raises."""
        rows, b, st = self.data.train_rows, self.batching, self.state
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(rows))
        perm = np.resize(perm, b.steps * b.rows)  # wraps around when steps_per_epoch > one pass
        sums = np.zeros(3)
        for step, batch in enumerate(self.steps.batches(rows, perm)):
            seed = np.array([self.seed, epoch * 1_000_000 + step], np.int64)
            vals = self.steps.train(batch, seed, st.beta, st.t_low, st.t_high)
            if not np.isfinite(vals).all():
                self.steps.push()
                self._nonfinite(epoch, step, vals)
            sums += vals
        return sums / b.steps

    def _nonfinite(self, epoch: int, step: int, vals: np.ndarray) -> None:
        st = self.state
        bad_dir = self.run / "checkpoints" / "nonfinite"
        path = st.write(bad_dir / "ckpt.npz")
        last = st.latest or "none (failed in the first epoch)"
        raise TrainingError(
            f"{self.run}: non-finite loss at epoch {epoch} step {step} (H={vals[0]:.4g}, "
            f"KL={vals[1]:.4g}, beta={st.beta:.3g}); state saved to {path}; "
            f"last good checkpoint: {last}. Lower training.learning_rate or "
            f"training.global_clipnorm and restart, or --resume from the last good one.")

    def _validate(self) -> np.ndarray:
        """Row-weighted mean (val_H, val_KL) over the fixed validation features."""
        val_y, val_x, bs = self.inputs.val_y, self.data.val_rows.x, self.batching.rows
        st = self.state
        vs = np.zeros(2)
        nb = 0
        for i in range(0, len(val_y), bs):
            w = len(val_y[i:i + bs])
            seed = np.array([self.seed, 2**31 - 5 - i], np.int64)
            vs += w * self.steps.val(val_y[i:i + bs], val_x[i:i + bs], seed, st.t_low, st.t_high)
            nb += w
        return vs / nb

    def _history_row(self, epoch: int, tr: np.ndarray, vs: np.ndarray, history: list[dict],
                     t0: float, dt: float) -> dict:
        opt, b = self.state.opt, self.batching
        lr = opt.learning_rate
        lr = float(lr(opt.iterations) if callable(lr) else np.asarray(lr))
        return {"epoch": epoch, "beta": self.state.beta, "H": tr[0], "KL": tr[1],
                "L": tr[2], "val_H": vs[0], "val_KL": vs[1], "lr": lr,
                "time_s": (history[-1]["time_s"] if history else 0.0) + time.time() - t0,
                "samples_per_s": b.steps * b.rows * b.copies / dt}

    def _report(self, epoch: int, row: dict) -> None:
        """TensorBoard scalars (TensorFlow backend) and the log line of one epoch."""
        self.steps.scalars(self.run / "tensorboard", epoch,
                           {k: row[k] for k in HISTORY_COLUMNS})
        self.log(f"epoch {epoch:4d} beta {row['beta']:.3f} H {row['H']:9.3f} "
                 f"KL {row['KL']:8.3f} L {row['L']:9.3f} val_H {row['val_H']:9.3f} "
                 f"lr {row['lr']:.2e} {row['samples_per_s']:.0f} samples/s")

    def _save_epoch(self, epoch: int, vs: np.ndarray, history: list[dict]) -> bool:
        """Weights, checkpoint and history of the epoch; True when early stopping is due.

        Model weights: every epoch until annealing ends, then the best val_L = val_H + val_KL
        only (the objective at beta = 1: val_H alone is lowest right after annealing, when KL
        is still large, and stopped runs there before the learning rate had decayed).
        """
        from cvae_pms.model import rundir
        st = self.state
        patience = self.cfg["training"]["early_stopping_patience"]
        stop = False
        if epoch >= self.annealing.end:
            if vs[0] + vs[1] < st.best_val:
                st.best_val = float(vs[0] + vs[1])
                st.bad_epochs = 0
                rundir.save_weights(st.net, self.run)
            else:
                st.bad_epochs += 1
                stop = st.bad_epochs >= patience
        else:
            rundir.save_weights(st.net, self.run)
        st.epoch = epoch + 1
        st.save()
        write_history(self.run / "history.csv", history)
        return stop
