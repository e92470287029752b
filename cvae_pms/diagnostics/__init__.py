"""Diagnostics of posterior estimates, one per module (e.g. :mod:`.metrics`: bias, robust
scatter, rms, outlier fraction and interval coverage as small pure functions)."""
