"""The compiled training and validation steps under TensorFlow (the default backend).

One ``tf.function`` step (optionally XLA): the noise path draws the observation inside the
step, then the loss ``H + beta KL`` (with the optional prior warm-up), ``tf.GradientTape`` and
one optimizer update, on every replica of the distribution strategy (``MirroredStrategy``
over several GPUs), batches from ``tf.data``; TensorBoard scalars next to ``history.csv``.
The random part of the step is :meth:`cvae_pms.training.inputs.TrainingInputs.step_draws`,
shared with :mod:`cvae_pms.training.steps_jax`, so both backends draw the same noise for the
same seed.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def select_device(mixed_precision: bool, log: Callable[[str], None]):
    """(device description, distribution strategy): MirroredStrategy over several GPUs;
    sets the mixed-precision policy when asked (reset by ``finish``)."""
    import keras
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU only (no GPU visible to TensorFlow)"
    log(f"training on {device} (tensorflow backend)")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log("mixed precision: float16 compute, float32 heads and loss")
    return device, strategy


class TFSteps:
    """``train(batch, seed, beta, t_low, t_high)`` -> (H, KL, L) and ``val(y, x, seed, t_low,
    t_high)`` -> (val_H, val_KL) as numpy; the variables are updated in place."""

    def __init__(self, state, inputs, batching, strategy, *, prior_warmup: bool,
                 mixed_precision: bool, jit_compile: bool) -> None:
        import tensorflow as tf

        from cvae_pms import backend
        from cvae_pms.model.cvae import cvae_terms, training_loss

        self.batching, self.strategy = batching, strategy
        net, opt = state.net, state.opt
        copies, latent = batching.copies, net.config.latent
        n_rep = strategy.num_replicas_in_sync

        def replica_step(bp0, rp0, g0, x, seed_t, beta, t_low, t_high):
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            y, x, eps = inputs.step_draws(bp0, rp0, g0, x, backend.fold_in(seed_t, rid),
                                          copies, latent)
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
            eps = backend.normal(seed_t, (tf.shape(x)[0], latent))
            return tf.stack(cvae_terms(net, y, x, eps, t_low, t_high))

        self._train, self._val = train_step, val_step

    def pull(self) -> None:
        """Nothing to do: the steps update the Keras variables themselves."""

    def push(self) -> None:
        """Nothing to do (see :meth:`pull`)."""

    def batches(self, rows, perm: np.ndarray) -> Iterator:
        """The epoch's batches (bp0, rp0, g0, x) of ``rows`` in the order ``perm``
        (``tf.data``, distributed over the replicas)."""
        import tensorflow as tf
        b = self.batching.rows
        ds = tf.data.Dataset.from_tensor_slices((rows.bp[perm], rows.rp[perm], rows.g[perm],
                                                 rows.x[perm]))
        return iter(self.strategy.experimental_distribute_dataset(
            ds.batch(b, drop_remainder=True).prefetch(2)))

    def train(self, batch, seed: np.ndarray, beta: float, t_low: float, t_high: float
              ) -> np.ndarray:
        """One step on ``batch``; (H, KL, L) of it."""
        import tensorflow as tf
        return self._train(*batch, tf.constant(seed, tf.int64), np.float32(beta),
                           np.float32(t_low), np.float32(t_high)).numpy().astype(np.float64)

    def val(self, y: np.ndarray, x: np.ndarray, seed: np.ndarray, t_low: float, t_high: float
            ) -> np.ndarray:
        """(val_H, val_KL) of one validation block."""
        import tensorflow as tf
        return self._val(tf.constant(y), tf.constant(x), tf.constant(seed, tf.int64),
                         np.float32(t_low), np.float32(t_high)).numpy().astype(np.float64)

    def scalars(self, folder, epoch: int, row: dict) -> None:
        """TensorBoard scalars of one epoch's history row into ``folder`` (flushed)."""
        import tensorflow as tf
        writer = self.__dict__.get("_writer")
        if writer is None:
            writer = self._writer = tf.summary.create_file_writer(str(folder))
        with writer.as_default(step=epoch):
            for k, v in row.items():
                if k != "epoch":
                    tb_scalar(k, v, epoch)
        writer.flush()


def tb_scalar(tag: str, value: float, step: int) -> None:
    """Write a TensorBoard scalar with the core op (the tensorboard package is optional)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=meta.SerializeToString())


#: The steps class of this backend (what :func:`cvae_pms.training.loop.make_steps` builds).
Steps = TFSteps
