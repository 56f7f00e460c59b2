"""Every shipped configs/cf/*.yaml parses, instantiates and trains one epoch on a synthetic split;
``cf fit`` exports a model that ``cf test`` scores identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cf_models import CFModel
from cf_models.cli import build_cli, fit, main
from cf_models.data import InteractionDataModule, SequenceDataModule, YesNoDataModule
from cf_models.synthetic import write_synthetic_split
from cf_models.training import KeepBestWeights
from lightning.pytorch.callbacks import EarlyStopping

torch.set_num_threads(1)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "cf").glob("*.yaml"))
PROTOCOL_OF_DATA = {
    "cf_models.data.SequenceDataModule": "loo",
    "cf_models.data.InteractionDataModule": "random",
    "cf_models.data.YesNoDataModule": "yesno",
}
# small overrides so that an epoch takes well under a second
SMALL = ["--trainer.max_epochs", "1", "--trainer.enable_model_summary", "false"]


def _split_for(config: Path, tmp_path: Path) -> Path:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    protocol = PROTOCOL_OF_DATA[data_class]
    return write_synthetic_split(tmp_path / protocol, protocol, n_users=12, n_items=40, length=12)


def test_the_three_target_configs_ship():
    assert {c.name for c in CONFIGS} >= {"sasrec_ml100k_loo.yaml", "bpr_ml100k_random.yaml", "mf_collm_ml1m.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_header_shows_the_command(config):
    assert f"collab-llm cf fit --config configs/cf/{config.name}" in config.read_text()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_instantiates_with_linked_sizes(config, tmp_path):
    split = _split_for(config, tmp_path)
    cli = build_cli(["--config", str(config), "--data.init_args.split_dir", str(split)])
    assert isinstance(cli.datamodule, (SequenceDataModule, InteractionDataModule, YesNoDataModule))
    assert cli.model.model.n_items == 40  # linked from the split's manifest
    # early stopping and best-epoch restore watch the same validation metric
    stops = [cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping)]
    keeps = [cb for cb in cli.trainer.callbacks if isinstance(cb, KeepBestWeights)]
    assert len(stops) == 1 and len(keeps) == 1
    assert stops[0].monitor == keeps[0].monitor and stops[0].mode == keeps[0].mode


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_fits_exports_and_tests(config, tmp_path, capsys):
    split = _split_for(config, tmp_path)
    export = tmp_path / "export"
    args = ["--config", str(config), "--data.init_args.split_dir", str(split), "--export_dir", str(export), *SMALL]
    result = fit(args)
    assert result.epochs_run == 1 and result.best_epoch == 0
    assert (export / "model.safetensors").is_file()
    saved = json.loads((export / "metrics.json").read_text())
    assert saved["test"] == pytest.approx(result.test_metrics)
    model = CFModel.from_pretrained(export)
    assert model.n_items == 40
    # the exported model evaluated by `cf test` gives the same test metrics as fit did
    assert main(["test", "--config", str(config), "--data.init_args.split_dir", str(split),
                 "--model_dir", str(export)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == pytest.approx(result.test_metrics)


def test_fit_is_reproducible_with_the_seed(tmp_path):
    config = next(c for c in CONFIGS if c.name == "sasrec_ml100k_loo.yaml")
    split = _split_for(config, tmp_path)
    args = ["--config", str(config), "--data.init_args.split_dir", str(split), *SMALL,
            "--model.init_args.hidden_size", "16", "--model.init_args.ffn_dim", "16"]
    a, b = fit(args), fit(args)
    assert a.test_metrics == b.test_metrics


def test_cosine_schedule_warms_up_then_decays_to_the_floor_over_the_planned_steps(tmp_path):
    import math

    from lightning.pytorch.callbacks import Callback

    config = next(c for c in CONFIGS if c.name == "sasrec_ml100k_loo.yaml")
    split = _split_for(config, tmp_path)
    args = ["--config", str(config), "--data.init_args.split_dir", str(split), "--trainer.max_epochs", "3",
            "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "4",
            "--model.init_args.hidden_size", "16", "--model.init_args.ffn_dim", "16", "--model.init_args.lr", "0.01",
            "--model.init_args.lr_schedule", "cosine", "--model.init_args.warmup_steps", "2",
            "--model.init_args.min_lr_ratio", "0.1"]
    cli = build_cli(args)
    seen: list[float] = []

    class RecordLR(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    cli.trainer.callbacks.append(RecordLR())
    for cb in cli.trainer.callbacks:  # run all three epochs
        if isinstance(cb, EarlyStopping):
            cb.patience = 100
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    total = len(seen)
    assert total == int(cli.trainer.estimated_stepping_batches) >= 6
    expected = [0.005, 0.01] + [
        0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / (total - 2)))) for s in range(2, total)
    ]
    assert seen == pytest.approx(expected)
    assert seen[-1] > 0.001  # the floor is reached after the last step, not before
    from cf_models.training import SASRecTask

    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        SASRecTask(n_items=5, lr_schedule="linear")
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        SASRecTask(n_items=5, lr_schedule="cosine", min_lr_ratio=1.5)
