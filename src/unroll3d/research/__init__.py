"""Research diagnostics (not imported by the library): see :mod:`unroll3d.research.normal_floor`."""
