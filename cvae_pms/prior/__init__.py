"""The parts of :mod:`cvae_pms.priors`: ``densities`` (Chabrier IMF, normal), ``factors`` (the
factor types of a prior file), ``spec`` (a prior file or shipped name -> :class:`Prior`).
Import from :mod:`cvae_pms.priors`."""
