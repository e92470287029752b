"""Inference beyond one process with Dask (dask.distributed): one task per input file.

Each task runs :func:`cvae_pms.infer.infer` on one input file and writes its own posterior
file ``<out stem>.<input stem>.h5`` beside ``out``; each worker process loads the model once
(:func:`cvae_pms.infer.cached_model`) and reuses it for every task it runs. Tasks return
their summary tables; the client concatenates them into the ``--summary`` table. Samples do
not depend on the partitioning (per-source seeds), so the files hold exactly the samples of a
single-process run. A remote scheduler (``tcp://host:8786``) needs the model dir, the inputs
and the output folder on a file system that every worker sees under the same paths.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

from astropy.table import Table, vstack

from cvae_pms import posterior_file as pf
from cvae_pms.infer import InferError, cached_model, check_paths, infer


def parse_dask(spec: str) -> tuple[str, int | str]:
    """``local:N`` -> ('local', N); ``tcp://host:port`` (or tls://, ...) -> ('address', spec)."""
    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise InferError(f"--dask {spec!r}: expected local:N with N >= 1 workers")
        return "local", n
    if "://" in spec:
        return "address", spec
    raise InferError(f"--dask {spec!r}: expected local:N or a scheduler address tcp://host:port")


@contextlib.contextmanager
def dask_client(spec: str, processes: bool = True) -> Iterator[object]:
    """A ``distributed.Client``: a LocalCluster of N single-threaded workers, or a scheduler.

    ``processes=False`` runs the local workers as threads of this process (tests only: the
    model cache is then shared by all of them).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InferError("--dask needs dask.distributed: pip install 'cvae-pms[dask]'") from exc
    kind, value = parse_dask(spec)
    if kind == "local":
        with LocalCluster(n_workers=int(value), threads_per_worker=1, processes=processes,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    else:
        try:
            client = Client(str(value), timeout="30s")
        except OSError as exc:
            raise InferError(f"--dask {value}: cannot connect to the scheduler ({exc})") from exc
        with client:
            yield client


def part_path(out: str | os.PathLike, input_file: str | os.PathLike) -> Path:
    """Posterior file of one input: ``<out dir>/<out stem>.<input stem>.h5``."""
    out, name = Path(out), Path(input_file).name
    stem = name.split(".")[0] if not name.startswith(".") else name
    return out.with_name(f"{out.stem}.{stem}.h5")


def _task(run_dir: str, input_file: str, part: str, n_samples: int, seed: int, batch: int,
          resume: bool, command_line: list[str], overwrite: bool = False) -> tuple[Table, dict]:
    """One Dask task: infer one input file with the worker's cached model."""
    model = cached_model(run_dir)
    res = infer(run_dir, [input_file], part, n_samples=n_samples, seed=seed, batch=batch,
                resume=resume, progress=False, command_line=command_line, model=model,
                overwrite=overwrite)
    table = pf.summary_table(pf.iter_posterior(part, samples=False))
    return table, {"part": part, "n_sources": res.n_sources, "n_failed": res.n_failed,
                   "n_ood": res.n_ood, "unusable_files": res.unusable_files,
                   "worker_pid": os.getpid()}


def infer_dask(client, run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
               out: str | os.PathLike, *, summary: str | os.PathLike | None = None,
               n_samples: int = 1000, seed: int = 0, batch: int = 256, resume: bool = False,
               command_line: Sequence[str] | None = None,
               overwrite: bool = False) -> tuple[Table, list[dict]]:
    """Run one inference task per input file on ``client``; merge and write the summary.

    Returns (merged summary table, per-task info dicts with the part file path and counts).
    Raises :class:`InferError` for bad paths or existing outputs (without ``overwrite`` or
    ``resume``; before any work) or when a task fails.
    """
    paths = check_paths(inputs, out, summary, overwrite=overwrite or resume, out_is_stem=True)
    parts = [part_path(out, p) for p in paths]
    dupes = {str(p) for p in parts if parts.count(p) > 1}
    if dupes:
        raise InferError(f"inputs with the same file stem would share a posterior file: "
                         f"{', '.join(sorted(dupes))}; rename them")
    existing = [str(p) for p in parts if p.exists()]
    if existing and not (overwrite or resume):
        raise InferError(f"{existing[0]}: output exists; use --overwrite to replace it "
                         f"(or --resume to continue it)")
    run_dir = str(Path(run_dir).resolve())
    futures = [client.submit(_task, run_dir, str(Path(p).resolve()), str(part.resolve()),
                             n_samples, seed, batch, resume, list(command_line or []),
                             overwrite, key=f"cvae-pms-infer-{part.name}", pure=False)
               for p, part in zip(paths, parts)]
    try:
        results = client.gather(futures)
    except InferError:
        raise
    except Exception as exc:  # a worker-side error arrives re-raised with its own type
        raise InferError(f"a Dask inference task failed: {type(exc).__name__}: {exc}") from exc
    tables = [t for t, _ in results]
    merged = vstack(tables, metadata_conflicts="silent") if tables else Table()
    if summary is not None:
        pf.write_summary(merged, summary)
    return merged, [info for _, info in results]
