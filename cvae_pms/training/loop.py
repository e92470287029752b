"""The fit loop: the compiled training step (noise drawn inside it), validation, KL
annealing, early stopping, and the weights, checkpoint and history written every epoch.

Random numbers are stateless, keyed on (seed, epoch, step), so a run resumed from a
checkpoint gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cvae_pms.simulator import unit_teff

from .config import TrainingError
from .data import TrainingData
from .history import HISTORY_COLUMNS, tb_scalar, write_history
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


def make_steps(state: TrainingState, inputs: TrainingInputs, batching: Batching, strategy, *,
               prior_warmup: bool, mixed_precision: bool, jit_compile: bool):
    """The compiled ``train_step(bp0, rp0, g0, x, seed_t)`` (noise, loss, gradient step on
    every replica) and ``val_step(y, x, seed_t)``; both return the loss terms."""
    import tensorflow as tf
    from cvae_pms.model.cvae import cvae_terms, training_loss
    net, opt, noise, lum = state.net, state.opt, inputs.noise, inputs.lum
    copies = batching.copies
    latent = net.config.latent
    n_rep = strategy.num_replicas_in_sync

    def replica_step(bp0, rp0, g0, x, seed_t, beta, t_low, t_high):
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        s = tf.random.experimental.stateless_fold_in(seed_t, tf.cast(rid, tf.int64))
        s_noise, s_z = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        y, lg, g = noise.observe(bp0, rp0, g0, s_noise, copies=copies, return_g=True,
                                 teff=unit_teff(x))
        if lum is not None:
            y = tf.concat([y, lum.inputs(lg, g0, g, tf.random.experimental.stateless_fold_in(
                s_noise, 7), copies)], axis=1)
        x = tf.repeat(x, copies, axis=0)
        eps = tf.random.stateless_normal(tf.stack([tf.shape(x)[0], latent]), seed=s_z)
        with tf.GradientTape() as tape:
            h_loss, kl, prior_fit = cvae_terms(net, y, x, eps, t_low, t_high,
                                               with_prior_fit=True)
            loss = h_loss + beta * kl
            objective = training_loss(h_loss, kl, prior_fit, beta, prior_warmup)
            scaled = objective / n_rep
            if mixed_precision:
                scaled = opt.scale_loss(scaled)
        grads = tape.gradient(scaled, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return tf.stack([h_loss, kl, loss]) / n_rep

    @tf.function(jit_compile=jit_compile)
    def train_step(bp0, rp0, g0, x, seed_t, beta, t_low, t_high):
        per = strategy.run(replica_step, args=(bp0, rp0, g0, x, seed_t, beta, t_low, t_high))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    @tf.function
    def val_step(y, x, seed_t, t_low, t_high):
        eps = tf.random.stateless_normal(tf.stack([tf.shape(x)[0], latent]), seed=seed_t)
        return tf.stack(cvae_terms(net, y, x, eps, t_low, t_high))

    return train_step, val_step


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
    strategy: object
    train_step: Callable
    val_step: Callable
    log: Callable[[str], None]

    @property
    def seed(self) -> int:
        return int(self.cfg["training"]["seed"])

    def fit(self, history: list[dict]) -> FitOutcome:
        """Run the epochs, appending to ``history``; stops early on ``val_L`` patience."""
        import tensorflow as tf
        tcfg = self.cfg["training"]
        b = self.batching
        writer = tf.summary.create_file_writer(str(self.run / "tensorboard"))
        start_epoch = self.state.epoch
        stop_reason = "finished"
        t_train, n_trained = 0.0, 0
        for epoch in range(start_epoch, tcfg["epochs"]):
            t0 = time.time()
            self._set_annealing(epoch)
            tr = self._train_epoch(epoch)
            dt = time.time() - t0
            t_train += dt
            n_trained += b.steps * b.rows * b.copies
            vs = self._validate()
            row = self._history_row(epoch, tr, vs, history, t0, dt)
            history.append(row)
            self._report(writer, epoch, row)
            stop = self._save_epoch(epoch, vs, history)
            if stop:
                stop_reason = (f"early stopping: val_L = val_H + val_KL did not improve for "
                               f"{tcfg['early_stopping_patience']} epochs")
                self.log(stop_reason)
                break
        writer.flush()
        return FitOutcome(history=history, stop_reason=stop_reason, start_epoch=start_epoch,
                          t_train=t_train, n_trained=n_trained)

    def _set_annealing(self, epoch: int) -> None:
        self.state.beta = float(self.annealing.beta(epoch))
        self.state.t_low, self.state.t_high = map(float, self.annealing.truncation_bounds(epoch))

    def _epoch_dataset(self, epoch: int):
        """This epoch's shuffled rows in batches (distributed over the replicas)."""
        import tensorflow as tf
        rows, b = self.data.train_rows, self.batching
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(rows))
        perm = np.resize(perm, b.steps * b.rows)  # wraps around when steps_per_epoch > one pass
        ds = tf.data.Dataset.from_tensor_slices((rows.bp[perm], rows.rp[perm],
                                                 rows.g[perm], rows.x[perm]))
        return self.strategy.experimental_distribute_dataset(
            ds.batch(b.rows, drop_remainder=True).prefetch(2))

    def _train_epoch(self, epoch: int) -> np.ndarray:
        """Mean (H, KL, L) over the epoch's steps; a non-finite loss saves the state to
        ``checkpoints/nonfinite`` and raises."""
        import tensorflow as tf
        sums = np.zeros(3)
        for step, (bp0, rp0, g0, x) in enumerate(self._epoch_dataset(epoch)):
            seed_t = tf.constant([self.seed, epoch * 1_000_000 + step], tf.int64)
            st = self.state
            vals = self.train_step(bp0, rp0, g0, x, seed_t, np.float32(st.beta),
                                   np.float32(st.t_low), np.float32(st.t_high)).numpy()
            if not np.isfinite(vals).all():
                self._nonfinite(epoch, step, vals)
            sums += vals
        return sums / self.batching.steps

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
        import tensorflow as tf
        val_y, val_x, bs = self.inputs.val_y, self.data.val_rows.x, self.batching.rows
        vs = np.zeros(2)
        nb = 0
        for i in range(0, len(val_y), bs):
            w = len(val_y[i:i + bs])
            vs += w * self.val_step(tf.constant(val_y[i:i + bs]), tf.constant(val_x[i:i + bs]),
                                    tf.constant([self.seed, 2**31 - 5 - i], tf.int64),
                                    np.float32(self.state.t_low),
                                    np.float32(self.state.t_high)).numpy()
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

    def _report(self, writer, epoch: int, row: dict) -> None:
        """TensorBoard scalars and the log line of one epoch."""
        with writer.as_default(step=epoch):
            for k in HISTORY_COLUMNS[1:]:
                tb_scalar(k, row[k], epoch)
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
