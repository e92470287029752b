"""Issue 15 (reliability), case by case through the CLI: an error is one ``Error:`` line naming
the file, exit status != 0 and no traceback; no temporary, partial or lock file is left behind;
no row is lost across an interruption and ``--resume``.

Kills are reproduced by the files a ``kill -9`` leaves (a checkpoint-less model dir, an
``OUT.tmp-<dead pid>``) or by an interruption inside the chunk loop: deterministic and fast.
``benchmarks/bench_kill_resume.py`` does real ``kill -9`` at random moments.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.cli import main

import helpers_infer as h

ROOT = Path(__file__).resolve().parents[1]
N_OBS = 20
#: source_id 3 occurs at input rows 2, 5 and 17 of the duplicate input.
DUP_ROWS = (2, 5, 17)


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def obs_dir(tmp_path_factory):
    """Observations of N_OBS stand-in stars (source_id 1..20) and the same with a duplicate."""
    d = tmp_path_factory.mktemp("rel_obs")
    u = np.random.default_rng(15).uniform(0.15, 0.85, (N_OBS, 7))
    u[:, 6] *= 0.3
    theta = params.from_unit(u)
    h.write_observations(d / "obs.csv", theta, np.full(N_OBS, 14.0), seed=1)
    sid = np.arange(1, N_OBS + 1, dtype=np.int64)
    sid[list(DUP_ROWS)] = 3
    h.write_observations(d / "dup.csv", theta, np.full(N_OBS, 14.0), seed=1, source_id=sid)
    return d


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder no file can be created in: mode 0555, and, for root (who ignores modes),
    immutable (``chattr +i``); skipped where neither works."""
    from cvae_pms.outputs import writable_problem

    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    if writable_problem(d) is None and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    try:
        if writable_problem(d) is None:
            pytest.skip("cannot make a read-only folder here (root without chattr +i)")
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        d.chmod(0o755)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(r, *names: str) -> str:
    """Exit status != 0, one ``Error:`` line naming every one of ``names``, no traceback."""
    assert r.exit_code not in (0, None), r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.output
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def assert_ok(r) -> None:
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert not [ln for ln in r.output.splitlines() if ln.startswith("Error:")], r.output


def strays(folder: Path) -> list[str]:
    """Temporary, partial and lock files in ``folder`` (none should be left)."""
    return sorted(p.name for p in folder.iterdir()
                  if ".tmp-" in p.name or p.name.startswith("tmp-")
                  or p.name.endswith((".partial", ".lock")))


def infer_args(run, inp, out, *extra):
    return ("infer", run, inp, "--out", out, "--samples", 8, "--batch", 4, "--quiet", *extra)


def interrupt_after(monkeypatch, n_chunks: int) -> None:
    """Make the (n_chunks + 1)-th chunk of infer raise KeyboardInterrupt (Ctrl-C)."""
    import cvae_pms.infer as infer_mod

    real, calls = infer_mod.infer_batch, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) > n_chunks:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(infer_mod, "infer_batch", flaky)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def by_row(path: Path):
    """(input_row order, posterior) of a posterior file."""
    post = pf.read_posterior(path)
    return np.argsort(post.input_row), post


def train_args(run, out, epochs: int, *extra):
    sets = [a for o in h.TINY_OVERRIDES for a in ("--set", o)]
    return ("train", "--grid", run.parent / "grid.h5", "--config", run.parent / "tiny.toml",
            "--out", out, *sets, "--set", f"training.epochs={epochs}", *extra)


