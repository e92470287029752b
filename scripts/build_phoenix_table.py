#!/usr/bin/env python
"""Build the shipped photosphere table ``cvae_pms/data/phoenix_aces.npz`` from SEDFit's PHOENIX grid.

Source: the PHOENIX-ACES model atmospheres (Husser et al. 2013, A&A 553, A6) as binned by
the MIT-licensed PyPI package ``SEDFit==0.6.1`` (file ``SEDFit/sed_phoenix.p``, a bz2
pickle ``[flux, table, wavelength]``; it needs astropy to load). The pickle stores
``v = log10(lambda[A] * F_lambda[erg s^-1 cm^-2 A^-1])`` (surface flux, rounded to 3
decimals) on 849 log-spaced bins (0.003 dex, flux-conserving bin averages, 91 nm - 32 um)
for 27,704 models.

This script runs once, offline; the package only reads the derived ``.npz`` (it never
unpickles anything at run time). Get the source with::

    pip download SEDFit==0.6.1 --no-deps --no-binary :all: -d /tmp/sedfit
    python scripts/build_phoenix_table.py /tmp/sedfit/SEDFit-0.6.1.tar.gz

What it writes (all arrays C-ordered; ``log_flux`` indexed [teff, logg, mh, wavelength]):

- ``teff_k`` (67,), ``logg`` (8,), ``mh`` (5,): the grid nodes. Teff: every PHOENIX step
  from 2900 to 12000 K (100 K to 7000 K, 200 K above); log g 2.0-5.5 (0.5); [M/H] -1.0,
  -0.5, 0, +0.5, +1.0; [alpha/M] = 0 throughout.
- ``wavelength_nm`` (200,): the PHOENIX bin centres from the last one <= 290 nm to the
  first one >= 1110 nm.
- ``log_flux`` float32: log10 F_lambda, surface flux in W m^-2 nm^-1, where
  ``F_lambda = 10**v / lambda[A] * 1e-2`` (1 erg s^-1 cm^-2 A^-1 = 1e-2 W m^-2 nm^-1).
- ``bolometric_ratio``: integral of F_lambda over the full pickle range / (sigma Teff^4),
  a check of the conversion (0.99 at 5800 K, log g 4.5, [M/H] 0).
- ``outside_flux_w_m2``: the part of that integral outside [wavelength_nm[0],
  wavelength_nm[-1]] (trapezoid rule on the native bins), so a bolometric check can add it
  to an integral of the table.
- ``filled``: bool mask of nodes absent from the pickle (hot, low-gravity, metal-rich
  models PHOENIX did not converge), filled with the model of the nearest log g present for
  the same Teff and [M/H] (ties: the higher log g); ``filled_nodes`` (k, 4) lists
  (teff, logg, mh, log g used).
- ``meta``: JSON with source, citation, units, the conversion, the fill rule and the
  sha256 of the pickle.
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np

SIGMA_SB = 5.670374419e-8  # W m^-2 K^-4
PICKLE_MEMBER = "SEDFit/sed_phoenix.p"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "cvae_pms" / "data" / "phoenix_aces.npz"
TEFF_RANGE_K = (2900.0, 12000.0)
LOGG_NODES = np.arange(2.0, 5.51, 0.5)
MH_NODES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
FORMAT_VERSION = 1


class BuildError(RuntimeError):
    """The source file is not the expected SEDFit PHOENIX grid."""


def read_pickle_bytes(source: Path) -> bytes:
    """Raw (bz2-compressed) bytes of ``sed_phoenix.p`` from the SEDFit sdist or the pickle itself."""
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(PICKLE_MEMBER)]
            if not members:
                raise BuildError(f"{source}: no member ending in {PICKLE_MEMBER}")
            fh = tar.extractfile(members[0])
            if fh is None:
                raise BuildError(f"{source}: {members[0].name} is not a regular file")
            return fh.read()
    return source.read_bytes()


def load_grid(raw: bytes, what: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Unpickle SEDFit's grid: v (n_models, n_wl), node columns, wavelength in Angstrom.

    Only for the trusted PyPI file named in the module docstring.
    """
    data = bz2.decompress(raw) if raw[:3] == b"BZh" else raw
    flux, table, wavelength = pickle.loads(data)  # noqa: S301 - trusted, offline, once
    v = np.asarray(flux, dtype=np.float64)
    nodes = {c: np.asarray(table[c], dtype=np.float64) for c in ("teff", "logg", "feh", "alpha")}
    wl_a = np.asarray(getattr(wavelength, "value", wavelength), dtype=np.float64)
    if unit := getattr(wavelength, "unit", None):
        if str(unit) != "Angstrom":
            raise BuildError(f"{what}: wavelength unit {unit}, expected Angstrom")
    if v.shape != (len(nodes["teff"]), wl_a.size):
        raise BuildError(f"{what}: flux shape {v.shape} does not match table/wavelengths")
    return v, nodes, wl_a


