"""Physics of the built-in grid: photosphere, accretion spot and slab, extinction, composed SED.

Pure numpy, vectorised over many parameter vectors. Public entry points:
:func:`sed_flux`, :func:`veiling`, :func:`components`, :class:`AccretionSettings`,
:func:`extinction_curve`, :func:`table_wavelength_nm`, :func:`surface_flux`.
"""
from cvae_pms.physics.accretion import AccretionSettings
from cvae_pms.physics.extinction import apply_extinction, extinction_curve
from cvae_pms.physics.photosphere import (
    OutsideTableError,
    PhysicsError,
    surface_flux,
    table_wavelength_nm,
)
from cvae_pms.physics.sed import (
    FORWARD_MODEL_VERSION,
    SEDComponents,
    SEDResult,
    components,
    forward_model_meta,
    sed_flux,
    simulate_sed,
    veiling,
)

__all__ = [
    "AccretionSettings", "apply_extinction", "extinction_curve", "OutsideTableError",
    "PhysicsError", "surface_flux", "table_wavelength_nm", "FORWARD_MODEL_VERSION",
    "SEDComponents", "SEDResult", "components", "forward_model_meta", "sed_flux",
    "simulate_sed", "veiling",
]