# --------------------------------------------------------------------------- 1 and 10: train
@pytest.mark.slow
def test_1_train_killed_before_its_first_checkpoint_restarts_on_resume(run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    for name in ("checkpoints", "tensorboard"):
        shutil.rmtree(killed / name)
    for name in ("model.weights.h5", "history.csv", "loss.png", "ood.npz"):
        (killed / name).unlink()
    (killed / f"tmp-{dead_pid()}.weights.h5").write_bytes(b"half a weights file")
    r = cli(*train_args(run, killed, 1))
    assert "--resume" in assert_error(r, killed, "first checkpoint")
    r = cli(*train_args(run, killed, 1, "--resume"))
    assert_ok(r)
    assert "starting from scratch with its saved config" in r.output
    assert (killed / "checkpoints" / "ckpt-1.npz").is_file()
    assert (killed / "model.weights.h5").is_file() and (killed / "ood.npz").is_file()
    with open(killed / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]
    assert strays(killed) == [] and strays(tmp_path) == []


@pytest.mark.slow
def test_10_damaged_newest_checkpoint_falls_back_to_the_older_one(run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run, work)
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [
        "ckpt-2.npz", "ckpt-3.npz"]
    data = work / "checkpoints" / "ckpt-3.npz"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    r = cli(*train_args(run, work, 4, "--resume"))
    assert_ok(r)
    assert "ckpt-3.npz: damaged checkpoint" in r.output and "falling back" in r.output
    assert "resuming" in r.output and "at epoch 2" in r.output
    with open(work / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]
    assert (work / "checkpoints" / "ckpt-4.npz").is_file()
    assert strays(work) == [] and strays(tmp_path) == []


# --------------------------------------------------------------------------- 2: model dir
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_network(key, value):
    def edit(d: Path) -> None:
        cfg = json.loads((d / "network.json").read_text())
        cfg[key] = value
        (d / "network.json").write_text(json.dumps(cfg))
    return edit


@pytest.mark.parametrize("damage, named, why", [
    (lambda d: _truncate(d / "model.weights.h5"), "model.weights.h5", "damaged"),
    (_edit_network("trunk", [128, 64]), "model.weights.h5", "does not match network.json"),
    (_edit_network("banana", 1), "network.json", "banana"),
    (lambda d: _truncate(d / "features.npz"), "features.npz", "damaged"),
], ids=["weights-truncated", "network-width", "network-unknown-key", "features-truncated"])
def test_2_damaged_model_dir_file_is_named(run, obs_dir, tmp_path, damage, named, why):
    model = tmp_path / "model"
    shutil.copytree(run, model)
    damage(model)
    out = tmp_path / "post.h5"
    assert_error(cli(*infer_args(model, obs_dir / "obs.csv", out)), model / named, why)
    assert not out.exists() and strays(tmp_path) == []


def test_2_damaged_ood_index_is_named_with_its_rebuild_command(run, obs_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(run, model)
    _truncate(model / "ood.npz")
    out = tmp_path / "post.h5"
    msg = assert_error(cli(*infer_args(model, obs_dir / "obs.csv", out)), model / "ood.npz",
                       "cannot read OOD index")
    assert f"cvae-pms ood rebuild {model}" in msg
    assert not out.exists() and strays(tmp_path) == [] and strays(model) == []
    assert_ok(cli("ood", "rebuild", model))
    with np.load(model / "ood.npz") as f:    # a complete file again
        assert f.files
    assert_ok(cli(*infer_args(model, obs_dir / "obs.csv", out)))
    assert len(pf.read_posterior(out, samples=False).source_id) == N_OBS
    assert strays(tmp_path) == [] and strays(model) == []


# --------------------------------------------------------------------------- 3: read-only
def test_3_read_only_output_or_summary_folder_fails_before_any_work(run, obs_dir, tmp_path,
                                                                     readonly_dir):
    inp = obs_dir / "obs.csv"
    assert_error(cli(*infer_args(run, inp, readonly_dir / "p.h5")), readonly_dir / "p.h5",
                 "not writable")
    # the summary is checked before the model is even looked at (here: it does not exist)
    out = tmp_path / "p.h5"
    assert_error(cli(*infer_args(tmp_path / "no_model", inp, out, "--summary",
                                 readonly_dir / "s.ecsv")), readonly_dir / "s.ecsv",
                 "not writable")
    assert_error(cli(*train_args(run, readonly_dir / "model", 1)), readonly_dir / "model",
                 "not writable")
    assert not out.exists() and strays(tmp_path) == []
    assert list(readonly_dir.iterdir()) == []


# --------------------------------------------------------------------------- 4: duplicates
def test_4_duplicate_source_ids_flagged_and_kept_across_resume(run, obs_dir, tmp_path,
                                                               monkeypatch):
    inp = obs_dir / "dup.csv"
    ref = tmp_path / "ref.h5"
    r = cli(*infer_args(run, inp, ref))
    assert_ok(r)
    assert "warning:" in r.output and "source_id 3 at input rows 2, 5, 17" in r.output
    order, want = by_row(ref)
    dup = (want.status[order] & pf.FLAG_DUPLICATE_SOURCE_ID) > 0
    assert np.flatnonzero(dup).tolist() == list(DUP_ROWS)

    out = tmp_path / "post.h5"
    interrupt_after(monkeypatch, 2)               # rows 0-7 done, then Ctrl-C
    assert_error(cli(*infer_args(run, inp, out)), "interrupted", f"{out}.partial")
    monkeypatch.undo()
    assert pf.read_posterior(Path(f"{out}.partial"), samples=False).input_row.tolist() == \
        list(range(8))
    r = cli(*infer_args(run, inp, out, "--resume"))
    assert_ok(r)
    assert "8 already done" in r.output
    order_g, got = by_row(out)
    assert got.input_row[order_g].tolist() == list(range(N_OBS))       # no row lost
    np.testing.assert_array_equal(got.source_id[order_g], want.source_id[order])
    np.testing.assert_array_equal(got.status[order_g], want.status[order])   # flag 256 too
    np.testing.assert_array_equal(got.samples[order_g], want.samples[order])
    assert strays(tmp_path) == []


# --------------------------------------------------------------------------- 5: orphan tmp
def test_5_orphan_tmp_removed_after_resume_and_never_preferred_to_the_result(
        run, obs_dir, tmp_path, monkeypatch):
    inp, out = obs_dir / "obs.csv", tmp_path / "post.h5"
    interrupt_after(monkeypatch, 1)
    assert_error(cli(*infer_args(run, inp, out)), "interrupted")
    monkeypatch.undo()
    orphan = tmp_path / f"post.h5.tmp-{dead_pid()}"       # what a kill -9 leaves
    os.replace(f"{out}.partial", orphan)
    spare = tmp_path / "spare.h5"
    shutil.copyfile(orphan, spare)
    r = cli(*infer_args(run, inp, out, "--resume"))
    assert_ok(r)
    assert f"resuming from {orphan}" in r.output and "4 already done" in r.output
    assert not orphan.exists() and strays(tmp_path) == []
    complete = pf.read_posterior(out)
    assert sorted(complete.input_row.tolist()) == list(range(N_OBS))
    # an orphan older than the complete file: a later --resume continues the complete file
    os.replace(spare, orphan)
    old = out.stat().st_mtime_ns - 10**9
    os.utime(orphan, ns=(old, old))
    r = cli(*infer_args(run, inp, out, "--resume"))
    assert_ok(r)
    assert f"resuming from {out}:" in r.output and f"{N_OBS} already done" in r.output
    assert not orphan.exists() and strays(tmp_path) == []
    again = pf.read_posterior(out)
    np.testing.assert_array_equal(again.source_id, complete.source_id)
    np.testing.assert_array_equal(again.samples, complete.samples)


# --------------------------------------------------------------------------- 6: two writers
def test_6_second_writer_of_the_same_output_fails_with_a_lock_error(run, obs_dir, tmp_path):
    out = tmp_path / "post.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom cvae_pms.outputs import OutputLock\n"
         "OutputLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)",
         str(out)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
            "PYTHONPATH", "")])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = assert_error(cli(*infer_args(run, obs_dir / "obs.csv", out)), out,
                           f"{out}.lock", f"process {holder.pid}")
        assert "being written by" in err
        assert not out.exists() and Path(f"{out}.lock").exists()    # the holder's, kept
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = cli(*infer_args(run, obs_dir / "obs.csv", out))            # stale lock taken over
    assert_ok(r)
    assert f"stale lock of process {holder.pid}" in r.output
    assert out.is_file() and strays(tmp_path) == []


