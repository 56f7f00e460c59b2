"""The LLM side on the real SmolLM2-135M-Instruct (skipped unless the asset cache is filled)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import item_titles, make_cf_dirs, make_split  # noqa: E402

from collab_llm import scoring  # noqa: E402
from collab_llm.backbone import default_lora_targets, load_backbone  # noqa: E402
from collab_llm.collate import PromptCollator  # noqa: E402
from collab_llm.datamodule import RecDataModule  # noqa: E402
from collab_llm.adapters import LoRA  # noqa: E402
from collab_llm.module import CollabLLM  # noqa: E402
from collab_llm.prompts import load_template  # noqa: E402

torch.set_num_threads(1)
pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_smollm2_backbone_tokens_and_templates(real_assets):
    bb = load_backbone(real_assets.smollm2, "bfloat16")
    assert bb.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert default_lora_targets(bb.model) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert len(set(bb.placeholder_ids.values())) == 3 and min(bb.placeholder_ids.values()) >= 49152
    for name in ("collm_movielens", "tallrec_movielens"):
        col = PromptCollator(bb.tokenizer, load_template(name), item_titles(), bb.placeholder_ids)
        assert col.yes_id == scoring.resolve_answer_token(bb.tokenizer, "Yes", prefix=" ")
        assert bb.tokenizer.decode([col.yes_id]) == " Yes" and bb.tokenizer.decode([col.no_id]) == " No"


def test_smollm2_hybrid_training_lowers_the_loss(real_assets, tmp_path):
    cf = make_cf_dirs(tmp_path)
    module = CollabLLM(
        backbone_path=str(real_assets.smollm2), template="llara_movielens", regime="joint",
        cf_model_path=str(cf["sasrec"]), adapter=LoRA(r=8, alpha=32.0, dropout=0.0), learning_rate=2e-3,
    )
    data = RecDataModule(str(make_split(tmp_path, "next_item")), "llara_movielens", str(real_assets.smollm2), batch_size=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=2e-3)
    losses = []
    for _ in range(4):
        loss = module.lm_loss(batch, "hybrid")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
