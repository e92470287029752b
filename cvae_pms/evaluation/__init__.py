"""The parts of ``cvae-pms evaluate``; :func:`cvae_pms.evaluate.evaluate` runs them in order.

- :mod:`.config`: :class:`~.config.EvaluateConfig`, the G settings and option parsing;
- :mod:`.observations`: the held-out rows and their simulated observations, the network input;
- :mod:`.metrics`: accuracy/calibration numbers per parameter, the metrics and predictions tables;
- :mod:`.baseline`: the HistGradientBoosting baseline on the same features;
- :mod:`.exact_likelihood`: what the exact likelihood of the built-in forward model says: the
  Fisher (Cramer-Rao) forecast of the accuracy limit, reference posteriors and JS divergences.

Nothing is imported here: import the module you need (or :mod:`cvae_pms.evaluate`).
"""
