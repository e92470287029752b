"""The posterior file (HDF5) and its summary table, in parts: ``posterior_format`` (version,
quantile levels, status flags, compatibility check), ``posterior_writer``, ``posterior_reader``,
``posterior_summary`` (ECSV/FITS/VOTable summary). The layout is documented, and every name
re-exported, in :mod:`cvae_pms.posterior_file`."""
