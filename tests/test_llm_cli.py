"""Every shipped LLM config runs through LightningCLI (fast_dev_run) on a tiny model and split."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm.llm_cli import build_cli, main  # noqa: E402

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "llm"


def overrides(tmp_path: Path, task: str, model_cfg: dict, family: str = "llama") -> list[str]:
    args = [
        "--model.backbone_path", str(make_backbone_dir(tmp_path, family)),
        "--data.data_dir", str(make_split(tmp_path, task)),
        "--trainer.fast_dev_run", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "2",
        "--data.eval_batch_size", "6",
        "--model.n_bootstrap", "10",
    ]
    cf = model_cfg["model"].get("cf_model_path")
    if cf is not None:
        dirs = make_cf_dirs(tmp_path)
        kind = "sasrec" if "sasrec" in cf else "mf_bias" if model_cfg["model"].get("cf_fold_biases") else "mf"
        args += ["--model.cf_model_path", str(dirs[kind])]
    targets = ((model_cfg["model"].get("adapter") or {}).get("init_args") or {}).get("target_modules")
    if targets is not None and family == "gpt2":
        args += ["--model.adapter.target_modules", "[c_attn]"]
    if model_cfg["model"].get("regime") == "two_stage":
        args += ["--model.stage1_steps", "1"]
    if (model_cfg["model"].get("head_layer") or 0) > 2:
        args += ["--model.head_layer", "2"]  # the tiny backbones have 2 decoder blocks
    return args


def load(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize("name", ["tallrec", "llara", "collm", "ilora"])
def test_experiment_configs_fit(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    cfg_path = CONFIGS / "experiments" / f"{name}.yaml"
    text = cfg_path.read_text()
    assert f"collab-llm fit --config configs/llm/experiments/{name}.yaml" in text  # header command
    cfg = load(cfg_path)
    assert cfg["data"]["data_dir"] == "work/ml100k_loo"  # all read the same split and candidates
    if "class_path" in cfg["model"]:  # subclass form (iLoRA): model: {class_path, init_args}
        cfg = {"model": cfg["model"]["init_args"], "class_path": cfg["model"]["class_path"]}
    family = "gpt2" if name == "collm" else "llama"
    cli = build_cli(["fit", "--config", str(cfg_path), *overrides(tmp_path, "next_item", cfg, family)])
    model = cli.model
    assert type(model).__name__ == cfg.get("class_path", "collab_llm.module.CollabLLM").rsplit(".", 1)[1]
    assert model.regime == cfg["model"]["regime"]
    assert cli.trainer.global_step == 1
    assert model.last_metrics and 0.0 <= model.last_metrics["val/hr@1"] <= 1.0
    assert cli.datamodule.collator.tokenizer.convert_tokens_to_ids("[HistoryEmb]") == model.placeholder_ids["[HistoryEmb]"]


def test_llara_test_subcommand_and_main(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = CONFIGS / "experiments" / "llara.yaml"
    cli = build_cli(["test", "--config", str(cfg_path), *overrides(tmp_path, "next_item", load(cfg_path))])
    m = cli.model.last_metrics
    assert m["test/n_rows"] == 6 and m["test/hr@5_ci_low"] <= m["test/hr@5"] <= m["test/hr@5_ci_high"]
    assert main(["validate", "--config", str(cfg_path), *overrides(tmp_path, "next_item", load(cfg_path))]) == 0
    cli = build_cli(["predict", "--config", str(cfg_path), *overrides(tmp_path, "next_item", load(cfg_path)),
                     "--model.predictions_dir", str(tmp_path / "pred")])
    rows = [r for batch in cli.trainer.predict_loop.predictions for r in batch]
    assert [r["row_index"] for r in rows] == list(range(6))
    assert all(len(r["scores"]) == 5 and r["target_index"] in range(5) for r in rows)
    written = pd.read_parquet(tmp_path / "pred" / "predictions_predict.parquet")  # predict writes its rows
    assert written["row_index"].tolist() == list(range(6))
    assert np.allclose(np.stack(written["scores"].to_numpy()), np.array([r["scores"] for r in rows]))


@pytest.mark.parametrize(
    "trainer_cfg,data_cfg,model_cfg,task",
    [
        ("cpu", "ml100k_loo", "tallrec", "next_item"),
        ("cpu", "ml100k_llara", "llara", "next_item"),
        ("cpu", "ml100k_loo", "collm", "next_item"),
        ("gpu_bf16", "ml1m_collm", "collm_yes_no", "yes_no"),
        ("cpu", "ml100k_tallrec", "tallrec_yes_no", "yes_no"),
        ("cpu", "ml1m_collm", "tallrec_collm", "yes_no"),
        ("cpu", "ml100k_loo", "head", "next_item"),
        ("cpu", "ml1m_collm", "head_yes_no", "yes_no"),
        ("cpu", "ml1m_collm", "head_l4_user_yes_no", "yes_no"),
    ],
)
def test_fragments_compose(tmp_path, monkeypatch, trainer_cfg, data_cfg, model_cfg, task):
    monkeypatch.chdir(tmp_path)
    paths = [CONFIGS / "trainer" / f"{trainer_cfg}.yaml", CONFIGS / "data" / f"{data_cfg}.yaml", CONFIGS / "model" / f"{model_cfg}.yaml"]
    args = ["fit"]
    for p in paths:
        args += ["--config", str(p)]
    args += overrides(tmp_path, task, load(paths[2]), "qwen2" if task == "yes_no" else "llama")
    if trainer_cfg == "gpu_bf16":
        args += ["--trainer.accelerator", "cpu"]  # the bf16 path, on CPU
    cli = build_cli(args)
    fine_tune = load(paths[2])["model"].get("fine_tune", True)
    assert cli.trainer.global_step == 1
    if not fine_tune:  # a closed-form head: fitted at train start, the LoRA never updated
        assert int(cli.model.head.initialized) == 1
        assert all(float(p.abs().max()) == 0.0 for n, p in cli.model.llm.named_parameters() if "lora_B" in n)
    assert cli.datamodule.task == task
    if trainer_cfg == "gpu_bf16":
        llm = cli.model.llm
        assert cli.model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in cli.model.trainable_parameters())
        assert llm is not None
    key = "val/auc" if task == "yes_no" else "val/hr@1"
    assert key in cli.model.last_metrics


def _merged(*docs: dict) -> dict:
    """YAML documents composed as ``--config a --config b`` composes them: mappings merge, later values win."""
    out: dict = {}
    for doc in docs:
        for key, value in doc.items():
            old = out.get(key)
            out[key] = _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("name", ["tallrec", "llara", "collm", "ilora"])
def test_experiment_config_is_its_fragments_composition(name):
    """An experiment file is a one-file copy of the fragments its header names (``# = a + b + c``), plus only
    ``model.dtype: float32`` and its logger's name: the copies cannot drift from the fragments compare runs."""
    from collab_llm.runs import composed_model

    path = CONFIGS / "experiments" / f"{name}.yaml"
    header = next(line for line in path.read_text().splitlines() if line.startswith("# = "))
    repo = CONFIGS.parents[1]
    fragments = [repo / part.strip() for part in header[len("# = "):].split("+")]
    assert [f.parent.name for f in fragments] == ["trainer", "data", "model"], header
    expected = _merged(*(load(f) for f in fragments),
                       {"model": {"dtype": "float32"}, "trainer": {"logger": {"init_args": {"name": name}}}})
    assert load(path) == expected
    assert composed_model(fragments[2:]).regime == expected["model"]["regime"]  # the fragments parse as the CLI reads them
