"""Physics of the forward model: photosphere table, accretion spot + slab, extinction, SED."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from cvae_pms import params
from cvae_pms.physics import (
    AccretionSettings,
    OutsideTableError,
    PhysicsError,
    components,
    extinction_curve,
    sed_flux,
    simulate_sed,
    surface_flux,
    table_wavelength_nm,
    veiling,
)
from cvae_pms.physics import accretion
from cvae_pms.physics.photosphere import load_table

SIGMA = accretion.SIGMA_SB


def star(teff=4000.0, logg=4.0, mh=0.0, log_mdot=-8.0, ff=0.01, mass=0.6, a0=0.0) -> np.ndarray:
    return np.array([[teff, logg, mh, log_mdot, ff, mass, a0]], dtype=np.float64)


# --- photosphere -------------------------------------------------------------------------

def test_table_covers_box_with_margin_and_is_small():
    tab = load_table()
    assert tab.teff_k[0] <= 2900 and tab.teff_k[-1] >= 12000
    assert np.all(np.diff(tab.teff_k[tab.teff_k <= 7000]) == 100)
    assert tab.logg[0] <= 2.0 and tab.logg[-1] >= 5.5
    assert list(tab.mh) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    wl = table_wavelength_nm()
    assert wl[0] <= 290 and wl[-1] >= 1110 and np.all(np.diff(wl) > 0)
    assert tab.log_flux.dtype == np.float32
    assert tab.log_flux.shape == (tab.teff_k.size, tab.logg.size, tab.mh.size, wl.size)
    # no filled node inside the parameter box (only hot, low-gravity, metal-rich models)
    box = (tab.teff_k <= 7000)[:, None, None] & ((tab.logg >= 2.5) & (tab.logg <= 5.0))[None, :, None]
    assert not np.any(tab.filled & box)


@pytest.mark.parametrize("teff", [4000.0, 6000.0])
def test_bolometric_flux_matches_stefan_boltzmann(teff):
    """Table integral (289-1113 nm) + the same model's flux outside that range (computed by
    the build script from the full 91 nm - 32 um PHOENIX SED) = sigma T^4 within 3 %."""
    tab = load_table()
    wl = table_wavelength_nm()
    f = surface_flux(np.array([teff]), np.array([4.5]), np.array([0.0]))[0]
    it = int(np.flatnonzero(tab.teff_k == teff)[0])
    outside = tab.outside_flux_w_m2[it, int(np.flatnonzero(tab.logg == 4.5)[0]), 2]
    ratio = (np.trapezoid(f, wl) + outside) / (SIGMA * teff**4)
    assert abs(ratio - 1.0) < 0.03
    assert 0.2 < np.trapezoid(f, wl) / (SIGMA * teff**4) < 0.9  # the table alone is not all


def test_bolometric_6000k_with_blackbody_tails_independent_of_stored_values():
    """At 6000 K the spectrum outside 289-1113 nm is close to a black body: table + pi B tails
    gives sigma T^4 within 3 % without any stored number (at 4000 K molecular bands move
    flux into the infrared and this shortcut is off by ~10 %, hence the stored check above)."""
    t = 6000.0
    wl = table_wavelength_nm()
    f = surface_flux(np.array([t]), np.array([4.5]), np.array([0.0]))[0]
    bb = lambda lam: accretion.planck_flux(np.array([lam]), np.array([t]))[0, 0]  # noqa: E731
    tails = integrate.quad(bb, 5.0, wl[0])[0] + integrate.quad(bb, wl[-1], 2e5, limit=200)[0]
    assert abs((np.trapezoid(f, wl) + tails) / (SIGMA * t**4) - 1.0) < 0.03


def test_interpolation_hits_nodes_and_is_linear_in_log_flux():
    from cvae_pms.physics.photosphere import DEFAULT_CORRECTION
    tab = load_table(DEFAULT_CORRECTION)   # surface_flux's default table
    f_node = surface_flux(np.array([4000.0]), np.array([4.0]), np.array([0.5]))
    it, ig = np.flatnonzero(tab.teff_k == 4000)[0], np.flatnonzero(tab.logg == 4.0)[0]
    np.testing.assert_allclose(np.log10(f_node[0]), tab.log_flux[it, ig, 3], atol=1e-6)
    lo, hi, mid = (surface_flux(np.array([t]), np.array([4.0]), np.array([0.0]))[0]
                   for t in (4000.0, 4100.0, 4050.0))
    np.testing.assert_allclose(np.log10(mid), 0.5 * (np.log10(lo) + np.log10(hi)), atol=1e-6)
    # vectorised call equals single calls
    many = surface_flux(np.array([4000.0, 4050.0]), np.array([4.0, 4.0]), np.array([0.0, 0.0]))
    np.testing.assert_allclose(many[1], mid, rtol=1e-12)


def test_outside_table_raises_naming_the_star():
    with pytest.raises(OutsideTableError, match=r"star 1: .*teff=2500"):
        surface_flux(np.array([4000.0, 2500.0]), np.array([4.0, 4.0]), np.array([0.0, 0.0]))
    with pytest.raises(OutsideTableError, match="wavelengths"):
        surface_flux(np.array([4000.0]), np.array([4.0]), np.array([0.0]), np.array([200.0]))
    with pytest.raises(OutsideTableError, match="star 0"):
        sed_flux(star(logg=6.0))
    with pytest.raises(PhysicsError, match="star 0: .*not physical"):
        sed_flux(star(ff=-0.1))
    with pytest.raises(PhysicsError, match=r"\(n, 7\)"):
        sed_flux(np.zeros((2, 6)))


# --- accretion ---------------------------------------------------------------------------

def test_sanity_figures_4000k_star():
    """The figures the README states for 4000 K, 0.6 Msun, log g 4, f 0.01 (T_hp 8870 K,
    veiling r(400/550/800 nm) = 3.2/0.63/0.19; log Mdot -9: r(550) = 0.072; box corner
    log Mdot -4.52, f 0.3: 420x), each within 15 % (a factor 2 anywhere in L_acc, F or the
    heating fraction moves r(550) by > 40 %)."""
    wl = np.array([400.0, 550.0, 800.0])
    # the README's figures are for the plain PHOENIX photosphere (the empirical correction
    # changes the 4000 K photosphere's blue flux, hence the veiling: checked below)
    c = components(star(log_mdot=-8.0), wl, photosphere_correction=None)
    assert c.t_hp_k[0] == pytest.approx(8870.0, rel=0.01)
    np.testing.assert_allclose(c.veiling[0], [3.2, 0.63, 0.19], rtol=0.15)
    r9 = veiling(star(log_mdot=-9.0), np.array([550.0]), photosphere_correction=None)[0, 0]
    assert r9 == pytest.approx(0.072, rel=0.15)
    corner = veiling(star(log_mdot=-4.52, ff=0.3), np.array([550.0]),
                     photosphere_correction=None)[0, 0]
    assert corner == pytest.approx(420.0, rel=0.15)
    # with the default (corrected) photosphere: the README's 4.4 / 0.72 / 0.19
    np.testing.assert_allclose(components(star(log_mdot=-8.0), wl).veiling[0],
                               [4.4, 0.72, 0.19], rtol=0.15)


def test_energy_balance_of_the_accretion_column():
    """Independent of the package's constants: R = sqrt(G M / g), L_acc = G M Mdot / R
    (1 - R / R_in) with R_in = 5 R, F = L_acc / (4 pi R^2 f) and sigma T_hp^4 = sigma T_eff^4
    + 3/4 F, written out with CODATA/IAU numbers; the spot's excess (3/4 F) plus the slab
    (1/4 F) over the spot area give back L_acc."""
    g_si, m_sun, yr, sigma = 6.6743e-11, 1.98841e30, 365.25 * 86400.0, 5.670374e-8
    for log_mdot, ff, mass, logg in ((-8.0, 0.01, 0.6, 4.0), (-6.0, 0.1, 1.2, 3.0),
                                     (-10.0, 0.002, 0.3, 4.8)):
        theta = star(log_mdot=log_mdot, ff=ff, mass=mass, logg=logg)
        c = components(theta, np.array([550.0]))
        radius = np.sqrt(g_si * mass * m_sun / 10.0 ** (logg - 2.0))
        l_acc = g_si * mass * m_sun * 10.0**log_mdot * m_sun / yr / radius * (1.0 - 1.0 / 5.0)
        flux = l_acc / (4.0 * np.pi * radius**2 * ff)
        assert c.radius_m[0] == pytest.approx(radius, rel=1e-4)
        assert c.energy_flux_w_m2[0] == pytest.approx(flux, rel=1e-4)
        assert c.t_hp_k[0] == pytest.approx((4000.0**4 + 0.75 * flux / sigma) ** 0.25, rel=1e-4)
        spot_excess = sigma * (c.t_hp_k[0] ** 4 - 4000.0**4) + 0.25 * c.energy_flux_w_m2[0]
        assert 4.0 * np.pi * radius**2 * ff * spot_excess == pytest.approx(l_acc, rel=1e-4)
    # 0.6 Msun, R = 1.28 Rsun (log g 4), 1e-8 Msun/yr: L_acc = 0.8 G M Mdot / R = 0.1175 L_sun
    c = components(star(log_mdot=-8.0), np.array([550.0]))
    l_acc = 4.0 * np.pi * c.radius_m[0] ** 2 * 0.01 * c.energy_flux_w_m2[0]
    assert l_acc / 3.828e26 == pytest.approx(0.1175, rel=0.01)


def test_veiling_grows_with_mdot_and_is_bluer():
    mdots = np.linspace(-11.0, -5.0, 7)
    theta = np.repeat(star(ff=0.05), mdots.size, axis=0)
    theta[:, params.INDEX["log_mdot"]] = mdots
    r = veiling(theta, np.array([400.0, 800.0]))
    assert np.all(np.diff(r[:, 0]) > 0)
    assert np.all(r[:, 0] > r[:, 1])
    assert r[0, 0] < 1e-2  # log Mdot -11: hardly any veiling


def test_slab_has_balmer_and_paschen_jumps_and_emits_a_quarter_of_f():
    wl = np.array([362.0, 367.0, 818.0, 823.0])
    c = components(star(log_mdot=-8.0), wl)
    slab = c.slab[0]
    assert slab[0] > 1.5 * slab[1]   # Balmer jump
    assert slab[2] > 1.1 * slab[3]   # Paschen jump
    # total slab emission per unit spot area = F/4 (integrated independently on a fine grid)
    lam = np.logspace(1, 6, 40001)
    for t, tau in ((8000.0, 0.01), (11000.0, 5.0)):
        s = accretion.slab_flux(lam, np.array([1.0e9]), np.array([t]), np.array([tau]))[0]
        assert abs(np.trapezoid(s * lam, np.log(lam)) / 0.25e9 - 1.0) < 5e-3


def test_ff_zero_gives_pure_photosphere():
    theta = star(log_mdot=-6.0, ff=0.0, a0=0.0)
    wl = np.array([350.0, 550.0, 900.0])
    f = sed_flux(theta, wl, distance_pc=10.0)
    r_m = accretion.stellar_radius_m(0.6, 4.0)
    phot = surface_flux(np.array([4000.0]), np.array([4.0]), np.array([0.0]), wl)
    np.testing.assert_allclose(f, phot * (r_m / (10.0 * 3.0856775814913673e16)) ** 2, rtol=1e-10)


def test_filling_factor_unconstrained_for_weak_accretors():
    """log Mdot -11: ff 0.01 -> 0.3 changes the SED < 1 % with the photospheric spot,
    while a black-body spot fills in molecular bands and changes it a lot."""
    theta = np.concatenate([star(teff=3500.0, log_mdot=-11.0, ff=0.01),
                            star(teff=3500.0, log_mdot=-11.0, ff=0.3)])
    f = sed_flux(theta)
    assert np.max(np.abs(f[1] / f[0] - 1.0)) < 0.01
    fb = sed_flux(theta, settings=AccretionSettings(spot_model="blackbody"))
    assert np.max(np.abs(fb[1] / fb[0] - 1.0)) > 0.1


def test_spot_is_continuous_across_the_table_top():
    wl = table_wavelength_nm()
    lo, hi = accretion.spot_flux(np.array([11999.0, 12001.0]), np.array([4.0, 4.0]),
                                 np.array([0.0, 0.0]))
    np.testing.assert_allclose(hi / lo, 1.0, atol=2e-3)
    hot = accretion.spot_flux(np.array([30000.0]), np.array([4.0]), np.array([0.0]))[0]
    assert np.all(hot > hi) and np.all(np.isfinite(hot))
    assert wl.size == hot.size


def test_settings_round_trip_and_validation():
    s = AccretionSettings(t_slab_k=10000.0, draw_nuisance=True)
    d = s.to_dict()
    assert d["ff_floor"] == 1e-4 and d["tau_300_draw"] == "log-uniform"
    assert AccretionSettings.from_dict(d) == s
    with pytest.raises(PhysicsError, match="spot_model"):
        AccretionSettings(spot_model="sphere")
    with pytest.raises(PhysicsError, match="rng"):
        sed_flux(star(), settings=s)


def test_nuisance_draws_are_seeded_in_range_and_chunk_independent():
    theta = np.repeat(star(log_mdot=-7.0, ff=0.05), 9, axis=0)
    s = AccretionSettings(draw_nuisance=True)
    a = simulate_sed(theta, settings=s, rng=np.random.default_rng(3), chunk_size=4)
    b = simulate_sed(theta, settings=s, rng=np.random.default_rng(3))
    np.testing.assert_allclose(a.flux_w_m2_nm, b.flux_w_m2_nm, rtol=1e-12)
    assert np.all((a.t_slab_k >= 8000) & (a.t_slab_k <= 11000))
    assert np.all((a.tau_300 >= 0.01) & (a.tau_300 <= 5))
    assert np.unique(a.flux_w_m2_nm[:, 0]).size == 9  # different slabs, different SEDs


# --- extinction and composition -----------------------------------------------------------

@pytest.mark.parametrize("law", ["G23", "F19"])
def test_extinction_curve_matches_known_ratios(law):
    k = extinction_curve(np.array([336.0, 541.4, 550.0, 1020.0]), law)
    assert k[1] == pytest.approx(1.0)
    assert k[0] / k[2] == pytest.approx(1.67, abs=0.05)
    assert 0.37 < k[3] / k[2] < 0.43
    with pytest.raises(PhysicsError, match="law"):
        extinction_curve(np.array([500.0]), "CCM")


def test_extinction_reddens_by_the_law():
    wl = np.array([400.0, 800.0])
    f = sed_flux(np.concatenate([star(a0=0.0), star(a0=2.0)]), wl)
    k = extinction_curve(wl)
    want = 10 ** (-0.4 * 2.0 * (k[0] - k[1]))
    got = (f[1, 0] / f[1, 1]) / (f[0, 0] / f[0, 1])
    assert got == pytest.approx(want, rel=0.02)
    assert got < 0.5  # A0 = 2 makes the star clearly redder


def test_per_star_r_v_interpolates_the_law_and_greys_the_extinction():
    from cvae_pms.physics.extinction import extinction_curves
    wl = np.arange(336.0, 1021.0, 2.0)
    r_v = np.array([2.5, 3.1, 3.137, 4.0, 5.5])
    k = extinction_curves(wl, "G23", r_v)
    for j, v in enumerate(r_v):   # nodes exact, between nodes within 1e-4
        np.testing.assert_allclose(k[j], extinction_curve(wl, "G23", float(v)), atol=1e-4)
    # a larger R_V is a greyer law: less reddening per magnitude of A0
    blue_red = k[:, 32] - k[:, -1]            # k(400 nm) - k(1020 nm)
    assert np.all(np.diff(blue_red) < 0)
    # drawn per star from the generator, after the slab draws; reproducible
    theta = np.concatenate([star(a0=2.0)] * 50)
    a = simulate_sed(theta, wl, rng=np.random.default_rng(5), r_v_range=(2.5, 5.5))
    b = simulate_sed(theta, wl, rng=np.random.default_rng(5), r_v_range=(2.5, 5.5))
    np.testing.assert_array_equal(a.flux_w_m2_nm, b.flux_w_m2_nm)
    assert np.all((a.r_v >= 2.5) & (a.r_v <= 5.5)) and a.r_v.std() > 0.5
    colour = a.flux_w_m2_nm[:, 32] / a.flux_w_m2_nm[:, -1]
    assert np.corrcoef(a.r_v, colour)[0, 1] > 0.95   # greyer law -> bluer star at fixed A0
    with pytest.raises(PhysicsError, match="Generator"):
        simulate_sed(theta[:1], wl, r_v_range=(2.5, 5.5))
    with pytest.raises(PhysicsError, match="R_V range"):
        simulate_sed(theta[:1], wl, rng=np.random.default_rng(0), r_v_range=(0.5, 5.5))


def test_distance_dilution_and_grid_choice():
    wl = np.arange(336.0, 1021.0, 2.0)
    f10 = sed_flux(star(), wl, distance_pc=10.0)
    f20 = sed_flux(star(), wl, distance_pc=20.0)
    np.testing.assert_allclose(f20, f10 / 4.0, rtol=1e-12)
    assert f10.shape == (1, wl.size)
    assert sed_flux(star()).shape == (1, table_wavelength_nm().size)