def build(raw: bytes, what: str, wl_min_nm: float = 290.0, wl_max_nm: float = 1110.0) -> dict:
    """Derive the table arrays (see module docstring) from the raw pickle bytes."""
    v, nodes, wl_a = load_grid(raw, what)
    wl_nm = wl_a / 10.0
    lo = np.searchsorted(wl_nm, wl_min_nm, side="right") - 1
    hi = np.searchsorted(wl_nm, wl_max_nm, side="left")
    if lo < 0 or hi >= wl_nm.size:
        raise BuildError(f"{what}: wavelengths {wl_nm[0]:.1f}-{wl_nm[-1]:.1f} nm do not cover "
                         f"{wl_min_nm}-{wl_max_nm} nm")
    sl = slice(lo, hi + 1)

    # SEDFit replaced non-finite fluxes by the grid minimum: treat such models as absent.
    fill_value = v.min()
    bad_model = np.any(v[:, sl] <= fill_value, axis=1)
    alpha0 = (nodes["alpha"] == 0.0) & ~bad_model
    t_all = np.unique(nodes["teff"][alpha0])
    teff = t_all[(t_all >= TEFF_RANGE_K[0]) & (t_all <= TEFF_RANGE_K[1])]
    index = {(t, g, m): i for i, (t, g, m) in enumerate(
        zip(nodes["teff"], nodes["logg"], nodes["feh"])) if alpha0[i]}

    shape = (teff.size, LOGG_NODES.size, MH_NODES.size)
    log_flux = np.empty(shape + (hi + 1 - lo,), dtype=np.float32)
    bol = np.empty(shape)
    outside = np.empty(shape)
    filled = np.zeros(shape, dtype=bool)
    filled_nodes = []
    log_wl_a = np.log10(wl_a)
    for it, t in enumerate(teff):
        for im, m in enumerate(MH_NODES):
            present = np.array([(t, g, m) in index for g in LOGG_NODES])
            if not present.any():
                raise BuildError(f"{what}: no model at Teff {t} K, [M/H] {m} for any log g")
            for ig, g in enumerate(LOGG_NODES):
                if present[ig]:
                    g_use = g
                else:
                    dist = np.where(present, np.abs(LOGG_NODES - g), np.inf)
                    cand = np.flatnonzero(dist == dist.min())
                    g_use = LOGG_NODES[cand[-1]]
                    filled[it, ig, im] = True
                    filled_nodes.append((t, g, m, g_use))
                row = v[index[(t, g_use, m)]]
                f_full = 10.0 ** (row - log_wl_a) * 1e-2  # W m^-2 nm^-1
                total = np.trapezoid(f_full, wl_nm)
                inside = np.trapezoid(f_full[sl], wl_nm[sl])
                log_flux[it, ig, im] = (row[sl] - log_wl_a[sl] - 2.0).astype(np.float32)
                bol[it, ig, im] = total / (SIGMA_SB * t**4)
                outside[it, ig, im] = total - inside

    meta = {
        "format_version": FORMAT_VERSION,
        "source": "SEDFit 0.6.1 (PyPI, MIT) file SEDFit/sed_phoenix.p",
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "citation": "Husser T.-O. et al. 2013, A&A 553, A6 (PHOENIX-ACES)",
        "quantity": "log10 surface flux F_lambda [W m^-2 nm^-1], bin averages at R~145",
        "conversion": "F_lambda[W m^-2 nm^-1] = 10**v / lambda[A] * 1e-2, "
                      "v = log10(lambda[A] F_lambda[erg s^-1 cm^-2 A^-1])",
        "alpha_m": 0.0,
        "fill_rule": "absent node -> model at the nearest log g present for the same Teff "
                     "and [M/H] (ties: higher log g)",
        "n_filled": len(filled_nodes),
        "wavelength_range_nm": [float(wl_nm[lo]), float(wl_nm[hi])],
        "built_by": "scripts/build_phoenix_table.py",
    }
    return {
        "teff_k": teff,
        "logg": LOGG_NODES.copy(),
        "mh": MH_NODES.copy(),
        "wavelength_nm": wl_nm[sl].copy(),
        "log_flux": log_flux,
        "bolometric_ratio": bol,
        "outside_flux_w_m2": outside,
        "filled": filled,
        "filled_nodes": np.array(filled_nodes, dtype=np.float64).reshape(-1, 4),
        "meta": np.array(json.dumps(meta)),
    }


def write_atomic(arrays: dict, output: Path) -> None:
    """Write ``arrays`` as a compressed npz via a temporary file renamed at the end."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path,
                        help="SEDFit-0.6.1.tar.gz (sdist) or an extracted sed_phoenix.p")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output .npz (default {DEFAULT_OUTPUT})")
    parser.add_argument("--wl-min-nm", type=float, default=290.0)
    parser.add_argument("--wl-max-nm", type=float, default=1110.0)
    args = parser.parse_args(argv)
    try:
        raw = read_pickle_bytes(args.source)
        arrays = build(raw, str(args.source), args.wl_min_nm, args.wl_max_nm)
    except (BuildError, OSError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_atomic(arrays, args.output)
    lf = arrays["log_flux"]
    print(f"wrote {args.output}: {lf.shape} (teff, logg, mh, wavelength), "
          f"{args.output.stat().st_size / 1e6:.2f} MB, {len(arrays['filled_nodes'])} filled nodes")
    i = (int(np.flatnonzero(arrays["teff_k"] == 5800)[0]),
         int(np.flatnonzero(arrays["logg"] == 4.5)[0]), 2)
    print(f"bolometric check 5800 K / 4.5 / 0.0: {arrays['bolometric_ratio'][i]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
