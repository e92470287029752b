"""Everything a checkpoint holds: the networks, the optimizer (with its learning-rate
schedule), the annealing variables, the epoch and the early-stopping state."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms import params as P

from .config import TrainingError


#: Checkpoint file format version (``format`` entry of every ``ckpt-N.npz``).
CHECKPOINT_FORMAT = 1


@dataclass
class TrainingState:
    """The networks, optimizer and training counters of a run, and their checkpoints.

    A checkpoint is one numpy file ``RUN/checkpoints/ckpt-N.npz`` (N = the next epoch to run)
    with every network and optimizer variable (``net/i``, ``opt/i``, with their Keras paths
    in ``net_paths`` / ``opt_paths``, less the auto-numbered top-level name) and the counters: backend independent (written under
    TensorFlow, resumed under JAX and back) and written atomically (temporary file, rename).
    """

    net: object                  # cvae_pms.model.networks.CVAENetworks
    net_cfg: object              # cvae_pms.model.networks.NetworkConfig
    opt: object                  # keras optimizer (LossScaleOptimizer with mixed precision)
    ckpt_dir: Path               # RUN/checkpoints
    kept: int                    # checkpoints kept (older ones deleted)
    beta: float = 0.0            # KL weight of this epoch
    t_low: float = 0.0           # decoder truncation bounds of this epoch (unit box)
    t_high: float = 1.0
    epoch: int = 0               # the next epoch to run
    best_val: float = float("inf")   # best val_L = val_H + val_KL after annealing
    bad_epochs: int = 0          # epochs since best_val improved

    def arrays(self) -> dict[str, np.ndarray]:
        """The checkpoint's arrays (see the class docstring)."""
        from keras import ops
        out: dict[str, np.ndarray] = {
            "format": np.int64(CHECKPOINT_FORMAT), "epoch": np.int64(self.epoch),
            "best_val": np.float64(self.best_val), "bad_epochs": np.int64(self.bad_epochs),
            "net_paths": np.array(_paths(self.net.variables, self.net.name)),
            "opt_paths": np.array(_paths(self.opt.variables, self.net.name))}
        for prefix, variables in (("net", self.net.variables), ("opt", self.opt.variables)):
            for i, v in enumerate(variables):
                out[f"{prefix}/{i}"] = ops.convert_to_numpy(v.value)
        return out

    def write(self, path: Path) -> Path:
        """Write the checkpoint file ``path`` (atomically); returns it."""
        import io
        from cvae_pms.atomic import write_bytes_atomic
        buf = io.BytesIO()
        np.savez(buf, **self.arrays())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue())
        return path

    def save(self) -> Path:
        """Checkpoint ``ckpt-<epoch>.npz``; keeps the newest :attr:`kept` of them."""
        from .checkpoints import checkpoint_files
        path = self.write(self.ckpt_dir / f"ckpt-{self.epoch}.npz")
        for old in checkpoint_files(self.ckpt_dir)[self.kept:]:
            Path(old).unlink(missing_ok=True)
        return path

    @property
    def latest(self) -> str | None:
        """The newest checkpoint file on disk, or None."""
        from .checkpoints import checkpoint_files
        files = checkpoint_files(self.ckpt_dir)
        return files[0] if files else None

    def restore(self, path: str | Path) -> None:
        """Load every variable and counter from the checkpoint file ``path``."""
        with np.load(path, allow_pickle=False) as f:
            if int(f["format"]) != CHECKPOINT_FORMAT:
                raise TrainingError(f"{path}: checkpoint format {int(f['format'])}, this "
                                    f"version reads {CHECKPOINT_FORMAT}")
            for prefix, variables in (("net", self.net.variables), ("opt", self.opt.variables)):
                paths = [str(p) for p in f[f"{prefix}_paths"]]
                if paths != _paths(variables, self.net.name) or any(
                        f[f"{prefix}/{i}"].shape != tuple(v.shape) for i, v in enumerate(variables)):
                    raise TrainingError(f"{path}: its {prefix} variables ({len(paths)}) are "
                                        f"not the ones of this run's networks/optimizer "
                                        f"({len(variables)}); was the config changed?")
                for i, v in enumerate(variables):
                    v.assign(f[f"{prefix}/{i}"])
            self.epoch, self.bad_epochs = int(f["epoch"]), int(f["bad_epochs"])
            self.best_val = float(f["best_val"])


def _paths(variables, net_name: str) -> list[str]:
    """Keras variable paths without the auto-numbered names of the networks and optimizer
    (``cvae_networks_2/trunk_0/kernel`` -> ``trunk_0/kernel``, ``adam/cvae_networks_2_trunk_0_
    kernel_momentum`` -> ``trunk_0_kernel_momentum``)."""
    return [v.path.split("/", 1)[-1].replace(net_name + "_", "", 1) for v in variables]


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
    """Build the networks and optimizer (under ``strategy``, a TensorFlow distribution
    strategy, or None) and their checkpoint state (``resume``: the whitening layer is left
    for the checkpoint to restore)."""
    import contextlib

    import keras
    from cvae_pms.features import N_FEATURES
    from cvae_pms.model.networks import NetworkConfig, build_networks
    tcfg = cfg["training"]
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
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
    return TrainingState(net=net, net_cfg=net_cfg, opt=opt, ckpt_dir=run / "checkpoints",
                         kept=int(tcfg["checkpoints_kept"]))