# --------------------------------------------------------------------------- 7: overwrite
@pytest.fixture(scope="module")
def grid_table(run, tmp_path_factory):
    """A 30-row grid table (CSV, archive-style coefficient strings) for ``grid ingest``."""
    from cvae_pms.grid.gridfile import open_grid

    with open_grid(run.parent / "grid.h5") as g:
        theta, bp, rp = g.read(np.arange(30))
    path = tmp_path_factory.mktemp("rel_ingest") / "table.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*params.NAMES, "bp_coefficients", "rp_coefficients"])
        for t, b, r in zip(theta, bp, rp):
            w.writerow([*map(repr, t.tolist()), str(b.tolist()), str(r.tolist())])
    return path


def test_7_existing_outputs_refused_without_overwrite(run, obs_dir, tmp_path, grid_table):
    out = tmp_path / "post.h5"
    assert_ok(cli(*infer_args(run, obs_dir / "obs.csv", out)))
    before = out.read_bytes()
    assert "--overwrite" in assert_error(cli(*infer_args(run, obs_dir / "obs.csv", out)),
                                         out, "exists")
    assert out.read_bytes() == before
    assert_ok(cli(*infer_args(run, obs_dir / "dup.csv", out, "--overwrite")))
    assert pf.read_posterior(out, samples=False).input_file[0].endswith("dup.csv")

    grid = tmp_path / "grid.h5"
    assert_ok(cli("grid", "ingest", grid_table, "--out", grid))
    before = grid.read_bytes()
    assert "--overwrite" in assert_error(cli("grid", "ingest", grid_table, "--out", grid),
                                         grid, "exists")
    assert grid.read_bytes() == before
    assert_ok(cli("grid", "ingest", grid_table, "--out", grid, "--overwrite"))
    assert strays(tmp_path) == []


