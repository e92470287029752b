"""cvae-pms: posteriors of stellar and accretion parameters of young stars from Gaia XP spectra.

``cvae_pms.load(run).sample(spectra)`` is the Python front end (:mod:`cvae_pms.api`);
``cvae_pms.read_xp(path)`` reads any XP file the CLI reads.
"""
__version__ = "0.1.0"

__all__ = ["load", "read_xp", "__version__"]


def __getattr__(name):   # lazy: importing the package must not import TensorFlow
    if name == "load":
        from cvae_pms.api import load
        return load
    if name == "read_xp":
        from cvae_pms.xp.archive import read_xp
        return read_xp
    raise AttributeError(f"module 'cvae_pms' has no attribute {name!r}")
