"""Real ``kill -9`` of LLM ``fit`` and ``compare`` at deterministic points, then the same command again.

Each test runs the ``collab-llm`` command line in a forked process with ``COLLAB_LLM_KILL_AT`` set (the process
SIGKILLs itself at that point, :mod:`collab_llm.faults`), checks what the kill left, reruns the same command
without the variable and asserts that it ends as an uninterrupted run does (bit-identical trainable weights,
the same metrics) with no ``.tmp-``/``.old-`` leftovers and no lock. ``prepare`` and ``cf fit`` kills are in
``test_bad_input_artifacts.py`` (they share its artifacts).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm.cli import main as cli_main  # noqa: E402
from collab_llm.faults import KILL_ENV  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def run_killed(argv: list[str], point: str, cwd: Path) -> None:
    """Run ``collab-llm argv`` in a forked child (the imports paid once, by this process) that kills itself
    with SIGKILL at ``point``; fail unless it died that way."""
    pid = os.fork()
    if pid == 0:  # the child: the real command line, then a real kill -9 from inside it
        code = 1
        try:
            os.environ[KILL_ENV] = point
            os.chdir(cwd)
            code = cli_main(argv)
        except BaseException:  # noqa: BLE001 - reported through the exit code, the child must not return
            traceback.print_exc()
        finally:
            os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"not killed at {point}: {'exit ' + str(os.WEXITSTATUS(status)) if os.WIFEXITED(status) else status}")


def debris(root: Path) -> list[str]:
    """Temporary, moved-aside and lock files anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name
                  or p.name.endswith(".lock"))


def test_kill_9_of_llm_fit_mid_epoch_then_rerun_resumes_exactly(tmp_path, monkeypatch):
    """``collab-llm fit ... --ckpt_path last`` killed right after its mid-epoch checkpoint (step 6 of 8, in
    epoch 2 of 2); the same command again resumes from it and ends with the uninterrupted run's weights."""
    shared = tmp_path / "shared"
    argv = ["fit", "--config", str(REPO / "configs/llm/experiments/llara.yaml"),
            "--model.backbone_path", str(make_backbone_dir(shared, "llama")),
            "--model.cf_model_path", str(make_cf_dirs(shared)["sasrec"]),
            "--data.data_dir", str(make_split(shared, "next_item")),
            "--data.batch_size", "2", "--model.adapter.r", "4", "--model.warmup_steps", "2",
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.init_args.every_n_train_steps", "2", "--trainer.callbacks.init_args.dirpath", "ckpt",
            "--ckpt_path", "last"]
    for name in ("once", "killed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "once")
    assert cli_main(argv) == 0
    expected = torch.load("ckpt/last.ckpt", map_location="cpu", weights_only=False)

    run_killed(argv, "train_batch:7", tmp_path / "killed")  # the 7th batch drawn: step 6, after its checkpoint
    left = torch.load(tmp_path / "killed/ckpt/last.ckpt", map_location="cpu", weights_only=False)
    assert left["global_step"] == 6 and left["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2}]
    monkeypatch.chdir(tmp_path / "killed")
    assert cli_main(argv) == 0
    got = torch.load("ckpt/last.ckpt", map_location="cpu", weights_only=False)
    assert got["global_step"] == expected["global_step"] == 8
    assert set(got["state_dict"]) == set(expected["state_dict"])
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    assert debris(tmp_path) == []


def _records(report: Path) -> list[tuple]:
    """The report's estimates without its timings."""
    records = json.loads((report / "results.json").read_text())
    return sorted((r["method"], r["metric"], r.get("subset", "all"), r["value"], r["ci_low"], r["ci_high"]) for r in records)


def test_kill_9_of_compare_mid_run_then_rerun_gives_the_uninterrupted_report(tmp_path, monkeypatch):
    """``collab-llm compare`` killed after its first method finished, while it records the second (its
    bundle written, its ``result.json`` not yet renamed into place): the same command again skips the first
    run, trains the second again and writes the uninterrupted report's estimates; no leftovers, no lock."""
    import shutil

    from test_llm_fixtures import as_compare_work

    work = tmp_path / "work"
    (work / "cf").mkdir(parents=True)
    shutil.copytree(make_split(tmp_path, "next_item"), work / "ml100k_loo")
    shutil.copytree(make_cf_dirs(tmp_path)["sasrec"], work / "cf" / "sasrec_ml100k_loo-ep1")
    as_compare_work(work / "ml100k_loo", work / "cf" / "sasrec_ml100k_loo-ep1", "nextitem/loo", "ml-100k")
    argv = ["compare", "--protocol", "nextitem", "--methods", "sasrec", "llara", "--profile", "smoke",
            "--work-dir", str(work), "--backbone", str(make_backbone_dir(tmp_path, "llama"))]
    monkeypatch.chdir(tmp_path)
    assert cli_main([*argv, "--report-dir", "once"]) == 0

    killed = [*argv, "--report-dir", "killed"]
    run_killed(killed, "atomic_file:result.json:2", tmp_path)
    runs = tmp_path / "killed" / "runs"
    assert (runs / "sasrec" / "result.json").exists() and not (runs / "llara" / "result.json").exists()
    assert (runs / "llara" / "bundle" / "bundle.json").exists()  # trained and exported, not recorded
    assert [p.name for p in runs.joinpath("llara").glob(".result.json.tmp-*")] and (tmp_path / ".killed.lock").exists()
    sasrec_before = (runs / "sasrec" / "result.json").read_text()
    assert cli_main(killed) == 0
    assert (runs / "sasrec" / "result.json").read_text() == sasrec_before  # skipped, not run again
    assert _records(tmp_path / "killed") == _records(tmp_path / "once")
    assert debris(tmp_path) == []
