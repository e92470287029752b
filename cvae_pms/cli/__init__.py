"""The ``cvae-pms`` command line: a thin click shell over the package modules.

Each command group lives in its own module in this package; :data:`COMMANDS` lists them.
Every error the package reports (:class:`cvae_pms.errors.CvaePmsError`) is caught once, here,
and printed as one ``Error: ...`` line (exit status 1). TensorFlow's start-up and log lines are
hidden unless ``cvae-pms --verbose`` is given.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile

import click

from cvae_pms import backend
from cvae_pms.backend import BACKENDS
from cvae_pms.errors import CvaePmsError

#: (module in cvae_pms.cli, attribute) of every registered command or group.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("grid_cmd", "grid"),
    ("models_cmd", "models"),
    ("xp_cmd", "xp"),
    ("crosscheck_cmd", "crosscheck"),
    ("train_cmd", "train"),
    ("ood_cmd", "ood"),
    ("infer_cmd", "infer"),
    ("evaluate_cmd", "evaluate"),
    ("simulate_cmd", "simulate"),
)


def quiet_tensorflow(quiet: bool = True) -> None:
    """Hide (``quiet``) or show TensorFlow's start-up and log lines.

    TensorFlow 2.2x prints its start-up lines (oneDNN, CUDA stubs, "All log messages before
    absl::InitializeLog() ...") at import whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so the
    quiet mode also installs :class:`_QuietTensorFlowImport`, which runs the first
    ``import tensorflow`` (and the device discovery that prints the ``cuInit`` line) with file
    descriptor 2 sent to a temporary file, replayed only when the import fails. Later log
    lines obey ``TF_CPP_MIN_LOG_LEVEL=3``; the Python loggers ``tensorflow`` and ``absl`` are
    set to errors only.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3" if quiet else "0"
    level = logging.ERROR if quiet else logging.INFO
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)
    hooks = [f for f in sys.meta_path if isinstance(f, _QuietTensorFlowImport)]
    if quiet and not hooks and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    elif not quiet:
        for f in hooks:
            sys.meta_path.remove(f)


@contextlib.contextmanager
def _stderr_fd_captured():
    """Send file descriptor 2 to a temporary file; on an exception write what it caught."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            buf.seek(0)
            sys.stderr.write(buf.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path hook: the first ``import tensorflow`` runs with stderr captured (see
    :func:`quiet_tensorflow`); the module is then handed to the import system unchanged."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        with _stderr_fd_captured():
            module = importlib.import_module("tensorflow")
            module.config.list_physical_devices("GPU")   # CUDA discovery prints too
        self._module, self._spec = module, module.__spec__
        return importlib.util.spec_from_loader(name, self, origin=module.__spec__.origin,
                                               is_package=True)

    def create_module(self, spec):
        return self._module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec    # the real one, not this hook's


class _Main(click.Group):
    """The top-level group: turns any :class:`CvaePmsError` into one ``Error:`` line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CvaePmsError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a file-system failure no check foresaw (disk full, ...)
            if exc.filename is None:
                raise
            raise click.ClickException(f"{exc.filename}: {exc.strerror or exc}") from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cvae-pms")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's start-up and log lines (hidden by default).")
@click.option("--backend", "backend_name", type=click.Choice(BACKENDS), default=None,
              help="Keras backend: tensorflow (default) or jax (needs the [jax] or [jax-cuda] "
                   "extra); default: $KERAS_BACKEND, else tensorflow.")
def main(verbose: bool, backend_name: str | None) -> None:
    """cvae-pms: posteriors of T Tauri star parameters from Gaia XP spectra."""
    quiet_tensorflow(not verbose)
    backend.select(backend_name)


for _module, _attr in COMMANDS:
    main.add_command(getattr(importlib.import_module(f"{__name__}.{_module}"), _attr))
