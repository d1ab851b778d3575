"""Training and evaluation: ``core`` (what both share), ``train`` and ``evaluate`` (which never
import each other). The CLI verbs in :mod:`unroll3d.cli` are thin wrappers over these."""
