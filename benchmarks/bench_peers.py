"""The CVAE against its peers at equal training budget: sbi NPE and the HGB baseline (issue 18).

    pip install -e '.[cpu,peers]'
    python benchmarks/bench_peers.py runs/cal-quick [--budget-s 1200] [--g 12,15,17]
        [--n-test 500] [--reference benchmarks/out/reference_g12,benchmarks/out/reference_g15,...]
        [--out benchmarks/out/peers]

Same training grid (the run's grid and its train split), same noise model (training's:
G uniform in the recipe range, transits 15-80, the model error at the true T_eff and
noise-free flux, then coefficient noise, through :func:`cvae_pms.simulator.simulate_observations`), same network features
(:meth:`cvae_pms.model.rundir.Run.features`), same held-out observations (the run's test rows
at each G, transits 15-80).

- **CVAE**: the run as trained (its training time is read from its history, the budget the
  others get unless ``--budget-s`` says otherwise).
- **sbi NPE** (Papamakarios & Murray 2016; Greenberg et al. 2019; sbi 0.27): a neural spline
  flow (Durkan et al. 2019; 5 transforms, 64 hidden units) on the features, trained on noisy
  simulations made once (``--copies`` per training row). Bounded support: the flow models
  ``logit(u)`` of the unit-box parameters and samples are mapped back by the sigmoid, so no
  sample leaves the box (the prior is the matching logistic). Simulation + training stop at
  the budget (training resumes epoch chunks until the wall clock is spent or sbi's early
  stopping ends it).
- **HGB**: :func:`cvae_pms.diagnostics.baseline.fit_baseline` on the same simulations
  (point estimate and 16/84 % quantiles; no posterior, so no P-P or 95 % coverage).

Per G and parameter: robust scatter, bias, 68/95 % coverage, P-P p, fraction of samples
outside the box, the Fisher-forecast ratio (scatter / Cramer-Rao forecast of the same
observations), sampling speed at S = 1,000; with ``--reference`` (``bench_reference.py``
outputs, comma-separated, one per G) the median 1-D JS and the 2-D JS of the T_eff-A0 and
log g-log Mdot pairs (bits) to the nested-sampling reference on each one's repeated stars,
with the reference's self floor beside them. A corner plot overlays the three for three
stars per reference. Writes ``OUT/peers.json``, ``OUT/peers.md`` and
``OUT/corner_g{G}_star*.png``; ``benchmarks/reproduce_peers.sh`` runs the whole chain.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

S = 1000


def simulate_features(run, theta, bp, rp, g_range, transits, rng):
    """Noisy observations (training's noise model) of grid rows -> network features (n, d)."""
    from cvae_pms import params
    from cvae_pms.simulator import draw_g_transits, simulate_observations
    from cvae_pms.xp.model_error import run_model_error
    g, nt = draw_g_transits(rng, theta.shape[0], g_range, transits)
    o = simulate_observations(bp, rp, g, nt, rng, teff=theta[:, params.INDEX["teff"]],
                              model_error_term=run_model_error(run))
    y, _ = run.features(o.bp, o.rp, o.bp_cov, o.rp_cov)
    return np.asarray(y, np.float32), o


class LogitNPE:
    """sbi NPE (neural spline flow) on ``logit(u)``; ``sample(y, n)`` -> unit-box (m, n, 7)."""

    def __init__(self, dim: int, seed: int):
        import torch
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn
        torch.manual_seed(seed)
        torch.set_num_threads(2)
        base = torch.distributions.Uniform(torch.zeros(dim), torch.ones(dim))
        logistic = torch.distributions.TransformedDistribution(
            base, [torch.distributions.transforms.SigmoidTransform().inv])
        self.prior = torch.distributions.Independent(logistic, 1)
        self.inference = NPE(prior=self.prior, density_estimator=posterior_nn(
            model="nsf", hidden_features=64, num_transforms=5), show_progress_bars=False)
        self.posterior = None
        self.epochs = 0

    def train(self, u: np.ndarray, y: np.ndarray, deadline: float, chunk: int = 5) -> None:
        import torch
        u = np.clip(u, 1e-6, 1 - 1e-6)
        self.inference.append_simulations(torch.as_tensor(np.log(u / (1 - u)), dtype=torch.float32),
                                          torch.as_tensor(y, dtype=torch.float32))
        net, converged = None, False
        while time.perf_counter() < deadline and not converged:
            before = self.epochs
            net = self.inference.train(training_batch_size=512, max_num_epochs=self.epochs + chunk,
                                       resume_training=self.epochs > 0)
            self.epochs = int(self.inference._summary["epochs_trained"][-1])
            converged = self.epochs < before + chunk          # sbi's early stopping fired
        self.posterior = self.inference.build_posterior(net)

    def sample(self, y: np.ndarray, n: int, seed: int) -> np.ndarray:
        import torch
        torch.manual_seed(seed)
        z = self.posterior.sample_batched((n,), x=torch.as_tensor(y, dtype=torch.float32),
                                          show_progress_bars=False)
        return torch.sigmoid(z).numpy().transpose(1, 0, 2).astype(np.float64)


def scores(samples: np.ndarray | None, point=None, truth=None, forecast=None) -> dict:
    """Per parameter metrics of posterior samples (n, S, 7) or a point prediction."""
    from cvae_pms import params
    from cvae_pms.diagnostics import accuracy, pp
    if samples is not None:
        table = accuracy.by_parameter(accuracy.accuracy(samples, truth))
        ppr = pp.run_pp(samples, truth)
        u = params.to_unit(samples)
        outside = np.mean(np.any((u < 0) | (u > 1), axis=2))
        for k, name in enumerate(params.NAMES):
            table[name]["pp_pvalue"] = float(ppr.pvalue[k])
            table[name]["outside_prior"] = float(np.mean((u[..., k] < 0) | (u[..., k] > 1)))
        table["_any_outside_prior"] = float(outside)
    else:
        table = accuracy.by_parameter(accuracy.point_accuracy(point[0], truth, point[1],
                                                              point[2]))
    if forecast is not None:
        for k, name in enumerate(params.NAMES):
            table[name]["fisher_ratio"] = table[name]["scatter"] / float(forecast[k])
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--budget-s", type=float, help="training budget per peer [s] (default: "
                    "the CVAE's recorded training time)")
    ap.add_argument("--g", default="12,15,17")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--copies", type=int, default=4, help="noise draws per training row (sbi)")
    ap.add_argument("--reference", help="bench_reference.py output dirs (comma-separated, one "
                    "per G) for the JS columns")
    ap.add_argument("--wait-reference", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for a bench_reference.py still running on "
                    "--reference to write its samples (default: do not wait)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/peers")
    a = ap.parse_args(argv)

    import cvae_pms
    from cvae_pms import params
    from cvae_pms.diagnostics.baseline import fit_baseline
    from cvae_pms.diagnostics.fisher_bound import forecast_scatter, observation_bounds
    from cvae_pms.diagnostics.likelihood import builtin_forward
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = load_run(a.run)
    post = cvae_pms.load(a.run)
    grid = open_grid(run.grid_info["path"])
    split = run.split()
    noise = run.config.get("noise", {})
    g_range = (float(noise.get("g_min", 9.0)), float(noise.get("g_max", 17.65)))
    transits = (int(noise.get("transits_min", 15)), int(noise.get("transits_max", 80)))
    cvae_train_s = _training_seconds(Path(a.run))
    budget = float(a.budget_s or cvae_train_s)
    rng = np.random.default_rng([a.seed, 7])
    report: dict = {"config": {**vars(a), "budget_s": budget, "cvae_training_s": cvae_train_s,
                               "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
                               "machine": "2-core x86_64, 24 GiB, no GPU"}, "by_g": {}}

    # --- the peers' training set: fresh noisy simulations of the train rows (in the budget)
    t0 = time.perf_counter()
    deadline = t0 + budget
    th_tr, bp_tr, rp_tr = grid.read(np.sort(split["train"]))
    ys, us = [], []
    for _ in range(a.copies):
        y, _ = simulate_features(run, th_tr, bp_tr, rp_tr, g_range, transits, rng)
        ok = np.isfinite(y).all(axis=1)
        ys.append(y[ok])
        us.append(params.to_unit(th_tr[ok]))
    y_tr, u_tr = np.concatenate(ys), np.concatenate(us)
    sim_s = time.perf_counter() - t0
    npe = LogitNPE(params.N_PARAMS, a.seed)
    npe.train(u_tr, y_tr, deadline)
    npe_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    hgb = fit_baseline(y_tr[: min(y_tr.shape[0], 100_000)], u_tr[: min(y_tr.shape[0], 100_000)],
                       seed=a.seed)
    report["training"] = {"n_simulations": int(y_tr.shape[0]), "simulate_s": sim_s,
                          "npe_total_s": npe_s, "npe_epochs": npe.epochs,
                          "hgb_fit_s": time.perf_counter() - t1}
    print(f"peers trained: {y_tr.shape[0]} simulations in {sim_s:.0f} s, NPE {npe.epochs} "
          f"epochs ({npe_s:.0f} s of {budget:.0f} s), HGB {report['training']['hgb_fit_s']:.0f} s",
          flush=True)

    # --- held-out observations at each G
    forward = builtin_forward(grid.meta)
    test = np.sort(rng.choice(split["test"], size=min(a.n_test, split["test"].size),
                              replace=False))
    th_te, bp_te, rp_te = grid.read(test)
    lines = []
    for g in [float(x) for x in a.g.split(",")]:
        y, o = simulate_features(run, th_te, bp_te, rp_te, (g, g), transits,
                                 np.random.default_rng([a.seed, 8, int(10 * g)]))
        ok = np.isfinite(y).all(axis=1)
        truth = th_te[ok]
        obs = {"bp": o.bp[ok], "rp": o.rp[ok], "bp_cov": o.bp_cov[ok], "rp_cov": o.rp_cov[ok]}
        fc = forecast_scatter(observation_bounds(forward, truth, obs["bp"], obs["rp"],
                                                 obs["bp_cov"], obs["rp_cov"]))
        post.sample({k: v[:2] for k, v in obs.items()}, n=S, seed=a.seed, gof=False)  # warm-up
        npe.sample(y[ok][:2], S, a.seed)
        t = time.perf_counter()
        cv = post.sample(obs, n=S, seed=a.seed, gof=False).samples
        cv_rate = ok.sum() / (time.perf_counter() - t)
        t = time.perf_counter()
        sb = params.from_unit(npe.sample(y[ok], S, a.seed))
        sb_rate = ok.sum() / (time.perf_counter() - t)
        pred = hgb.predict(y[ok])
        hg = [params.from_unit(x) for x in (pred.estimate, pred.p16, pred.p84)]
        res = {"n": int(ok.sum()),
               "cvae": scores(cv, truth=truth, forecast=fc), "npe": scores(sb, truth=truth,
                                                                            forecast=fc),
               "hgb": scores(None, point=hg, truth=truth, forecast=fc),
               "sources_per_s": {"cvae": float(cv_rate), "npe": float(sb_rate)}}
        report["by_g"][f"{g:g}"] = res
        lines += _markdown(g, res)
        print("\n".join(lines[-12:]), flush=True)

    report["js"] = []
    (out / "peers.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "peers.md").write_text("\n".join(lines) + "\n")       # kept if the JS part fails
    for ref_dir in (a.reference.split(",") if a.reference else []):
        _wait_for(Path(ref_dir) / "reference_samples.npz", a.wait_reference)
        report["js"].append(_reference_js(ref_dir, run, post, npe, out, a.seed))
        lines += _js_markdown(report["js"][-1])
        print("\n".join(_js_markdown(report["js"][-1])), flush=True)
        (out / "peers.json").write_text(json.dumps(report, indent=1, default=float))
        (out / "peers.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'peers.json'} and {out / 'peers.md'}")
    return 0


def _wait_for(path: Path, seconds: float) -> None:
    """Poll for ``path`` (written last by bench_reference.py) for up to ``seconds``."""
    end = time.monotonic() + seconds
    if not path.exists() and seconds > 0:
        print(f"waiting up to {seconds:.0f} s for {path}", flush=True)
    while not path.exists() and time.monotonic() < end:
        time.sleep(15)
    if not path.exists():
        raise SystemExit(f"{path}: no reference samples (run bench_reference.py first)")
    size = -1
    while path.stat().st_size != size:      # a writer still busy: wait until the size settles
        size = path.stat().st_size
        time.sleep(5)


def _reference_js(ref_dir: str, run, post, npe, out: Path, seed: int) -> dict:
    """JS (bits) of CVAE and NPE to the nested-sampling reference on bench_reference's
    repeated stars (regenerated from its config), beside the reference's self floor: medians
    of the 1-D JS per parameter and of the 2-D JS per pair of ``PAIRS``; corner figures."""
    from bench_reference import PAIRS, js_table, same_observations, test_stars
    from cvae_pms import params
    cfg = json.loads((Path(ref_dir) / "reference.json").read_text())["config"]
    ref = np.load(Path(ref_dir) / "reference_samples.npz")
    m = ref["second"].shape[0]
    meta = (json.loads((Path(cfg["run"]) / "grid.json").read_text())["meta"] if cfg.get("run")
            else None)
    theta, obs = test_stars(meta, cfg["n"], cfg["g"], cfg["seed"],
                            cfg.get("model_error", "empirical"))
    np.testing.assert_allclose(theta, ref["theta"], rtol=1e-12)
    if not same_observations(ref, obs["bp"]):
        raise SystemExit(f"{ref_dir}: reference made on other observations of its stars "
                         "(forward model or simulator changed); rerun bench_reference.py")
    obs = {k: v[:m] for k, v in obs.items()}
    first = [r[np.isfinite(r).all(axis=1)] for r in ref["first"][:m]]
    second = [r[np.isfinite(r).all(axis=1)] for r in ref["second"]]
    cv = [params.to_unit(s) for s in post.sample(obs, n=4000, seed=seed, gof=False).samples]
    y, _ = run.features(obs["bp"], obs["rp"], obs["bp_cov"], obs["rp_cov"])
    sb = list(npe.sample(np.asarray(y, np.float32), 4000, seed))
    tables = {"self_floor": js_table(first, second), "cvae": js_table(first, cv),
              "npe": js_table(first, sb)}
    for k in range(3):
        _corner(k, cfg["g"], first[k], cv[k], sb[k], params.to_unit(theta[k]),
                out / f"corner_g{cfg['g']:g}_star{k}.png")
    pairs = ["-".join(p) for p in PAIRS]
    res = {"g": cfg["g"], "n_stars": m, "reference": ref_dir}
    for name, (one, two) in tables.items():
        res[name] = dict(zip(params.NAMES, np.median(one, axis=0).tolist()))
        res[name + "_2d"] = dict(zip(pairs, np.median(two, axis=0).tolist()))
    return res


def _corner(k: int, g: float, ref, cv, sb, truth, path: Path) -> None:
    import corner
    import matplotlib.pyplot as plt

    from cvae_pms import params
    from cvae_pms.plots import plain_text
    style = dict(range=[(0, 1)] * 7, plot_datapoints=False, plot_density=False,
                 levels=(0.68, 0.95), bins=30)
    with plain_text():    # gaiaxpy's import turns on usetex, which needs LaTeX installed
        fig = corner.corner(ref, color="k", labels=[p.label for p in params.PARAMS],
                            truths=truth, **style)
        corner.corner(cv, fig=fig, color="C0", **style)
        corner.corner(sb, fig=fig, color="C3", **style)
        fig.suptitle(f"G = {g:g}, star {k}: reference (black), CVAE (blue), sbi NPE (red); "
                     "unit box")
        fig.savefig(path, dpi=80)
        plt.close(fig)


def _markdown(g: float, res: dict) -> list[str]:
    from cvae_pms import params
    rows = [f"\n**G = {g:g}** ({res['n']} stars; sources/s at S = 1,000: CVAE "
            f"{res['sources_per_s']['cvae']:.0f}, NPE {res['sources_per_s']['npe']:.0f})\n",
            "| parameter | scatter CVAE / NPE / HGB | bias CVAE / NPE / HGB | 68 % cov CVAE / NPE "
            "/ HGB | 95 % cov CVAE / NPE | P-P p CVAE / NPE | Fisher ratio CVAE / NPE / HGB |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in params.NAMES:
        c, n, h = res["cvae"][name], res["npe"][name], res["hgb"][name]
        f = lambda m, d=3: " / ".join(f"{x[m]:.{d}g}" for x in (c, n, h))  # noqa: E731
        rows.append(f"| {name} | {f('scatter')} | {f('bias')} | {f('coverage68', 2)} | "
                    f"{c['coverage95']:.2f} / {n['coverage95']:.2f} | {c['pp_pvalue']:.2g} / "
                    f"{n['pp_pvalue']:.2g} | {f('fisher_ratio', 2)} |")
    rows.append(f"\nsamples outside the box: CVAE {res['cvae']['_any_outside_prior']:.3f}, "
                f"NPE {res['npe']['_any_outside_prior']:.3f}")
    return rows


def _js_markdown(js: dict) -> list[str]:
    rows = [f"\n**JS to the nested-sampling reference** (G = {js['g']:g}, "
            f"{js['n_stars']} stars run twice, median, bits)\n",
            "| parameter | reference self floor | CVAE | NPE | CVAE / floor | NPE / floor |",
            "| --- | --- | --- | --- | --- | --- |"]
    for d in ("", "_2d"):
        f, c, n = js["self_floor" + d], js["cvae" + d], js["npe" + d]
        rows += [f"| {k} | {f[k]:.4f} | {c[k]:.4f} | {n[k]:.4f} | {c[k] / f[k]:.1f} | "
                 f"{n[k] / f[k]:.1f} |" for k in f]
    return rows


def _training_seconds(run_dir: Path) -> float:
    """Wall-clock training time of the run [s] from its history: ``time_s`` is cumulative
    (a resumed call continues from the last row), so the total is its last value; a history
    where it drops (concatenated from separate runs) sums each segment's last value."""
    import csv
    with open(run_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "time_s" not in rows[0]:
        raise SystemExit(f"{run_dir}/history.csv: no time_s column; pass --budget-s")
    t = np.array([float(r["time_s"]) for r in rows])
    ends = np.append(np.flatnonzero(np.diff(t) < 0), t.size - 1)   # last epoch of each call
    return float(t[ends].sum())


def _commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
