"""The parts of :func:`cvae_pms.infer.infer`: ``sampling`` (the keyed sampler: samples depend
only on model, source and seed), ``model`` (the loaded model and its OOD index / predictive
check), ``checks`` (paths and duplicated source_ids before any work), ``batch`` (one XP batch
to posterior rows). Import from :mod:`cvae_pms.infer` or :mod:`cvae_pms.api`."""
