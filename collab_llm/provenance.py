"""What a training run is made from (CF model, backbone, template, split, seed, budget), recorded in its
checkpoints (``collab_llm_made_from``) and bundles (``made_from``), and the checks that refuse a mismatch
(:mod:`collab_llm.fingerprint` holds the fingerprints and the comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collab_llm.module import CollabLLM

MADE_FROM_KEY = "collab_llm_made_from"


def run_made_from(module: CollabLLM) -> dict[str, Any]:
    """``cf_model_sha256`` (the CF folder's fingerprint), ``backbone`` (path + config hash), ``template``,
    ``seed``, and with a trainer: ``split_sha256`` of the data folder and the step ``budget``."""
    from collab_llm.fingerprint import backbone_fingerprint, split_sha256

    hp = module.hparams
    cf = module.injector.cf_model
    out: dict[str, Any] = {
        "cf_model_sha256": getattr(cf, "source_sha256", None), "cf_model_path": hp.get("cf_model_path"),
        "backbone": backbone_fingerprint(hp.backbone_path), "template": hp.template, "seed": int(hp.seed),
    }
    trainer = module._trainer
    data_dir = getattr(getattr(trainer, "datamodule", None), "data_dir", None) if trainer is not None else None
    if data_dir is not None and (Path(data_dir) / "manifest.json").is_file():
        out["split"], out["split_sha256"] = str(data_dir), split_sha256(data_dir)
    if trainer is not None:
        out["budget"] = {"max_steps": int(trainer.max_steps), "max_epochs": trainer.max_epochs}
    return out


def check_cf_against_data(module: CollabLLM, data_dir: str | Path | None = None) -> None:
    """Refuse (one line naming both folders) a CF model whose catalogue is not the data module's split
    (``data_dir``; default: the trainer's data module's)."""
    from collab_llm.fingerprint import check_cf_matches_split

    cf = module.injector.cf_model
    trainer = module._trainer
    if data_dir is None and trainer is not None:
        data_dir = getattr(getattr(trainer, "datamodule", None), "data_dir", None)
    if cf is None or data_dir is None or not (Path(data_dir) / "manifest.json").is_file():
        return
    check_cf_matches_split(module.hparams.cf_model_path, int(cf.n_items), getattr(cf, "made_from", None), data_dir)


def check_checkpoint_made_from(module: CollabLLM, recorded: dict[str, Any] | None) -> None:
    """Refuse a checkpoint trained with another CF model, backbone (config) or template: one line naming
    both sides (``COLLAB_LLM_ALLOW_MISMATCH=1`` proceeds). Checkpoints without a record pass."""
    from collab_llm.fingerprint import compare_made_from

    if not recorded:
        return
    trainer = module._trainer
    where = getattr(trainer, "ckpt_path", None) if trainer is not None else None
    current = run_made_from(module)
    compare_made_from(recorded, current, f"the checkpoint {where or ''}".strip(), "this run's "
                      f"model (CF model {current.get('cf_model_path')}, backbone {module.hparams.backbone_path})",
                      keys=("cf_model_sha256", "backbone", "template"),
                      hint="resume or test a checkpoint with the CF model, backbone and template it was trained with")
