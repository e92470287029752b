"""Coefficient covariance of a Gaia XP band from archive errors and correlations.

The archive stores, per band, 55 formal errors and the 1485 off-diagonal correlations in
gaiaxpy's order (``gaiaxpy.core.generic_functions.array_to_symmetric_matrix``): the strict
lower triangle in row-major order, ``np.tril_indices(55, -1)``, which is the upper triangle
in column-major order. Everything here is batched over sources.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_COEFFICIENTS = 55
N_CORRELATIONS = N_COEFFICIENTS * (N_COEFFICIENTS - 1) // 2  # 1485


@lru_cache(maxsize=4)
def correlation_indices(n: int = N_COEFFICIENTS) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the stored correlations in Gaia DR3 order: ``np.tril_indices(n, -1)``."""
    return np.tril_indices(n, -1)


def correlation_matrix(correlations: np.ndarray, n: int = N_COEFFICIENTS) -> np.ndarray:
    """(m, n(n-1)/2) stored correlations -> (m, n, n) symmetric matrices with unit diagonal."""
    correlations = np.asarray(correlations, dtype=np.float64)
    rows, cols = correlation_indices(n)
    if correlations.ndim != 2 or correlations.shape[1] != len(rows):
        raise ValueError(f"correlations: expected shape (m, {len(rows)}), got {correlations.shape}")
    out = np.zeros((len(correlations), n, n))
    out[:, rows, cols] = correlations
    out[:, cols, rows] = correlations
    out[:, np.arange(n), np.arange(n)] = 1.0
    return out


def band_covariance(errors: np.ndarray, correlations: np.ndarray | None) -> np.ndarray:
    """Covariance ``C_ij = e_i e_j rho_ij`` of one band.

    Args:
        errors: (m, 55) coefficient errors (archive ``*_coefficient_errors``).
        correlations: (m, 1485) archive ``*_coefficient_correlations``, or None for a diagonal
            covariance (no correlations available).

    Returns:
        (m, 55, 55) covariance in coefficient units squared.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2:
        raise ValueError(f"errors: expected shape (m, n), got {errors.shape}")
    m, n = errors.shape
    if correlations is None:
        out = np.zeros((m, n, n))
        out[:, np.arange(n), np.arange(n)] = errors**2
        return out
    rho = correlation_matrix(correlations, n)
    rho *= errors[:, :, None] * errors[:, None, :]  # e_i e_j is exactly symmetric
    return rho


def lower_triangle_covariance(values: np.ndarray, n: int = N_COEFFICIENTS) -> np.ndarray:
    """(m, n(n+1)/2) lower triangle with diagonal, row-major (Avro datalink ``covariance``) -> (m, n, n)."""
    values = np.asarray(values, dtype=np.float64)
    rows, cols = np.tril_indices(n)
    if values.ndim != 2 or values.shape[1] != len(rows):
        raise ValueError(f"covariance values: expected shape (m, {len(rows)}), got {values.shape}")
    out = np.zeros((len(values), n, n))
    out[:, rows, cols] = values
    out[:, cols, rows] = values
    return out


def errors_and_correlations(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`band_covariance`: (m, 55, 55) -> errors (m, 55), correlations (m, 1485)."""
    covariance = np.asarray(covariance, dtype=np.float64)
    n = covariance.shape[-1]
    errors = np.sqrt(np.diagonal(covariance, axis1=1, axis2=2))
    rows, cols = correlation_indices(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = covariance[:, rows, cols] / (errors[:, rows] * errors[:, cols])
    return errors, correlations


def is_positive_definite(cov: np.ndarray, block: int = 2048) -> np.ndarray:
    """(m,) bool: True where the (m, n, n) matrix is finite and Cholesky-factorisable.

    Batched numpy Cholesky over blocks of ``block`` matrices (bounded extra memory); a block
    that fails is re-checked matrix by matrix to find the culprits.
    """
    cov = np.asarray(cov, dtype=np.float64)
    ok = np.zeros(len(cov), dtype=bool)
    for start in range(0, len(cov), block):
        part = cov[start:start + block]
        finite = np.isfinite(part).reshape(len(part), -1).all(axis=1)
        idx = np.flatnonzero(finite)
        good = finite.copy()
        if idx.size:
            try:
                np.linalg.cholesky(part if finite.all() else part[idx])
            except np.linalg.LinAlgError:
                for i in idx:
                    try:
                        np.linalg.cholesky(part[i])
                    except np.linalg.LinAlgError:
                        good[i] = False
        ok[start:start + block] = good
    return ok
