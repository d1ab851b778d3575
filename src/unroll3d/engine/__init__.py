"""Training and evaluation: ``train`` and ``evaluate`` (which never import each other) over the
modules both share: ``samples`` (loading and caching), ``operators`` (‖A‖², H, the physics a
variant sees), ``partitioning`` (the partitioner, one training pair), ``reconstruct`` (a variant
on a full volume), ``model_file`` (a trained model read back), ``timing`` and ``device``. The CLI
verbs in :mod:`unroll3d.cli` are thin wrappers over these."""
