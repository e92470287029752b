"""Inference beyond one process with Dask (dask.distributed): one task per input file.

:func:`infer_dask` takes every keyword option of :func:`cvae_pms.infer.infer` (the CLI builds
one dict of them for both routes). Each task runs :func:`~cvae_pms.infer.infer` on one input
file with those options and writes its own posterior file ``<out stem>.<input stem>.h5``
beside ``out``; each worker process loads the model once
(:func:`cvae_pms.infer.cached_model`) and reuses it for every task it runs. Per-file options
act per part file (``resume``, ``overwrite``); the whole-run ones are done by the client:
tasks return their summary tables, concatenated into the ``summary`` table, and the corner
plots (``plots``, ``max_plots``, ``truth``) are drawn from the part files in input order, the
first ``max_plots`` sources in all, as a single-process run draws them. The prior is read
once by the client and sent to the tasks as its dict; the astrometry table is checked by the
client and read by each task (by its absolute path: it is joined on source_id, so every task
sees the whole table). Log lines of a task are returned and replayed by the client's ``log``.
Samples do not depend on the partitioning (per-source seeds), so the files hold exactly the
samples of a single-process run. A remote scheduler (``tcp://host:8786``) needs the model dir,
the inputs, the astrometry table and the output folder on a file system that every worker
sees under the same paths.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path
from typing import Iterator, Sequence

from astropy.table import Table, vstack

from cvae_pms import posterior_file as pf
from cvae_pms.infer import InferError, InferResult, cached_model, check_paths, infer

#: Options of :func:`infer` the client handles itself (never sent to a task as given).
CLIENT_OPTIONS = ("summary", "plots", "max_plots", "truth", "progress", "log", "model")


def infer_options() -> tuple[str, ...]:
    """The keyword options of :func:`cvae_pms.infer.infer` (all of them accepted here)."""
    return tuple(name for name, p in inspect.signature(infer).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


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


def _task(run_dir: str, input_file: str, part: str, options: dict
          ) -> tuple[Table, dict, InferResult, list[str]]:
    """One Dask task: infer one input file with the worker's cached model and ``options``
    (the task's :func:`infer` keyword options; ``prior`` as a dict of
    :meth:`cvae_pms.priors.Prior.to_dict`)."""
    options = dict(options)
    if isinstance(options.get("prior"), dict):
        from cvae_pms.priors import prior_from_dict
        options["prior"] = prior_from_dict(options["prior"])
    lines: list[str] = []
    res = infer(run_dir, [input_file], part, model=cached_model(run_dir), progress=False,
                log=lines.append, **options)
    table = pf.summary_table(pf.iter_posterior(part, samples=False))
    return table, {"part": part, "n_sources": res.n_sources, "n_failed": res.n_failed,
                   "n_ood": res.n_ood, "unusable_files": res.unusable_files,
                   "worker_pid": os.getpid()}, res, lines


def plan_dask(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, **options
              ) -> tuple[list[Path], dict]:
    """Check what :func:`infer_dask` is given before any work (the CLI calls it before it
    starts a cluster): the options, paths, part-file names, prior and astrometry table.
    Returns (part file per input, the options sent to every task). Raises :class:`InferError`."""
    known = infer_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InferError(f"infer has no option(s) {', '.join(unknown)}")
    if options.get("model") is not None:
        raise InferError("infer_dask: every worker loads the model itself; do not pass model=")
    overwrite, resume = bool(options.get("overwrite")), bool(options.get("resume"))
    paths = check_paths(inputs, out, options.get("summary"), overwrite=overwrite or resume,
                        plots=options.get("plots"), truth=options.get("truth"),
                        out_is_stem=True)
    parts = [part_path(out, p) for p in paths]
    dupes = {str(p) for p in parts if parts.count(p) > 1}
    if dupes:
        raise InferError(f"inputs with the same file stem would share a posterior file: "
                         f"{', '.join(sorted(dupes))}; rename them")
    existing = [str(p) for p in parts if p.exists()]
    if existing and not (overwrite or resume):
        raise InferError(f"{existing[0]}: output exists; use --overwrite to replace it "
                         f"(or --resume to continue it)")
    task_options = {k: v for k, v in options.items() if k not in CLIENT_OPTIONS}
    task_options.update(_portable(task_options))
    return parts, task_options


def infer_dask(client, run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
               out: str | os.PathLike, **options) -> tuple[Table, list[dict]]:
    """Run one :func:`cvae_pms.infer.infer` task per input file on ``client``, with the keyword
    ``options`` of :func:`~cvae_pms.infer.infer` (any of :func:`infer_options`, except
    ``model``: each worker loads its own); merge and write the summary, draw the plots.

    Returns (merged summary table, per-task info dicts with the part file path, counts,
    ``result`` (the task's :class:`~cvae_pms.infer.InferResult`) and ``plots`` (with
    ``plots``: the corner plots drawn from that part)); :func:`merged_result` sums them. Raises :class:`InferError` for an unknown option, bad paths, an unreadable prior or
    astrometry table or existing outputs (without ``overwrite`` or ``resume``; all before any
    work) or when a task fails.
    """
    parts, task_options = plan_dask(inputs, out, **options)
    summary, plots = options.get("summary"), options.get("plots")
    truth, log = options.get("truth"), options.get("log")
    max_plots = options.get("max_plots", inspect.signature(infer).parameters["max_plots"].default)
    paths = [Path(p) for p in inputs]
    run_dir = str(Path(run_dir).resolve())
    futures = [client.submit(_task, run_dir, str(Path(p).resolve()), str(part.resolve()),
                             task_options, key=f"cvae-pms-infer-{part.name}", pure=False)
               for p, part in zip(paths, parts)]
    results = _gather(client, futures, bool(options.get("progress", False)))
    infos = []
    for _, info, res, lines in results:
        for line in lines:
            if log is not None:
                log(line)
        infos.append({**info, "result": res})
    tables = [t for t, *_ in results]
    merged = vstack(tables, metadata_conflicts="silent") if tables else Table()
    if summary is not None:
        pf.write_summary(merged, summary)
    if plots is not None:
        from cvae_pms.plots.corner_plots import plot_posterior_file
        left = max_plots
        for info in infos:
            info["plots"] = (plot_posterior_file(info["part"], plots, max_plots=left,
                                                 truth=truth) if left > 0 else [])
            left -= len(info["plots"])
    return merged, infos


def _portable(options: dict) -> dict:
    """What a task needs instead of client-side paths and objects: the prior as a dict (read
    here once, errors before any work), the astrometry table as an absolute path (checked
    here)."""
    from cvae_pms.astrometry import AstrometryError, read_astrometry
    from cvae_pms.priors import Prior, PriorError, load_prior

    out: dict = {}
    try:
        prior = options.get("prior")
        if prior is not None:
            out["prior"] = (prior if isinstance(prior, Prior) else load_prior(prior)).to_dict()
        astrometry = options.get("astrometry")
        if astrometry is not None:
            read_astrometry(astrometry)
            out["astrometry"] = str(Path(astrometry).resolve())
    except (PriorError, AstrometryError) as exc:
        raise InferError(str(exc)) from exc
    return out


def _gather(client, futures: list, progress: bool) -> list:
    """The tasks' results in submission order (a tqdm bar of finished files with ``progress``);
    a failed task raises :class:`InferError` (an :class:`InferError` of the task as it is)."""
    try:
        if progress:
            import sys

            from distributed import as_completed
            from tqdm import tqdm
            with tqdm(total=len(futures), unit="file", desc="infer", file=sys.stderr) as bar:
                for _ in as_completed(futures):
                    bar.update(1)
        return client.gather(futures)
    except InferError:
        raise
    except Exception as exc:  # a worker-side error arrives re-raised with its own type
        raise InferError(f"a Dask inference task failed: {type(exc).__name__}: {exc}") from exc


def merged_result(infos: list[dict], out: str | os.PathLike,
                  summary: str | os.PathLike | None = None) -> InferResult:
    """One :class:`InferResult` of the tasks of :func:`infer_dask` (counts summed, per-file
    dicts merged, ``out`` the stem, plots of the run)."""
    total = InferResult(out=Path(out), summary=Path(summary) if summary else None)
    for info in infos:
        res = info["result"]
        for name in ("n_sources", "n_failed", "n_ood", "n_skipped", "n_no_parallax",
                     "n_low_ess", "n_poor_fit", "n_duplicates"):
            setattr(total, name, getattr(total, name) + getattr(res, name))
        total.seconds = max(total.seconds, res.seconds)
        total.gof_note = total.gof_note or res.gof_note
        total.per_file.update(res.per_file)
        total.unusable_files.update(res.unusable_files)
        total.plots += info.get("plots", [])
    return total
