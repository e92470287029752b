"""Gaia datalink Avro products (continuous mean spectra ``sourceId/bpSpec/rpSpec``) and gaiaxpy's
sampled Avro output, streamed in chunks of raw columns (fastavro)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

from .batch import BANDS, XPReadError
from .layout import COEFFICIENTS, SAMPLED, Chunk, chunk_builder, shown_columns

_AVRO_MAP = {"source_id": ("sourceId",),
             "{b}_coefficients": ("{b}Spec", "solution", "parameters"),
             "{b}_coefficient_covariances": ("{b}Spec", "solution", "covariance"),
             "{b}_n_parameters": ("{b}Spec", "solution", "numberOfParameters"),
             "{b}_standard_deviation": ("{b}Spec", "solution", "standardDeviation"),
             "{b}_n_measurements": ("{b}Spec", "solution", "numberOfMeasurements")}


def _avro_get(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    value: Any = record
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def iter_avro(path: str, chunk_size: int) -> Iterator[dict[str, Any]]:
    import fastavro

    with open(path, "rb") as fh:
        try:
            reader = fastavro.reader(fh)
        except Exception as exc:  # fastavro raises ValueError/SchemaParseException etc.
            raise XPReadError(f"{path}: not a readable Avro file ({type(exc).__name__}: {exc})") from None
        records: list[dict[str, Any]] = []
        build = None
        for record in reader:
            if build is None:
                build = _avro_builder(record, path)
            records.append(record)
            if len(records) == chunk_size:
                yield build(records)
                records = []
        if records:
            yield build(records)


def _avro_builder(record: Mapping[str, Any], path: str
                  ) -> Callable[[list[dict[str, Any]]], Chunk]:
    """How to turn Avro records like ``record`` into chunks: Gaia datalink continuous
    spectra (sourceId, bpSpec, rpSpec) or gaiaxpy's sampled output (source_id, flux, ...)."""
    if "sourceId" in record and ("bpSpec" in record or "rpSpec" in record):
        return lambda records: (COEFFICIENTS, _avro_columns(records))
    if "source_id" in record and "flux" in record:
        from .sampled import avro_conventions
        layout, build = chunk_builder(list(record), path, lambda: avro_conventions(path))
        if layout == SAMPLED:
            return lambda records: (layout, build(lambda n: [r.get(n) for r in records],
                                                  len(records)))
    raise XPReadError(f"{path}: Avro records have no sourceId/bpSpec/rpSpec (Gaia XP "
                      "continuous mean spectra) nor source_id/flux/flux_error (gaiaxpy sampled "
                      f"output); fields found: {shown_columns(list(record))}")


def _avro_columns(records: list[dict[str, Any]]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for band in BANDS:
        for key, keys in _AVRO_MAP.items():
            name = key.format(b=band)
            cols[name] = [_avro_get(r, [k.format(b=band) for k in keys]) for r in records]
    return cols

