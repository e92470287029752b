"""Grid files: the HDF5 format and its validation (:mod:`.gridfile`), ingest of user tables
(:mod:`.ingest`)."""
from cvae_pms.grid.gridfile import (GridError, Grid, GridWriter, grid_summary, open_grid,
                                    validate_grid, write_grid)

__all__ = ["GridError", "Grid", "GridWriter", "grid_summary", "open_grid", "validate_grid",
           "write_grid"]
