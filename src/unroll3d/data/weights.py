"""DPIR's pretrained weights: which registry file a denoiser uses, and which SHA-256 it must have.

Light on purpose (no torch): the workflow imports it at DAG time.
"""

from __future__ import annotations

from unroll3d.data.download import read_hash_record

__all__ = [
    "DENOISERS",
    "WEIGHTS_FILES",
    "DOWNLOAD",
    "WEIGHTS_DIR",
    "weights_file",
    "expected_sha256",
]

#: 2D denoisers DPIR can use, by config name.
DENOISERS = ("ram", "drunet")
#: Their weights files in the weights registry (``unroll3d/data/weights_registry.csv``: the
#: URLs deepinv itself downloads them from).
WEIGHTS_FILES = {"ram": "ram.pth.tar", "drunet": "drunet_deepinv_gray_finetune_26k.pth"}
#: ``train.dpir_weights`` value that fetches the registry's file into :data:`WEIGHTS_DIR`.
DOWNLOAD = "download"
WEIGHTS_DIR = "resources/weights"


def weights_file(setting: str | None, denoiser: str = "ram", root: str = WEIGHTS_DIR) -> str | None:
    """The weights file that ``train.dpir_weights`` names: ``download`` = the file of
    ``denoiser`` in the weights registry, under ``root`` (where the workflow's download rule
    puts it); a path is kept; ``None`` stays ``None``."""
    if setting != DOWNLOAD:
        return setting or None
    if denoiser not in WEIGHTS_FILES:
        raise ValueError(f"unknown DPIR denoiser {denoiser!r}; known: {list(DENOISERS)}")
    return f"{root}/{WEIGHTS_FILES[denoiser]}"


def expected_sha256(path: str, sha256: str | None) -> tuple[str, str]:
    """``(sha256 hex, how it is known)`` for a weights file: ``train.dpir_sha256`` if set, else
    the record that the download wrote next to the file (pinned in the registry, or recorded
    at the first download and so *unpinned*).

    :raises ValueError: neither is there (the weights are checked, never trusted).
    """
    if sha256:
        return str(sha256).lower().removeprefix("sha256:"), "train.dpir_sha256"
    record = read_hash_record(path)
    if record is None:
        raise ValueError(
            f"train.dpir_sha256 is not set for the weights file {path}: set it to the file's "
            "published SHA-256 (the weights are checked, never trusted), or use "
            "train.dpir_weights: download"
        )
    value, pinned = record
    how = "pinned in the weights registry" if pinned else "unpinned: recorded at the first download"
    return value, how
