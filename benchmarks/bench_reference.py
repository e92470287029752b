"""Is the nested-sampling reference calibrated, and how close is the CVAE to it? (issue 18)

    python benchmarks/bench_reference.py [--run runs/cal-quick] [--n 100] [--n-repeat 30]
        [--g 15] [--nlive 250] [--procs 2] [--sampler dynesty|emcee] [--out DIR]
        [--reuse DIR] [--model-error empirical|parametric]

Test stars: parameters drawn uniformly in the box (the grid's prior, so the reference's
prior is the true one), spectra from the built-in forward model with the settings of the
run's grid (default settings without ``--run``), observed at G = ``--g`` with transits
uniform in the recipe range (15-80) through :func:`cvae_pms.simulator.simulate_observations`
(the model error at the star's true T_eff and noise-free flux, then coefficient noise:
what training sees). ``--model-error`` picks the model-error term of both the observations
and the likelihood (:meth:`cvae_pms.xp.model_error.ModelError.from_config`: the shipped
empirical one, 3-8 % and T_eff dependent, or the parametric 0.5 % one of a run trained with
``--set noise.model_error=parametric``); it should match the ``--run``'s.

Reference: :func:`cvae_pms.diagnostics.reference_nested.run_dynesty` on
:class:`~cvae_pms.diagnostics.likelihood.XPLikelihood` with ``teff_dependent=True`` and
``model_error_at="best_fit"``
(``--sampler emcee``: :func:`~cvae_pms.diagnostics.reference_mcmc.run_emcee` on the same
likelihood, for comparison). Reported:

- coverage: fraction of stars whose true value lies inside the central 68 % / 95 % interval,
  per parameter, with the binomial standard error ``sqrt(p (1 - p) / n)`` at the nominal p;
- self floor: 1-D JS divergence (bits) per parameter, and 2-D for (T_eff, A0) and
  (log g, log Mdot), between two runs with different seeds on the first ``--n-repeat`` stars;
- with ``--run``: the CVAE's JS to the reference on the same stars and the ratio of medians;
  and, on all ``--n`` stars, the accuracy the exact posterior reaches beside the CVAE's and the
  Fisher forecast's (robust scatter of posterior medians about the truth, median posterior
  standard deviation), so the CVAE is measured against what the data allow, not only against
  the local Cramer-Rao forecast (which the exact posterior beats near the box edges).

Writes ``OUT/reference.json`` (config, per-star results) and ``OUT/reference_samples.npz``;
prints a Markdown table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = (("teff", "a0"), ("logg", "log_mdot"))
_STATE: dict = {}


def _init(meta: dict, obs: dict, sampler: str, nlive: int, model_error: str) -> None:
    from cvae_pms.diagnostics.likelihood import builtin_forward
    _STATE.update(forward=builtin_forward(meta), obs=obs, sampler=sampler, nlive=nlive,
                  model_error=model_error_term(model_error))


def model_error_term(kind: str = "empirical"):
    """The :class:`~cvae_pms.xp.model_error.ModelError` of a training config's
    ``noise.model_error`` (``"empirical"`` or ``"parametric"``)."""
    from cvae_pms.xp.model_error import ModelError
    return ModelError.from_config({"model_error": kind})


def _reference(job: tuple[int, int]) -> tuple[int, int, np.ndarray, dict]:
    """One reference run: (star, seed) -> unit-box samples and the run's summary."""
    from cvae_pms import params
    from cvae_pms.diagnostics.likelihood import XPLikelihood
    i, seed = job
    o = _STATE["obs"]
    like = XPLikelihood(_STATE["forward"], o["bp"][i], o["rp"][i], o["bp_cov"][i],
                        o["rp_cov"][i], to_physical=params.from_unit, teff_dependent=True,
                        model_error_at="best_fit", seed=seed,
                        model_error_term=_STATE["model_error"])
    if _STATE["sampler"] == "dynesty":
        from cvae_pms.diagnostics.reference_nested import run_dynesty
        res = run_dynesty(like, params.N_PARAMS, seed=seed, nlive=_STATE["nlive"])
    else:
        from cvae_pms.diagnostics.reference_mcmc import run_emcee
        res = run_emcee(like, params.N_PARAMS, seed=seed)
    return i, seed, res.samples_unit.astype(np.float32), res.summary()


