"""cvae-pms: posteriors of stellar and accretion parameters of young stars from Gaia XP spectra."""
__version__ = "0.1.0"
