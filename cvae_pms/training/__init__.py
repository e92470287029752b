"""Training of the CVAE: config, data split, noise inside the step, annealing, checkpoints.

``train(grid, config, out)`` reads a noiseless grid, splits it by seed (``split.npz``), and
trains with a fresh noise draw for every spectrum in every batch, inside the compiled step:
brightness G ~ U(g_min, g_max) and transits ~ U{transits_min..transits_max}; coefficients
scaled to G; coefficient noise ``c + L z`` from :mod:`cvae_pms.xp.noise`; correlated
model-error flux noise; then :mod:`cvae_pms.features`. Random numbers are stateless, keyed
on (seed, epoch, step), so ``--resume`` after a kill gives the same weights as an
uninterrupted run. Checkpoints (weights, optimizer, epoch, early-stopping state) are written
every epoch; a non-finite loss stops training with a checkpoint and a message.

The modules, in the order a run uses them:

- :mod:`.config`: defaults, recipes, ``--set`` overrides, the split (no TensorFlow);
- :mod:`.checkpoints`: finding, checking and falling back past checkpoints of a run dir;
- :mod:`.data`: the grid rows and their train/val/test split;
- :mod:`.inputs`: the noise path into the features, their standardisation, validation features;
- :mod:`.state`: networks, optimizer and the variables a checkpoint holds;
- :mod:`.loop`: the compiled step and the epochs (annealing, early stopping, checkpoints);
- :mod:`.history`: ``history.csv``, ``loss.png`` and TensorBoard scalars;
- :mod:`.run`: :func:`train`, the steps above in sequence, then the OOD index.

Importing this package does not import TensorFlow (every TensorFlow import is inside a
function).
"""
from .checkpoints import RUN_PRODUCTS, checkpoint_intact, checkpoint_files
from .config import (DEFAULT_CONFIG, RECIPE_DIR, RESUMABLE_KEYS, TrainingError,
                     check_luminosity_config, load_config, resolve_config, split_indices)
from .data import GridRows, read_grid_rows
from .history import HISTORY_COLUMNS, plot_history, read_history, write_history
from .run import TrainResult, train

__all__ = ["DEFAULT_CONFIG", "GridRows", "HISTORY_COLUMNS", "RECIPE_DIR", "RESUMABLE_KEYS",
           "RUN_PRODUCTS", "TrainResult", "TrainingError", "check_luminosity_config",
           "checkpoint_intact", "checkpoint_files", "load_config", "plot_history",
           "read_grid_rows", "read_history", "resolve_config", "split_indices", "train",
           "write_history"]
