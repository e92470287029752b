"""File I/O: ``tables`` (astropy table format by file suffix, used by every table reader and
writer) and the posterior file (HDF5) with its summary table, in parts: ``posterior_format`` (version,
quantile levels, status flags, compatibility check), ``posterior_writer``, ``posterior_reader``,
``posterior_summary`` (ECSV/FITS/VOTable summary). The layout is documented, and every name
re-exported, in :mod:`cvae_pms.posterior_file`."""