def test_stars(meta: dict | None, n: int, g_mag: float, seed: int,
               model_error: str = "empirical") -> tuple[np.ndarray, dict]:
    """The benchmark's stars: parameters (n, 7) uniform in the box and their observations
    (``bp``, ``rp``, ``bp_cov``, ``rp_cov``) at ``g_mag`` with the ``model_error`` term of
    :func:`model_error_term`; deterministic for a seed."""
    from cvae_pms import params
    from cvae_pms.diagnostics.likelihood import builtin_forward
    from cvae_pms.grid.synth import sample_box
    from cvae_pms.physics.sed import forward_model_meta
    from cvae_pms.simulator import draw_g_transits, simulate_observations
    theta = sample_box(n, seed, "random")
    rng = np.random.default_rng([seed, 15])
    g, nt = draw_g_transits(rng, n, (g_mag, g_mag), (15, 80))
    bp, rp = builtin_forward(meta or {"forward_model": forward_model_meta()})(theta)
    o = simulate_observations(bp, rp, g, nt, rng, teff=theta[:, params.INDEX["teff"]],
                              model_error_term=model_error_term(model_error))
    return theta, {"bp": o.bp, "rp": o.rp, "bp_cov": o.bp_cov, "rp_cov": o.rp_cov}


def coverage(samples_unit: list[np.ndarray], truth_unit: np.ndarray, level: float) -> np.ndarray:
    """Fraction (p,) of stars whose truth is inside the central ``level`` interval."""
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    inside = [(np.percentile(s, lo, axis=0) <= t) & (t <= np.percentile(s, hi, axis=0))
              for s, t in zip(samples_unit, truth_unit)]
    return np.mean(inside, axis=0)


