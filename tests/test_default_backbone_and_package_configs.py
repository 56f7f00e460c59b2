"""The default backbone is named in one place and follows ``$COLLAB_LLM_CACHE`` (configs say ``backbone_path:
default``); the shipped configs are package data, so compare finds them from an installed wheel."""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm import assets, cli, compare  # noqa: E402
from collab_llm.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _cache_with_default_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache (via $COLLAB_LLM_CACHE) whose default backbone folder holds the tiny model."""
    cache = tmp_path / "cache"
    folder = cache / assets.DEFAULT_BACKBONE
    folder.parent.mkdir(parents=True)
    shutil.copytree(make_backbone_dir(tmp_path, "llama"), folder)
    monkeypatch.setenv("COLLAB_LLM_CACHE", str(cache))
    monkeypatch.setattr(assets, "is_complete", lambda path, *a: (Path(path) / "config.json").is_file())
    return folder


def test_shipped_llm_configs_name_no_backbone_folder():
    for path in sorted((REPO / "configs" / "llm").rglob("*.yaml")):
        settings = [line.split("#")[0] for line in path.read_text().splitlines()]  # comments aside
        assert not any(".cache/collab_llm" in s or "SmolLM2" in s for s in settings), path
        for line in settings:
            if line.strip().startswith("backbone_path:"):
                assert line.split(":", 1)[1].strip() == assets.DEFAULT, path


def test_default_backbone_follows_the_cache_setting(tmp_path, monkeypatch):
    folder = _cache_with_default_backbone(tmp_path, monkeypatch)
    assert assets.resolve_backbone("default") == str(folder) == assets.resolve_backbone(None)
    assert assets.resolve_backbone("some/folder") == "some/folder"
    monkeypatch.setenv("COLLAB_LLM_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="--backbone default: the default backbone .*elsewhere"):
        assets.resolve_backbone("default", flag="--backbone")


def test_fit_with_the_shipped_experiment_uses_the_cache_backbone(tmp_path, monkeypatch, capsys):
    folder = _cache_with_default_backbone(tmp_path, monkeypatch)
    split, cf = make_split(tmp_path, "next_item"), make_cf_dirs(tmp_path)["sasrec"]
    argv = ["fit", "--config", str(REPO / "configs" / "llm" / "experiments" / "llara.yaml"), "--data.data_dir", str(split),
            "--model.cf_model_path", str(cf), "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    from collab_llm.llm_cli import build_cli

    built = build_cli(argv)
    assert built.model.hparams.backbone_path == str(folder)  # the checkpoint records the folder, not "default"
    assert built.datamodule.tokenizer_path == str(folder)

    monkeypatch.setenv("COLLAB_LLM_CACHE", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("collab-llm: error: --model.backbone_path default:") and "\n" not in err
    assert str(tmp_path / "empty-cache") in err


def test_configs_ship_as_package_data():
    """Every configs/**.yaml is matched by pyproject's package-data globs under collab_llm/configs, and compare
    reads its configs from the package (``collab_llm/configs``), naming them as before in fingerprints."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["collab_llm"]
    package = REPO / "collab_llm"
    shipped = {p.resolve() for g in globs for p in package.glob(g)}
    wanted = {p.resolve() for p in (REPO / "configs").rglob("*.yaml")}
    assert wanted and wanted <= shipped, sorted(str(p) for p in wanted - shipped)
    assert compare.CONFIGS == package / "configs" and compare.CONFIGS.resolve() == (REPO / "configs").resolve()
    assert compare.config_name(compare.PROTOCOLS["nextitem"].cf_config) == "configs/cf/sasrec_ml100k_loo.yaml"
