"""Everything a checkpoint holds: the networks, the optimizer (with its learning-rate
schedule), the annealing variables, the epoch and the early-stopping state."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms import params as P

from .config import TrainingError


@dataclass
class TrainingState:
    """The networks, optimizer and training variables of a run, and their checkpoints."""

    net: object                  # cvae_pms.model.networks.Networks
    net_cfg: object              # cvae_pms.model.networks.NetworkConfig
    opt: object                  # keras optimizer (LossScaleOptimizer with mixed precision)
    beta: object                 # tf.Variable: KL weight of this epoch
    t_low: object                # tf.Variables: decoder truncation bounds of this epoch
    t_high: object
    epoch: object                # tf.Variable: the next epoch to run
    best_val: object             # tf.Variable: best val_L = val_H + val_KL after annealing
    bad_epochs: object           # tf.Variable: epochs since best_val improved
    ckpt: object                 # tf.train.Checkpoint of all of the above
    manager: object              # tf.train.CheckpointManager over RUN/checkpoints


def lr_schedule(tcfg: dict, total_steps: int):
    """The learning rate (a float, or a Keras schedule over ``total_steps``)."""
    import keras
    lr, final = tcfg["learning_rate"], tcfg["lr_final"]
    kind = tcfg["lr_schedule"]
    if kind == "constant":
        return lr
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1), alpha=final / lr)
    if kind == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, max(total_steps, 1), final / lr)
    raise TrainingError(f"training.lr_schedule must be constant, cosine or exponential, "
                        f"got {kind!r}")


def build_state(cfg: dict, spec, whiten, strategy, run: Path, *, total_steps: int,
                mixed_precision: bool, resume: bool) -> TrainingState:
    """Build the networks and optimizer under ``strategy`` and the checkpoint over them
    (``resume``: the whitening layer is left for the checkpoint to restore)."""
    import keras
    import tensorflow as tf
    from cvae_pms.features import N_FEATURES
    from cvae_pms.model.networks import NetworkConfig, build_networks
    tcfg = cfg["training"]
    with strategy.scope():
        net_cfg = NetworkConfig.from_dict({
            **cfg["model"], "y_dim": spec.y_dim, "x_dim": P.N_PARAMS,
            "whiten_dim": N_FEATURES if cfg["model"]["whiten"] else 0})
        net = build_networks(net_cfg, seed=int(tcfg["seed"]))
        if net.whiten_layer is not None and not resume:   # resume: restored with the weights
            net.whiten_layer.kernel.assign(whiten)
        opt = keras.optimizers.Adam(lr_schedule(tcfg, total_steps),
                                    global_clipnorm=tcfg["global_clipnorm"])
        if mixed_precision:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(net.trainable_variables)
        beta = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="beta")
        t_low = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="trunc_low")
        t_high = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="trunc_high")
    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    best_val = tf.Variable(np.inf, dtype=tf.float64, name="best_val_L")
    bad_epochs = tf.Variable(0, dtype=tf.int64, name="bad_epochs")
    ckpt = tf.train.Checkpoint(net=net, optimizer=opt, epoch=epoch_var, best_val=best_val,
                               bad_epochs=bad_epochs)
    manager = tf.train.CheckpointManager(ckpt, str(run / "checkpoints"),
                                         max_to_keep=tcfg["checkpoints_kept"])
    return TrainingState(net=net, net_cfg=net_cfg, opt=opt, beta=beta, t_low=t_low,
                         t_high=t_high, epoch=epoch_var, best_val=best_val,
                         bad_epochs=bad_epochs, ckpt=ckpt, manager=manager)