def js_table(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per star 1-D JS (n, 7) and 2-D JS for :data:`PAIRS` (n, len(PAIRS)), in bits."""
    from cvae_pms import params
    from cvae_pms.diagnostics.divergence import js_divergence_1d, js_divergence_2d
    one = np.array([js_divergence_1d(x, y) for x, y in zip(a, b)])
    idx = [(params.INDEX[p], params.INDEX[q]) for p, q in PAIRS]
    two = np.array([[js_divergence_2d(x, y)[min(i, j), max(i, j)] for i, j in idx]
                    for x, y in zip(a, b)])
    return one, two


def accuracy(theta: np.ndarray, ref_unit: list[np.ndarray], cvae_unit: list[np.ndarray],
             meta: dict, obs: dict, model_error: str = "empirical") -> dict:
    """Per parameter, physical units: robust scatter (1.4826 MAD) of the posterior medians
    about the truth ``theta`` (n, 7) for the reference and the CVAE (unit-box samples per
    star), the Fisher forecast of that scatter for the same observations, and the median over
    stars of each posterior's standard deviation."""
    from cvae_pms import params
    from cvae_pms.diagnostics.fisher_bound import forecast_scatter, observation_bounds
    from cvae_pms.diagnostics.likelihood import builtin_forward
    from cvae_pms.diagnostics.metrics import robust_scatter

    out = {}
    for name, samples in (("reference", ref_unit), ("cvae", cvae_unit)):
        phys = [params.from_unit(s) for s in samples]
        out["scatter_" + name] = robust_scatter(np.array([np.median(s, 0) for s in phys]), theta)
        out["sd_" + name] = np.median([np.std(s, 0) for s in phys], axis=0)
    out["fisher_forecast"] = forecast_scatter(observation_bounds(
        builtin_forward(meta), theta, obs["bp"], obs["rp"], obs["bp_cov"], obs["rp_cov"],
        model_error=model_error_term(model_error)))
    return {n: {k: float(v[i]) for k, v in out.items()} for i, n in enumerate(params.NAMES)}


def cvae_samples(run: str, obs: dict, n_samples: int) -> list[np.ndarray]:
    """The CVAE's unit-box posterior samples per star (``cvae_pms.load(run).sample``)."""
    import cvae_pms
    from cvae_pms import params
    res = cvae_pms.load(run).sample({k: obs[k] for k in ("bp", "rp", "bp_cov", "rp_cov")},
                                    n=n_samples, seed=0, gof=False)
    return [params.to_unit(s) for s in res.samples]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="CVAE model dir to compare (its grid's forward model is used)")
    ap.add_argument("--n", type=int, default=100, help="test stars (coverage)")
    ap.add_argument("--n-repeat", type=int, default=30, help="stars with a second run (JS)")
    ap.add_argument("--g", type=float, default=15.0, help="G magnitude of the test stars")
    ap.add_argument("--nlive", type=int, default=250)
    ap.add_argument("--sampler", choices=("dynesty", "emcee"), default="dynesty")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/reference")
    ap.add_argument("--model-error", choices=("empirical", "parametric"), default="empirical",
                    help="model-error term of the observations and the likelihood (match "
                    "the --run's noise.model_error)")
    ap.add_argument("--reuse", help="folder of an earlier run on the same test stars: take its "
                    "reference samples instead of sampling again (e.g. to add --run)")
    a = ap.parse_args(argv)

    from cvae_pms import params
    from cvae_pms.physics.sed import forward_model_meta

    meta = (None if not a.run else json.loads((Path(a.run) / "grid.json").read_text())["meta"])
    theta, obs = test_stars(meta, a.n, a.g, a.seed, a.model_error)
    meta = meta or {"forward_model": forward_model_meta()}
    digest = hashlib.sha256(np.ascontiguousarray(obs["bp"]).tobytes()).hexdigest()[:16]
    if a.reuse:
        ref, second_list, runs, wall = _load(Path(a.reuse), obs["bp"], a.n, a.n_repeat)
        first = {i: (ref[i], runs[i]) for i in range(a.n)}
        second = dict(enumerate(second_list))
    else:
        jobs = [(i, 1000 + i) for i in range(a.n)] + [(i, 2000 + i) for i in range(a.n_repeat)]
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(a.procs, _init,
                                         (meta, obs, a.sampler, a.nlive,
                                          a.model_error)) as pool:
            done = list(pool.imap_unordered(_reference, jobs))
        wall = time.perf_counter() - t0
        first = {i: (s, summ) for i, seed, s, summ in done if seed < 2000}
        second = {i: s for i, seed, s, _ in done if seed >= 2000}
        ref = [first[i][0] for i in range(a.n)]
    truth = params.to_unit(theta)

    cov68, cov95 = coverage(ref, truth, 0.68), coverage(ref, truth, 0.95)
    se68, se95 = np.sqrt(0.68 * 0.32 / a.n), np.sqrt(0.95 * 0.05 / a.n)
    self1, self2 = js_table(ref[:a.n_repeat], [second[i] for i in range(a.n_repeat)])
    report = {"config": {**vars(a), "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
                         "wall_s": wall, "observations_digest": digest,
                         "scale_prior": "log-uniform"},
              "coverage68": dict(zip(params.NAMES, cov68.tolist())),
              "coverage95": dict(zip(params.NAMES, cov95.tolist())),
              "binomial_se": {"68": se68, "95": se95},
              "self_js_1d_median": dict(zip(params.NAMES, np.median(self1, 0).tolist())),
              "self_js_2d_median": dict(zip(["-".join(p) for p in PAIRS],
                                            np.median(self2, 0).tolist())),
              "runs": [first[i][1] for i in range(a.n)]}
    print(f"\n{a.sampler} reference, {a.n} stars at G = {a.g:g} ({a.n_repeat} twice), "
          f"nlive {a.nlive}, {wall:.0f} s on {a.procs} processes "
          f"(median {np.median([r['wall_s'] for r in report['runs']]):.1f} s per run)\n")
    rows = [("parameter", "68 % cov", "95 % cov", "self JS 1-D [bits]")]
    rows += [(p, f"{c68:.2f}", f"{c95:.2f}", f"{j:.4f}")
             for p, c68, c95, j in zip(params.NAMES, cov68, cov95, np.median(self1, 0))]
    if a.run:
        cv_all = cvae_samples(a.run, obs, 4000)
        cv = cv_all[:a.n_repeat]
        c1, c2 = js_table(ref[:a.n_repeat], cv)
        report["cvae"] = {"run": a.run,
                          "js_1d_median": dict(zip(params.NAMES, np.median(c1, 0).tolist())),
                          "js_2d_median": dict(zip(["-".join(p) for p in PAIRS],
                                                   np.median(c2, 0).tolist())),
                          "ratio_1d": dict(zip(params.NAMES, (np.median(c1, 0)
                                                              / np.median(self1, 0)).tolist()))}
        rows[0] += ("CVAE JS 1-D", "ratio")
        for k, p in enumerate(params.NAMES):
            rows[k + 1] += (f"{np.median(c1[:, k]):.4f}",
                            f"{np.median(c1[:, k]) / np.median(self1[:, k]):.1f}")
    print("| " + " | ".join(rows[0]) + " |\n|" + " --- |" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    if a.run:
        report["accuracy"] = accuracy(theta, ref, cv_all, meta, obs, a.model_error)
        print(f"\naccuracy on the {a.n} stars (physical units): robust scatter of posterior "
              "medians about the truth, reference / CVAE / Fisher forecast; median posterior "
              "sd, reference / CVAE\n")
        print("| parameter | scatter reference | scatter CVAE | Fisher forecast | CVAE / "
              "reference | sd reference | sd CVAE |\n|" + " --- |" * 7)
        for n, r in report["accuracy"].items():
            print(f"| {n} | {r['scatter_reference']:.3g} | {r['scatter_cvae']:.3g} | "
                  f"{r['fisher_forecast']:.3g} | {r['scatter_cvae'] / r['scatter_reference']:.2f}"
                  f" | {r['sd_reference']:.3g} | {r['sd_cvae']:.3g} |")
    print(f"\nbinomial standard error: 68 % {se68:.3f}, 95 % {se95:.3f}")
    for name, med in report["self_js_2d_median"].items():
        extra = (f", CVAE {report['cvae']['js_2d_median'][name]:.4f}" if a.run else "")
        print(f"2-D JS {name}: self {med:.4f}{extra}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(report, indent=1))
    tmp = out / "reference_samples.tmp.npz"    # written, then renamed: readers never see half
    np.savez_compressed(tmp, theta=theta, first=_padded(ref),
                        second=_padded([second[i] for i in range(a.n_repeat)]),
                        digest=np.array(digest), bp=obs["bp"])
    tmp.replace(out / "reference_samples.npz")
    print(f"wrote {out / 'reference.json'}")
    return 0


def same_observations(saved, bp: np.ndarray) -> bool:
    """Were the reference samples in ``saved`` (an opened npz) made on these observations?
    Compared to 1e-6 relative (BLAS thread counts change the last bits of the simulated
    coefficients); files from before the ``bp`` array was stored carry only a byte digest."""
    if "bp" in saved:
        ref = saved["bp"]
        return ref.shape == bp.shape and bool(np.allclose(ref, bp, rtol=1e-6,
                                                          atol=1e-9 * np.abs(bp).max()))
    digest = hashlib.sha256(np.ascontiguousarray(bp).tobytes()).hexdigest()[:16]
    return "digest" in saved and str(saved["digest"]) == digest


def _load(folder: Path, bp: np.ndarray, n: int, n_repeat: int):
    """Reference samples of an earlier run (``--reuse``): (first, second, runs, wall_s); the
    test observations must be the same (same ``--n``, ``--g``, ``--seed`` and forward model)."""
    with np.load(folder / "reference_samples.npz") as d:
        if not same_observations(d, bp):
            raise SystemExit(f"{folder}: its reference was run on other test observations "
                             "(different --n, --g, --seed or forward model)")
        first, second = d["first"], d["second"]
    if first.shape[0] != n or second.shape[0] < n_repeat:
        raise SystemExit(f"{folder}: holds {first.shape[0]} stars ({second.shape[0]} twice), "
                         f"asked for {n} ({n_repeat})")
    rep = json.loads((folder / "reference.json").read_text())

    def unpad(x):
        return [s[np.isfinite(s).all(axis=1)] for s in x]
    return unpad(first), unpad(second[:n_repeat]), rep["runs"], rep["config"]["wall_s"]


def _padded(samples: list[np.ndarray]) -> np.ndarray:
    """Stack per-star sample sets of unequal length, NaN-padded (n, S_max, p)."""
    out = np.full((len(samples), max(s.shape[0] for s in samples), samples[0].shape[1]),
                  np.nan, np.float32)
    for k, s in enumerate(samples):
        out[k, :s.shape[0]] = s
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
