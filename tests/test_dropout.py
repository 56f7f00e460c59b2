"""LoRA dropout with packed masks (``LoRA(dropout_masks="bits16")``): the same dropout, fewer random draws."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_module  # noqa: E402

from collab_llm.adapters import ILoRA, LoRA, adapter_from_dict  # noqa: E402
from collab_llm.dropout import PackedDropout, packed_keep_mask, use_packed_dropout  # noqa: E402
from collab_llm.recommender import Recommender  # noqa: E402


def test_mask_keeps_each_element_with_the_rounded_probability_and_scales_to_its_expectation():
    torch.manual_seed(0)
    n = 1_000_000
    keep, scale = packed_keep_mask((n,), 0.1)
    q = 6554 / 65536  # 0.1 rounded to a multiple of 1/65536
    rate = keep.float().mean().item()
    assert abs(rate - (1 - q)) < 5 * math.sqrt(q * (1 - q) / n)
    assert scale == pytest.approx(1 / (1 - q), rel=1e-12)
    # the four 16-bit lanes of a word are independent: neighbours' keep flags uncorrelated, every lane at the rate
    k = keep.float().view(-1, 4)
    for lane in range(4):
        assert abs(k[:, lane].mean().item() - (1 - q)) < 5 * math.sqrt(q * (1 - q) / (n / 4))
    corr = torch.corrcoef(torch.stack([k[:, 0], k[:, 1]]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(n / 4)
    for p in (0.05, 0.3, 0.5):
        keep, scale = packed_keep_mask((200_000,), p)
        dropped = round(p * 65536) / 65536
        assert abs(keep.float().mean().item() - (1 - dropped)) < 5 * math.sqrt(p * (1 - p) / 200_000)
        assert scale * (1 - dropped) == pytest.approx(1.0, rel=1e-12)


def test_masks_follow_torchs_seed():
    torch.manual_seed(3)
    a, _ = packed_keep_mask((4, 7, 33), 0.2)
    b, _ = packed_keep_mask((4, 7, 33), 0.2)
    torch.manual_seed(3)
    c, _ = packed_keep_mask((4, 7, 33), 0.2)
    assert torch.equal(a, c) and not torch.equal(a, b)
    assert a.shape == (4, 7, 33) and a.dtype == torch.bool
    assert packed_keep_mask((0,), 0.2)[0].shape == (0,)  # an empty input draws nothing
    if torch.cuda.is_available():  # the mask is made where the input lives (GPU runs)
        x = torch.randn(2, 8, device="cuda")
        assert PackedDropout(0.5)(x).device == x.device


def test_packed_dropout_is_dropout_forward_and_backward():
    x = torch.randn(3, 5, 64, requires_grad=True)
    drop = PackedDropout(0.25)
    torch.manual_seed(1)
    out = drop(x)
    torch.manual_seed(1)
    keep, scale = packed_keep_mask(x.shape, 0.25)
    torch.testing.assert_close(out, x * keep * scale, rtol=0, atol=0)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(x.grad, g * keep * scale, rtol=0, atol=0)
    assert 0 < int((out == 0).sum()) < out.numel()
    # bf16 input keeps its dtype
    assert drop(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    drop.eval()
    assert drop(x) is x
    assert PackedDropout(0.0)(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        PackedDropout(1.0)


def test_dropout_masks_is_checked_and_recorded():
    with pytest.raises(ValueError, match="dropout_masks 'fast'"):
        LoRA(dropout_masks="fast")
    with pytest.raises(ValueError, match="dropout_masks"):
        ILoRA(dropout_masks="x")
    spec = ILoRA(r=4, num_experts=2, dropout_masks="bits16")
    assert adapter_from_dict(spec.to_dict()) == spec
    assert adapter_from_dict({"class_path": "collab_llm.adapters.LoRA", "init_args": {"r": 4}}).dropout_masks == "bernoulli"


@pytest.mark.parametrize("adapter", [LoRA(r=4, alpha=8.0, dropout=0.1, dropout_masks="bits16"),
                                     ILoRA(r=4, alpha=8.0, dropout=0.1, num_experts=2, dropout_masks="bits16")])
def test_recommender_trains_with_packed_masks_and_a_bundle_keeps_them(tmp_path, adapter):
    """Every LoRA dropout of the peft model is a PackedDropout of the same p (iLoRA's gate hooks still run), a
    training step changes the adapter, and the bundle reloads with the option."""
    module, data = make_module(tmp_path, "next_item", template="llara_movielens", projector="llara_mlp",
                               data_kw={"batch_size": 2, "eval_batch_size": 4}, adapter=adapter,
                               learning_rate=1e-2, n_bootstrap=0)
    llm = module.recommender.llm
    drops = [m for n, m in llm.named_modules() if "lora_dropout." in n]
    assert drops and all(isinstance(m, PackedDropout) and m.p == 0.1 for m in drops)
    assert not any(isinstance(m, torch.nn.Dropout) for n, m in llm.named_modules() if "lora_dropout." in n)
    before = {n: p.detach().clone() for n, p in llm.named_parameters() if p.requires_grad}
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, max_steps=2, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(before[n], p) for n, p in llm.named_parameters() if p.requires_grad)
    folder = module.recommender.save_pretrained(tmp_path / "bundle", stage=module.training_stage())
    loaded = Recommender.from_pretrained(folder)
    assert loaded.adapter == adapter
    assert all(isinstance(m, PackedDropout) for n, m in loaded.llm.named_modules() if "lora_dropout." in n)
    # nothing left to replace the second time
    assert use_packed_dropout(loaded.llm) == 0


def test_default_keeps_peft_dropout(tmp_path):
    module, _ = make_module(tmp_path, "next_item", template="llara_movielens", projector="llara_mlp",
                            data_kw={"batch_size": 2, "eval_batch_size": 4}, adapter=LoRA(r=4, dropout=0.1),
                            n_bootstrap=0)
    drops = [m for n, m in module.recommender.llm.named_modules() if "lora_dropout." in n]
    assert drops and all(type(m) is torch.nn.Dropout for m in drops)
