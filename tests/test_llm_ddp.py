"""DDP with 2 CPU processes (gloo) for a few steps on the tiny model: ranks stay in sync."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from safetensors.torch import save_file

    from collab_llm.datamodule import RecDataModule
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM

    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    module = CollabLLM(
        backbone_path=str(root / "tiny-llama"), template="llara_movielens", regime="curriculum",
        curriculum_steps=2, cf_model_path=str(root / "cf-sasrec"), adapter=LoRA(r=4, alpha=8.0,
        dropout=0.1), learning_rate=1e-2, seed=0,
    )
    save_file({k: v.contiguous() for k, v in module.trainable_state().items()}, str(root / "init.safetensors"))
    data = RecDataModule(str(root / "split-next_item"), "llara_movielens", str(root / "tiny-llama"), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    modes = [module.train_mode_at(s) for s in range(3)]
    state = {k: v.contiguous() for k, v in module.trainable_state().items()}
    save_file(state, str(root / f"rank{trainer.global_rank}.safetensors"), metadata={"modes": ",".join(modes)})

    # evaluation under DDP: each rank scores part of the test rows (the sampler pads with repeats);
    # the module gathers them, so every rank must hold all rows once, equal to scoring them alone
    trainer.test(module, datamodule=data, verbose=False)
    gathered = module.predictions["test"]
    data.setup("test")
    test = data.datasets["test"]
    alone = []
    module.eval()
    for start in range(0, len(test), 3):
        alone += module.score_batch(data.collator([test[i] for i in range(start, min(len(test), start + 3))]))
    import json
    (root / f"eval_rank{trainer.global_rank}.json").write_text(json.dumps({
        "n_test": len(test),
        "gathered_rows": gathered["row_index"].tolist(),
        "gathered_scores": gathered["scores"].tolist(),
        "alone_rows": [r["row_index"] for r in alone],
        "alone_scores": [r["scores"] for r in alone],
        "hr1": module.last_metrics.get("test/hr@1"),
    }))
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    make_backbone_dir(tmp_path, "llama")
    make_cf_dirs(tmp_path)
    make_split(tmp_path, "next_item", n_eval=7)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    # the repository root first: an editable install made before projectors/ had an __init__.py
    # resolves it as a namespace package outside the checkout
    path = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, PL_DISABLE_FORK="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    init = load_file(str(tmp_path / "init.safetensors"))
    assert set(r0) == set(r1) == set(init)
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)  # gradients were all-reduced
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if "lora_B" in k)
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if "projector" in k)
    import json

    e0, e1 = (json.loads((tmp_path / f"eval_rank{r}.json").read_text()) for r in (0, 1))
    assert e0["n_test"] % 2 == 1  # an odd number of rows: the distributed sampler had to pad
    for e in (e0, e1):
        assert e["gathered_rows"] == e["alone_rows"] == list(range(e0["n_test"]))  # every row once, in order
        torch.testing.assert_close(torch.tensor(e["gathered_scores"]), torch.tensor(e["alone_scores"]), rtol=0, atol=1e-5)
    assert e0["hr1"] == e1["hr1"]  # both ranks report the metric of all rows
