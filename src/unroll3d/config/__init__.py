"""The pipeline configuration: load, validate against the schema, fill defaults once, and cut the
sections each job reads.

The schema (``unroll3d/schemas/config.schema.yaml``, package data) is the single source of every
key, its description and its default. The Snakemake workflow validates with it too, and passes
each job only the part of the config that job reads (:func:`job_config`), so editing a report
caption does not rerun training.

Every name is importable from here; each lives in the submodule of its idea: ``defaults`` (the
schema, its defaults, :class:`ConfigError`), ``load`` (files and ``--config-json``), ``checks``
(values the schema's types let through), ``patches`` (volume shapes, patch sizes), ``slices``
(what each job reads) and ``settings`` (setting labels).
"""

from unroll3d.config.checks import REAL_FULL_ORBIT, check_values
from unroll3d.config.defaults import (
    ConfigError,
    evaluate_settings,
    fill_defaults,
    schema,
    section_defaults,
    train_object,
    train_settings,
)
from unroll3d.config.load import (
    config_from_json,
    job_config_from_json,
    load_config,
    read_yaml,
    validate,
    validate_partial,
)
from unroll3d.config.patches import (
    REAL_VOLUME_SHAPES,
    check_patch_sizes,
    resolve_patch_size,
    volume_shape,
)
from unroll3d.config.settings import (
    SHARED_SETTING,
    model_setting,
    model_settings,
    shares_settings,
    sweep_reuses_main,
    sweep_settings,
    task_settings,
)
from unroll3d.config.slices import (
    FIT_NORMAL_KEYS,
    JOB_TASK_KEYS,
    dumps,
    fit_normal_config,
    job_config,
    report_config,
    sweep_job_config,
)

__all__ = [
    "ConfigError", "schema", "validate", "load_config", "section_defaults", "train_settings",
    "evaluate_settings", "job_config", "sweep_job_config", "fit_normal_config", "report_config",
    "check_patch_sizes", "check_values", "read_yaml", "validate_partial", "config_from_json",
    "job_config_from_json", "resolve_patch_size", "volume_shape", "dumps", "JOB_TASK_KEYS",
    "FIT_NORMAL_KEYS", "fill_defaults", "train_object", "REAL_VOLUME_SHAPES", "REAL_FULL_ORBIT",
    "SHARED_SETTING", "task_settings", "shares_settings", "model_setting", "model_settings",
    "sweep_settings", "sweep_reuses_main",
]  # fmt: skip