# --------------------------------------------------------------------------- 8: input errors
def test_8_input_errors_leave_no_partial(run, obs_dir, tmp_path):
    lines = (obs_dir / "obs.csv").read_text().splitlines()
    broken = tmp_path / "broken.csv"                         # unterminated quote in row 1
    broken.write_text("\n".join(lines[:2] + [lines[2][:200]]) + "\n")
    not_xp = tmp_path / "not_xp.csv"
    not_xp.write_text("source_id,foo\n1,2\n")
    outs = tmp_path / "outs"
    outs.mkdir()
    for inp, why in ((broken, "not a readable CSV table"), (not_xp, "not an XP table"),
                     (tmp_path / "missing.csv", "no such input file")):
        assert_error(cli(*infer_args(run, inp, outs / "post.h5")), inp, why)
        assert list(outs.iterdir()) == []
    # an input error after completed rows keeps exactly those rows (not an empty partial)
    late = tmp_path / "late.csv"
    late.write_text("\n".join(lines[:9] + [lines[9][:200]]) + "\n")   # rows 0-7 fine
    assert_error(cli(*infer_args(run, late, outs / "post.h5")), late)
    partial = pf.read_posterior(outs / "post.h5.partial", samples=False)
    assert partial.input_row.tolist() == list(range(8))
    assert sorted(p.name for p in outs.iterdir()) == ["post.h5.partial"]


# --------------------------------------------------------------------------- 9 and 11: simulate
@pytest.mark.parametrize("g", ["-30", "40", "12:40"])
def test_9_simulate_rejects_g_outside_the_noise_model_range(run, tmp_path, g):
    out = tmp_path / "sim.csv"
    assert_error(cli("simulate", "--grid", run.parent / "grid.h5", "--rows", "all", "--n", 5,
                     "--g-mag", g, "--out", out), "--g-mag", "noise model's G range 3..21")
    assert list(tmp_path.iterdir()) == []


def test_11_simulate_n_larger_than_the_split_warns(run, tmp_path):
    from cvae_pms.training import DEFAULT_CONFIG, split_indices
    from cvae_pms.xp.archive import read_xp

    out = tmp_path / "sim.csv"
    r = cli("simulate", "--grid", run.parent / "grid.h5", "--n", 100000, "--out", out)
    assert_ok(r)
    t = DEFAULT_CONFIG["training"]
    n = split_indices(1500, 1, t["val_fraction"], t["test_fraction"])["test"].size
    assert len(read_xp(out)) == n
    assert f"warning: --n 100000 is larger than the {n} rows of the test split" in r.stderr
    assert f"simulating {n}" in r.stderr


def test_11_map_names_an_unknown_target(grid_table, tmp_path):
    out = tmp_path / "grid.h5"
    err = assert_error(cli("grid", "ingest", grid_table, "--out", out, "--map", "mass=banana"),
                       "--map mass=banana", "'banana' is not one of our column names")
    assert "missing" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_11_no_tensorflow_start_up_lines_without_verbose(run, obs_dir, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "post.h5"
    proc = subprocess.run([sys.executable, "-c", "from cvae_pms.cli import main; main()",
                           *map(str, infer_args(run, obs_dir / "obs.csv", out))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    tf_lines = [ln for ln in proc.stderr.splitlines()
                if ln[:1] in "IWEF" and ln[1:5].isdigit() or any(
                    k in ln for k in ("absl", "oneDNN", "cuInit", "cuda", "tensorflow/"))]
    assert tf_lines == [], proc.stderr


def test_6b_lock_creates_a_missing_output_folder(tmp_path):
    """``--out runs/new`` with no ``runs/`` yet: the lock (and so the output) gets its folder."""
    from cvae_pms.outputs import OutputLock
    target = tmp_path / "not" / "yet" / "model"
    lock = OutputLock(target).acquire()
    try:
        assert Path(f"{target}.lock").is_file()
    finally:
        lock.release()
    assert not Path(f"{target}.lock").exists()
