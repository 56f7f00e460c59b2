"""``collab-llm cf ...``: train, evaluate and export CF backbones from YAML configs (LightningCLI).

    collab-llm cf fit  --config configs/cf/sasrec_ml100k_loo.yaml [--export_dir DIR] [--model.init_args.lr 2e-3 ...]
    collab-llm cf test --config configs/cf/sasrec_ml100k_loo.yaml --model_dir DIR

``fit`` trains (seeded, early stopping on the config's validation metric), restores the best
validation epoch, evaluates it on the test split, prints the metrics as one JSON line and, with
``--export_dir`` (or ``export_dir:`` in the YAML), writes the model with ``save_pretrained`` plus
``metrics.json`` in one atomic step, with the checksums of its files and what it was made from (split
fingerprint, item catalogue, seed, config hash). ``test`` refuses a model whose catalogue is not the split's. ``test`` evaluates an exported model on the config's data module.

Configs use LightningCLI's ``class_path`` / ``init_args`` for ``model`` (a ``cf_models.training``
task) and ``data`` (a ``cf_models.data`` module); ``n_users`` / ``n_items`` are linked from the data.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from cf_models.base import METRICS_NAME, CFModel
from cf_models.data import CFDataModule
from cf_models.evaluate import evaluate
from cf_models.training import CFTask, KeepBestWeights

USAGE = __doc__


class CFLightningCLI(LightningCLI):
    """LightningCLI with catalog sizes linked from the data module and export arguments."""

    def init_parser(self, **kwargs):  # noqa: ANN003, ANN201 - LightningCLI's
        """LightningCLI's parser (also each subcommand's), reporting a bad flag or value in one line."""
        from collab_llm.errors import one_line_parser_errors

        parser = super().init_parser(**kwargs)
        one_line_parser_errors(parser, "collab-llm cf fit|test")
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export_dir", type=str | None, default=None,
                            help="write the best model here with save_pretrained (+ metrics.json)")
        parser.add_argument("--model_dir", type=str | None, default=None,
                            help="(cf test) folder of a model written by save_pretrained")
        parser.link_arguments("data", "model.init_args.n_items", compute_fn=_n_items, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.n_users", compute_fn=_n_users, apply_on="instantiate")


def _n_items(data: CFDataModule) -> int:
    return data.n_items


def _n_users(data: CFDataModule) -> int:
    return data.n_users


def build_cli(args: Sequence[str]) -> CFLightningCLI:
    """Parse ``args`` (``--config`` files and overrides) and instantiate trainer, task and data."""
    from collab_llm.config_guard import check_class_paths

    from collab_llm.console import quiet_known_noise

    quiet_known_noise()  # Lightning's litlogger tip and the libraries' own deprecations (collab_llm.console)
    check_class_paths(args)  # a config may only name the project's (and torch/Lightning's) classes
    with warnings.catch_warnings():
        # we always pass args explicitly (collab-llm's own argv holds the 'cf fit' prefix)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _make_cli(args)


def _make_cli(args: Sequence[str]) -> CFLightningCLI:
    return CFLightningCLI(
        model_class=CFTask,
        datamodule_class=CFDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=list(args),
        save_config_callback=None,
        parser_kwargs={"prog": "collab-llm cf", "description": "Train a CF backbone (MF, SASRec)"},
    )


@dataclass
class FitResult:
    """What ``fit`` returns: test metrics of the restored best epoch, its validation score and timings."""

    test_metrics: dict[str, float]
    best_valid: float | None
    best_epoch: int | None
    epochs_run: int
    train_seconds: float
    export_dir: str | None
    monitor: str | None = None

    def as_dict(self) -> dict:
        return {
            "test": self.test_metrics, "best_valid": self.best_valid, "best_epoch": self.best_epoch,
            "monitor": self.monitor, "epochs_run": self.epochs_run, "train_seconds": round(self.train_seconds, 2),
            "export_dir": self.export_dir,
        }


def made_from(cli: CFLightningCLI) -> dict:
    """What an export records it was made from: the split (folder, fingerprint, item catalogue), the seed,
    the task class and the hash of the parsed config (without the export / model folders)."""
    from collab_llm.fingerprint import canonical_sha256, catalog_sha256, split_sha256

    split_dir = cli.datamodule.split.folder
    config = cli.config.as_dict() if hasattr(cli.config, "as_dict") else dict(cli.config)
    for key in ("export_dir", "model_dir", "config"):
        config.pop(key, None)
    return {
        "split": str(split_dir), "split_sha256": split_sha256(split_dir), "catalog_sha256": catalog_sha256(split_dir),
        "seed": config.get("seed_everything"), "task": type(cli.model).__name__, "config_sha256": canonical_sha256(config),
    }


def fit(args: Sequence[str]) -> FitResult:
    """Train from a config, restore the best epoch, test it and optionally export it.

    The export (weights + ``metrics.json`` + ``config.json`` with checksums and ``made_from``) is one
    atomic step: a killed run leaves no folder, so a folder with weights but no metrics never exists.
    The export folder is checked before training (only a CF export may be replaced) and locked for the
    whole run (:func:`collab_llm.io.output_lock`): a second ``cf fit`` into it is refused.
    """
    from cf_models.base import is_cf_export
    from collab_llm.errors import UserError
    from collab_llm.io import output_lock

    cli = build_cli(args)
    export_dir = cli.config.export_dir
    if not export_dir:
        return _fit(cli, None)
    problem = is_cf_export(export_dir)
    if problem is not None or Path(export_dir).is_symlink():
        raise UserError(f"{export_dir}: {problem or 'is a symbolic link'}; refusing to replace it (choose another --export_dir)")
    with output_lock(export_dir, command="collab-llm cf fit"):
        return _fit(cli, export_dir)


def _fit(cli: CFLightningCLI, export_dir: str | None) -> FitResult:
    trainer, task, data = cli.trainer, cli.model, cli.datamodule
    keep = [cb for cb in trainer.callbacks if isinstance(cb, KeepBestWeights)]
    if not keep:
        raise ValueError("the config's trainer.callbacks must include cf_models.training.KeepBestWeights "
                         "(it restores the best validation epoch)")
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    train_seconds = time.perf_counter() - start
    trainer.test(task, datamodule=data, verbose=False)
    test_metrics = task.last_results["test"]
    result = FitResult(
        test_metrics=test_metrics, best_valid=keep[0].best_score, best_epoch=keep[0].best_epoch,
        epochs_run=trainer.current_epoch, train_seconds=train_seconds, export_dir=export_dir, monitor=keep[0].monitor,
    )
    if export_dir:
        task.export_model().save_pretrained(export_dir, extra_json={METRICS_NAME: result.as_dict()}, made_from=made_from(cli))
    return result


def test(args: Sequence[str]) -> dict[str, float]:
    """Evaluate an exported model (``--model_dir``) on the test split of the config's data module."""
    from collab_llm.fingerprint import check_cf_matches_split

    cli = build_cli(args)
    model_dir = cli.config.model_dir
    if not model_dir:
        raise ValueError("cf test needs --model_dir DIR (a folder written by save_pretrained)")
    data = cli.datamodule
    model = CFModel.from_pretrained(model_dir)
    check_cf_matches_split(model_dir, model.n_items, model.made_from, data.split.folder)
    return evaluate(model, data.test_dataloader(), data.make_evaluator("test"))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "fit":
        result = fit(rest)
        print(json.dumps(result.as_dict(), sort_keys=True))
        return 0
    if command == "test":
        print(json.dumps(test(rest), sort_keys=True))
        return 0
    print(f"collab-llm cf: unknown command {command!r}; expected 'fit' or 'test'\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
