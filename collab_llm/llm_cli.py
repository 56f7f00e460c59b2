"""LightningCLI for the LLM recommenders: ``fit`` / ``validate`` / ``test`` / ``predict`` from YAML.

    python -m collab_llm.llm_cli fit --config configs/llm/experiments/llara.yaml
    collab-llm fit --config configs/llm/experiments/llara.yaml --trainer.max_steps 10

Configs compose: ``--config configs/llm/trainer/cpu.yaml --config configs/llm/data/ml100k_loo.yaml
--config configs/llm/model/llara.yaml`` (later files override earlier ones), or one experiment file.
The model is :class:`collab_llm.module.CollabLLM` (plain ``model:`` arguments); its adapter is chosen by
``class_path``: ``model: {adapter: {class_path: collab_llm.adapters.ILoRA, init_args: {...}}}``.
Linked arguments (set them on the model only): ``model.backbone_path -> data.tokenizer_path`` and
``model.template -> data.template``, so the collator always tokenizes with the backbone's tokenizer
and the template the model scores with. The projector's output size is read from the backbone
when the model is built, its input size from the CF model.
"""

from __future__ import annotations

from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from collab_llm.datamodule import RecDataModule
from collab_llm.module import CollabLLM


class CollabLLMCLI(LightningCLI):
    """LightningCLI with the model/data links of collab-llm."""

    def init_parser(self, **kwargs):  # noqa: ANN003, ANN201 - LightningCLI's
        """LightningCLI's parser (also each subcommand's), reporting a bad flag or value in one line."""
        from collab_llm.errors import one_line_parser_errors

        parser = super().init_parser(**kwargs)
        one_line_parser_errors(parser, "collab-llm fit|validate|test|predict")
        return parser

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        parser.link_arguments("model.init_args.backbone_path", "data.tokenizer_path")
        parser.link_arguments("model.init_args.template", "data.template")

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 - jsonargparse parser and args
        """Parse, then refuse a ``--ckpt_path`` that is not a checkpoint before Lightning reads it."""
        super().parse_arguments(parser, args)
        config = self.config.get(str(self.config.get("subcommand"))) if self.config.get("subcommand") else None
        check_ckpt_path(config.get("ckpt_path") if config is not None else None)

    def before_instantiate_classes(self) -> None:
        """Before the backbone loads or the trainer writes anything: refuse batch sizes below 1; ``backbone_path:
        default`` becomes the default backbone's folder in the cache (:func:`collab_llm.assets.resolve_backbone`;
        missing: one line naming ``--model.backbone_path``), so checkpoints record the folder; refuse a CF model
        whose item catalogue is not the data split's (both folders named; :func:`collab_llm.fingerprint.check_cf_folder`)."""
        from collab_llm.assets import DEFAULT, resolve_backbone
        from collab_llm.datamodule import check_batch_sizes
        from collab_llm.fingerprint import check_cf_folder

        config = self.config.get(self.subcommand) if self.subcommand else self.config
        sizes = (config.get("data.batch_size"), config.get("data.eval_batch_size"))
        if all(isinstance(n, int) for n in sizes):
            check_batch_sizes(*sizes)  # before the backbone loads (it reports progress on stderr)
        try:
            backbone = config.get("model.init_args.backbone_path")
            cf_dir, data_dir = config.get("model.init_args.cf_model_path"), config.get("data.data_dir")
        except (AttributeError, KeyError, TypeError):
            return
        if backbone is not None and str(backbone) == DEFAULT:
            folder = resolve_backbone(backbone)
            config["model.init_args.backbone_path"] = folder
            if config.get("data.tokenizer_path") is not None and str(config.get("data.tokenizer_path")) == DEFAULT:
                config["data.tokenizer_path"] = folder
        if cf_dir and data_dir:
            check_cf_folder(cf_dir, data_dir)


def check_ckpt_path(value: str | None) -> None:
    """Refuse a ``--ckpt_path`` file that is not a checkpoint (a torch zip archive, as ``ModelCheckpoint`` writes)
    before anything is built, instead of the unpickler's traceback. ``last`` / ``best`` / ``hpc``, URLs and
    missing files (Lightning names those itself) pass."""
    import zipfile
    from pathlib import Path

    from collab_llm.errors import UserError

    if not value or value in ("last", "best", "hpc") or "://" in str(value) or str(value).startswith("registry"):
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file (--ckpt_path takes a .ckpt file or 'last')")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a checkpoint (expected the torch archive a ModelCheckpoint writes, e.g. "
                        "<dirpath>/last.ckpt; --ckpt_path)")


def build_cli(argv: Sequence[str] | None = None, run: bool = True) -> CollabLLMCLI:
    """Parse ``argv`` (default ``sys.argv[1:]``), e.g. ``["fit", "--config", "x.yaml"]``, and run it.

    With ``run=False`` pass no subcommand; the model / datamodule / trainer are only built.
    Returns the :class:`CollabLLMCLI` (``.model``, ``.datamodule``, ``.trainer``) for inspection.
    """
    import sys

    from collab_llm.config_guard import check_class_paths
    from collab_llm.console import quiet_known_noise

    quiet_known_noise()  # Lightning's litlogger tip, deprecations inside the libraries (collab_llm.console)
    check_class_paths(sys.argv[1:] if argv is None else argv)  # only the project's (and torch/Lightning's) classes
    return CollabLLMCLI(
        CollabLLM,
        RecDataModule,
        subclass_mode_model=True,
        args=None if argv is None else list(argv),
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``collab-llm fit|validate|test|predict ...``); returns the exit status 0."""
    build_cli(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
