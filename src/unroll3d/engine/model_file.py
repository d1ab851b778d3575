"""A trained model file read back: the variant rebuilt for a setting, with its ‖A‖² and
parameters (:func:`load_trained`)."""

from __future__ import annotations

from pathlib import Path

import torch

from unroll3d.models import build_variant

__all__ = ["ModelFileError", "load_trained", "use_lipschitz"]


class ModelFileError(ValueError):
    """A model file that cannot be read or was not written by ``unroll3d train``."""


def use_lipschitz(model, lipschitz: float | None) -> None:
    """Normalise ``model``'s step sizes by ``lipschitz`` (‖A‖² of the sample at hand): one
    model shared across settings sees operators whose norms differ (30 vs 100 views)."""
    buf = getattr(model, "lipschitz", None)
    if lipschitz is not None and isinstance(buf, torch.Tensor):
        buf.fill_(float(lipschitz))


def load_trained(
    path: str | Path, task: str, config: dict, device="cpu", setting=None, variant=None
):
    """Rebuild a variant from its model file; returns (model or None, payload).

    The file must have been written for ``task`` and, when given, ``variant`` (a model file is
    never trusted by its name: evaluating ``tv`` with the ``fdk`` file is an error naming both).

    A model trained on several settings (``train.share_across_settings``) is set up for
    ``setting``: its ‖A‖² and, for PnP, the parameters chosen on that setting's validation
    volumes; a setting it was not trained on is an error. ``payload["lipschitz"]`` is the one
    used."""
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated or foreign file: name it
        raise ModelFileError(
            f"{path} is not a readable model file ({type(err).__name__}: {err}); rerun its "
            "train job"
        ) from err
    if not isinstance(payload, dict) or "status" not in payload or "variant" not in payload:
        raise ModelFileError(f"{path} is not a model file written by unroll3d train")
    wrote = {"task": payload.get("task"), "variant": payload.get("variant")}
    asked = {"task": task, "variant": variant if variant is not None else wrote["variant"]}
    if wrote != asked:
        raise ModelFileError(
            f"{path} holds the {wrote['variant']} model of task {wrote['task']}, but it is used "
            f"as the {asked['variant']} model of task {asked['task']}; rerun its train job"
        )
    if payload.get("status") != "ok":
        return None, payload
    trained_on = payload.get("settings")
    if setting is not None and trained_on and setting not in trained_on:
        raise ModelFileError(
            f"{path} was trained on settings {trained_on}, not on {setting}; rerun its train job"
        )
    by_setting = payload.get("lipschitz_by_setting") or {}
    payload = {**payload, "lipschitz": by_setting.get(setting, payload.get("lipschitz"))}
    model = build_variant(
        payload["variant"],
        task,
        config,
        lipschitz=payload.get("lipschitz") or 1.0,
        alpha=payload.get("alpha"),
        device=device,
    )
    if payload.get("state_dict") is not None:
        model.load_state_dict(payload["state_dict"])
        use_lipschitz(model, payload["lipschitz"])  # the buffer saved is the last one trained
    algo = payload.get("algo_params") or {}  # {setting: the parameters chosen on validation}
    if algo:
        model.set_algo_params(**(algo[setting] if setting in algo else next(iter(algo.values()))))
    model.eval()
    return model, payload
