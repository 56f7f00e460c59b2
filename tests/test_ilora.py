"""iLoRA (collab_llm.ilora): gated rank chunks of one peft LoRA adapter, checked against references.

Every test builds tiny random models (collab_llm.testing) on at least two families; LoRA weights are
randomly initialised (``init_lora_weights=False``) and enlarged so that the adapter and the gate move the
logits far more than the tolerances.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from collab_llm.ilora import (
    ExpertGate,
    GateNetwork,
    ILoRAConfig,
    ILoRAModel,
    assert_not_ilora_folder,
    fold_fixed_gate,
    gate_stats,
    load_ilora,
    load_ilora_model,
    save_ilora,
    save_ilora_model,
)
from collab_llm.testing import tiny_causal_lm

torch.set_num_threads(1)

FAMILIES = ["llama", "gpt2"]
ALL_FAMILIES = ["llama", "qwen2", "gpt2"]
TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
GATE_DIM = 16


def make_peft(family: str, rank: int = 8, alpha: float = 32.0, dropout: float = 0.0, seed: int = 0,
              targets: list[str] | None = None, extra_tokens: int = 0, base_dir=None) -> tuple[PeftModel, object]:
    """Tiny model + a randomly initialised rank-``rank`` LoRA on every target projection.

    ``extra_tokens``: grow the vocabulary first, as adding placeholder tokens does. ``base_dir``: load
    the tiny model from an HF folder there (as the backbone loader does; peft then knows a base path).
    """
    model, tok = tiny_causal_lm(family, seed=seed)
    if base_dir is not None:
        model = load_from_folder(model, base_dir)
    if extra_tokens:
        torch.manual_seed(seed)  # the new rows are random: seeded so that a reload can grow them alike
        model.resize_token_embeddings(len(tok) + extra_tokens)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or TARGETS[family],
        fan_in_fan_out=family == "gpt2", init_lora_weights=False,
    )
    torch.manual_seed(seed + 1)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    peft_model.eval()
    return peft_model, tok


def load_from_folder(model, folder):
    """Save ``model`` as an HF folder (once) and load it back from there."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").exists():
        model.save_pretrained(str(folder))
    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def left_padded(lengths: list[int], vocab: int, pad_id: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, LEFT-padded: ids (B, T) and mask (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, vocab, (n,), generator=gen)
        mask[row, width - n:] = 1
    return ids, mask


def random_gates(batch: int, k: int, seed: int = 0, sharpness: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(batch, k, generator=gen), dim=-1)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_hooked_batch_equals_per_sample_merged_reference(family):
    """Batched gated forward == each sample alone through its own copy with its gate folded and merged."""
    peft_model, tok = make_peft(family)
    reference_peft = copy.deepcopy(peft_model)  # ungated copy, before any hook exists
    ids, mask = left_padded([9, 6, 4], vocab=len(tok), pad_id=tok.pad_token_id)
    gates = random_gates(3, 4)
    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    gate.set(gates)
    with torch.no_grad():
        batched = peft_model(input_ids=ids, attention_mask=mask).logits
        plain = copy.deepcopy(reference_peft)(input_ids=ids, attention_mask=mask).logits
    assert (batched - plain).abs().max() > 1e-2  # the gate matters at this tolerance
    for row in range(3):
        per_sample = copy.deepcopy(reference_peft)
        fold_fixed_gate(per_sample, "default", 4, gates[row])
        merged = per_sample.merge_and_unload()
        with torch.no_grad():
            alone = merged(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1]).logits[0]
        keep = mask[row].bool()
        torch.testing.assert_close(batched[row][keep], alone[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_layer_output_matches_hand_written_expert_sum(family, dropout):
    """One hooked LoRA layer: y - W x == sum_k g_k * (alpha / r_e) * B_k A_k drop(x), from the weights.

    With dropout on (train mode) peft drops ``x`` before ``lora_A``; replaying the RNG gives the same mask,
    so the hook on lora_A's output is exact: one mask shared by all experts.
    """
    peft_model, _ = make_peft(family, rank=8, alpha=32.0, dropout=dropout)
    peft_model.train()
    layer = next(m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    gates = random_gates(2, 4, seed=3)
    gate.set(gates)
    x = torch.randn(2, 5, layer.lora_A["default"].in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(123)
        delta = layer(x) - layer.get_base_layer()(x)
        torch.manual_seed(123)
        dropped = layer.lora_dropout["default"](x).double()
    if dropout > 0:
        assert (dropped == 0).float().mean() > 0.3
    a = layer.lora_A["default"].weight.double()  # (8, in)
    b = layer.lora_B["default"].weight.double()  # (out, 8)
    expected = torch.zeros_like(delta, dtype=torch.float64)
    for k in range(4):
        rows = slice(2 * k, 2 * k + 2)
        expert = dropped @ a[rows].T @ b[:, rows].T  # (2, 5, out)
        expected += gates[:, k, None, None].double() * (32.0 / 2) * expert
    torch.testing.assert_close(delta.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_equal_gates_and_single_expert_reproduce_plain_lora(family):
    peft_model, tok = make_peft(family)
    ids, mask = left_padded([7, 5], vocab=len(tok), pad_id=tok.pad_token_id)
    with torch.no_grad():
        plain = peft_model(input_ids=ids, attention_mask=mask).logits
    # K = 4, gates 1/4: multiplier K * g = 1 -> the plain r=8, alpha=32 LoRA; a zero-initialised gate
    # network gives exactly these uniform gates.
    cfg = ILoRAConfig(num_experts=4, lora_rank=8, lora_alpha=32.0, gate_in_dim=GATE_DIM)
    wrapped = ILoRAModel(peft_model, GateNetwork.from_config(cfg, zero_init_output=True), cfg)
    with torch.no_grad():
        gated = wrapped(torch.randn(2, GATE_DIM), input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(gated, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(wrapped.gate.weights, torch.full((2, 4), 0.25))
    wrapped.gate.detach()
    # K = 1: the softmax over one expert is 1 whatever the input -> plain LoRA.
    cfg1 = ILoRAConfig(num_experts=1, lora_rank=8, lora_alpha=32.0, gate_in_dim=GATE_DIM)
    wrapped1 = ILoRAModel(peft_model, GateNetwork.from_config(cfg1, zero_init_output=False), cfg1)
    with torch.no_grad():
        gated1 = wrapped1(torch.randn(2, GATE_DIM), input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(gated1, plain, atol=1e-5, rtol=0)


def _gated_wrapper(family: str, dropout: float = 0.0, hidden: int | None = 8,
                   extra_tokens: int = 0, base_dir=None) -> tuple[ILoRAModel, object]:
    peft_model, tok = make_peft(family, dropout=dropout, extra_tokens=extra_tokens, base_dir=base_dir)
    cfg = ILoRAConfig(num_experts=4, lora_rank=8, lora_alpha=32.0, gate_in_dim=GATE_DIM, gate_hidden_dim=hidden)
    torch.manual_seed(5)
    gate_net = GateNetwork.from_config(cfg, zero_init_output=False)
    with torch.no_grad():
        for p in gate_net.parameters():
            p.mul_(4.0)  # sharp, clearly non-uniform gates
    return ILoRAModel(peft_model, gate_net, cfg), tok


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_gate_and_experts_backbone_frozen(family):
    wrapped, tok = _gated_wrapper(family)
    wrapped.train()
    ids, mask = left_padded([6, 6], vocab=len(tok), pad_id=tok.pad_token_id)
    out = wrapped(torch.randn(2, GATE_DIM), input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    for name, p in wrapped.named_parameters():
        if "lora_" in name or name.startswith("gate_network"):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_gate_gradient_matches_finite_differences():
    """d loss / d gate from autograd through the hooks == central differences (float64).

    GPT-2: every op runs in float64 after ``.double()`` (Llama's RMSNorm computes in float32).
    """
    peft_model, tok = make_peft("gpt2")
    peft_model.double()
    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    ids, mask = left_padded([6, 4], vocab=len(tok), pad_id=tok.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    weights = random_gates(2, 4, seed=7).double().requires_grad_(True)

    def loss_at(w: torch.Tensor) -> torch.Tensor:
        gate.set(w)
        logits = peft_model(input_ids=ids, attention_mask=mask).logits  # float64 (HF's loss upcasts to fp32)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    loss_at(weights).backward()
    numeric = torch.zeros_like(weights)
    eps = 1e-6
    for i in range(2):
        for k in range(4):
            step = torch.zeros_like(weights)
            step[i, k] = eps
            with torch.no_grad():
                numeric[i, k] = (loss_at(weights + step) - loss_at(weights - step)) / (2 * eps)
    torch.testing.assert_close(weights.grad, numeric, atol=1e-7, rtol=1e-5)
    assert weights.grad.abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_nonreentrant_activation_checkpointing_gives_same_gradients(family):
    wrapped, tok = _gated_wrapper(family, dropout=0.1)  # LoRA dropout on: the recompute must replay it
    wrapped.train()
    ids, mask = left_padded([7, 5], vocab=len(tok), pad_id=tok.pad_token_id)
    seq = torch.randn(2, GATE_DIM, generator=torch.Generator().manual_seed(2))
    trainable = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]

    def grads() -> tuple[float, dict[str, torch.Tensor]]:
        wrapped.zero_grad(set_to_none=True)
        torch.manual_seed(11)  # GPT-2's own dropout is on in train mode; checkpointing replays its RNG
        out = wrapped(seq, input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()  # the gate stays set through backward and the recomputed forward
        return out.loss.item(), {n: p.grad.clone() for n, p in trainable}

    loss_plain, plain = grads()
    base = wrapped.peft_model.get_base_model()
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert base.is_activation_checkpointing
    loss_ckpt, ckpt = grads()
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)

    # Reentrant checkpointing runs the first forward without autograd: the gate would get no gradient.
    base.activation_checkpointing_disable()
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        wrapped(seq, input_ids=ids, attention_mask=mask, labels=ids)


def _new_tokens_match(batched: torch.Tensor, alone: torch.Tensor, pad_id: int) -> None:
    """``alone`` (n, L1) equals the first L1 tokens of ``batched`` (n, L2); the rest of ``batched`` is padding."""
    n = alone.shape[1]
    assert n <= batched.shape[1]
    assert torch.equal(batched[:, :n], alone), (batched, alone)
    assert bool((batched[:, n:] == pad_id).all()), batched


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_beams,num_return", [(1, 1), (3, 1), (3, 3)])
@pytest.mark.parametrize("use_embeds", [False, True])
def test_batched_generation_equals_rows_alone(family, num_beams, num_return, use_embeds):
    wrapped, tok = _gated_wrapper(family)
    wrapped.eval()
    lengths = [8, 5, 3]
    ids, mask = left_padded(lengths, vocab=len(tok), pad_id=tok.pad_token_id, seed=4)
    seq = torch.randn(3, GATE_DIM, generator=torch.Generator().manual_seed(9))
    embed = wrapped.peft_model.get_input_embeddings()

    def generate(rows_ids: torch.Tensor, rows_mask: torch.Tensor, rows_seq: torch.Tensor) -> torch.Tensor:
        common = dict(attention_mask=rows_mask, max_new_tokens=6, num_beams=num_beams, num_return_sequences=num_return)
        if use_embeds:
            with torch.no_grad():
                return wrapped.generate(rows_seq, inputs_embeds=embed(rows_ids), **common)
        return wrapped.generate(rows_seq, input_ids=rows_ids, **common)[:, rows_ids.shape[1]:]

    batched = generate(ids, mask, seq)
    assert batched.shape[0] == 3 * num_return
    for row, n in enumerate(lengths):
        alone = generate(ids[row:row + 1, -n:], mask[row:row + 1, -n:], seq[row:row + 1])
        _new_tokens_match(batched[row * num_return:(row + 1) * num_return], alone, tok.pad_token_id)


def test_gate_row_expansion_is_repeat_interleave_and_mismatch_raises():
    peft_model, _ = make_peft("llama")
    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    weights = random_gates(2, 4)
    gate.set(weights)
    expanded = gate.expanded_weights(6)
    torch.testing.assert_close(expanded, torch.stack([weights[0]] * 3 + [weights[1]] * 3))
    with pytest.raises(RuntimeError, match="batch of 5 rows but the gate has 2"):
        gate.expanded_weights(5)
    with pytest.raises(RuntimeError, match="batch of 3 rows"):
        peft_model(input_ids=torch.ones(3, 4, dtype=torch.long))
    gate.clear()
    with pytest.raises(RuntimeError, match="no gate set"):
        peft_model(input_ids=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, 4\)"):
        gate.set(torch.ones(2, 3))


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_refused_and_weights_untouched(family):
    wrapped, _ = _gated_wrapper(family)
    before = {k: v.clone() for k, v in wrapped.peft_model.state_dict().items()}
    with pytest.raises(RuntimeError, match="refusing to merge"):
        wrapped.peft_model.merge_and_unload()
    with pytest.raises(RuntimeError, match="refusing to merge"):
        wrapped.peft_model.merge_adapter()
    with pytest.raises(RuntimeError, match="merge_and_unload is refused"):
        wrapped.merge_and_unload()
    after = wrapped.peft_model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    with pytest.raises(RuntimeError, match="detach"):
        copy.deepcopy(wrapped)


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_gate_fold_and_merge_equals_gated_model(family):
    wrapped, tok = _gated_wrapper(family)
    ids, mask = left_padded([7, 4], vocab=len(tok), pad_id=tok.pad_token_id)
    fixed = torch.tensor([0.1, 0.6, 0.05, 0.25])
    wrapped.gate.set(fixed.expand(2, 4))
    with torch.no_grad():
        gated = wrapped.peft_model(input_ids=ids, attention_mask=mask).logits
    merged = wrapped.merge_fixed_gate(fixed)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        out = merged(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(out[keep], gated[keep], atol=1e-5, rtol=0)


def test_refusals_rank_embedding_adapter_names():
    with pytest.raises(ValueError, match="multiple of num_experts"):
        ILoRAConfig(num_experts=3, lora_rank=8)
    peft_model, _ = make_peft("llama", rank=8)
    with pytest.raises(ValueError, match="not divisible by num_experts=3"):
        ExpertGate().attach(peft_model, "default", num_experts=3)
    with pytest.raises(ValueError, match="no LoRA layer with adapter 'other'"):
        ExpertGate().attach(peft_model, "other", num_experts=4)

    emb_model, _ = make_peft("llama", targets=["q_proj", "embed_tokens"])
    with pytest.raises(ValueError, match="embedding"):
        ExpertGate().attach(emb_model, "default", num_experts=4)
    gpt2_emb, _ = make_peft("gpt2", targets=["c_attn", "wte"])
    with pytest.raises(ValueError, match="embedding"):
        ExpertGate().attach(gpt2_emb, "default", num_experts=4)

    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    gate.set(random_gates(2, 4))
    ids = torch.ones(2, 5, dtype=torch.long)
    for names in (["default", "default"], ["default", "__base__"]):
        with pytest.raises((ValueError, RuntimeError), match="adapter_names"):
            peft_model(input_ids=ids, adapter_names=names)
    with pytest.raises(RuntimeError, match="already attached"):
        gate.attach(peft_model, "default", num_experts=4)
    with pytest.raises(RuntimeError, match="already gated"):
        ExpertGate().attach(peft_model, "default", num_experts=4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_save_load_round_trip_identical_outputs(family, tmp_path):
    """Save + load in a fresh model == same logits; the vocabulary was grown (placeholders) and qwen2 ties
    its embeddings: only LoRA tensors may be saved (not the resized embedding matrix)."""
    wrapped, tok = _gated_wrapper(family, hidden=8, extra_tokens=2, base_dir=tmp_path / "base")
    with torch.no_grad():
        for name, p in wrapped.peft_model.named_parameters():
            if "lora_A" in name:
                p.add_(0.01)  # make sure trained values (not the seeded init) are what gets saved
    ids, mask = left_padded([6, 3], vocab=len(tok), pad_id=tok.pad_token_id)
    seq = torch.randn(2, GATE_DIM)
    with torch.no_grad():
        expected = wrapped(seq, input_ids=ids, attention_mask=mask).logits
    save_ilora_model(tmp_path / "adapter", wrapped)
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved), sorted(saved)

    fresh_base = load_from_folder(None, tmp_path / "base")
    torch.manual_seed(0)
    fresh_base.resize_token_embeddings(len(tok) + 2)
    loaded = load_ilora_model(fresh_base, tmp_path / "adapter")
    loaded.eval()
    assert loaded.config == wrapped.config
    with torch.no_grad():
        got = loaded(seq, input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)

    # A plain peft load of the folder fails loudly instead of giving an ungated model.
    plain_base = load_from_folder(None, tmp_path / "base")
    plain_base.resize_token_embeddings(len(tok) + 2)
    with pytest.raises(Exception, match="ILORA"):
        PeftModel.from_pretrained(plain_base, str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="iLoRA adapter"):
        assert_not_ilora_folder(tmp_path / "adapter")


def test_gate_network_save_load_keeps_every_tensor(tmp_path):
    cfg = ILoRAConfig(num_experts=4, lora_rank=8, gate_in_dim=GATE_DIM, gate_hidden_dim=12)
    torch.manual_seed(0)
    net = GateNetwork.from_config(cfg, zero_init_output=False)
    save_ilora(tmp_path, net, cfg)
    loaded, loaded_cfg = load_ilora(tmp_path)
    assert loaded_cfg == cfg
    assert net.state_dict().keys() == loaded.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(5, GATE_DIM)
    torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    torch.testing.assert_close(net(x).sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="hidden_dim"):
        save_ilora(tmp_path, net, ILoRAConfig(num_experts=4, lora_rank=8, gate_in_dim=GATE_DIM))


def test_gate_stats_golden_values():
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    stats = gate_stats(weights)
    assert stats["gate_entropy"] == pytest.approx(math.log(2) / 2)
    assert stats["gate_entropy_normalized"] == pytest.approx(0.5)
    assert stats["gate_weight_0"] == pytest.approx(0.75)
    assert stats["gate_weight_1"] == pytest.approx(0.25)
    assert gate_stats(torch.full((3, 4), 0.25))["gate_entropy"] == pytest.approx(math.log(4))


# ------------------------------------------------------------------ Lightning module (CollabLLM with adapter=ILoRA)


def _build_module(tmp_path, family: str, eval_batch_size: int = 4, **module_args):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split

    from collab_llm.adapters import ILoRA
    from collab_llm.datamodule import RecDataModule
    from collab_llm.module import CollabLLM

    backbone = make_backbone_dir(tmp_path, family)
    cf = make_cf_dirs(tmp_path)
    module = CollabLLM(
        backbone_path=str(backbone), template="llara_movielens", regime="joint", cf_model_path=str(cf["sasrec"]),
        adapter=ILoRA(r=4, alpha=8.0, dropout=0.0, num_experts=2), learning_rate=1e-2, **module_args,
    )
    data = RecDataModule(str(make_split(tmp_path, "next_item")), "llara_movielens", str(backbone),
                         batch_size=2, eval_batch_size=eval_batch_size)
    return module, data


def _randomise(module, seed: int = 0) -> None:
    """Non-zero lora_B and gate output layer, so that both the adapter and the gate move the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name or name.startswith("recommender.routing.gate_network"):
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0)


def test_ilora_spec_defaults_and_round_trip():
    """The paper's defaults (r=8, alpha=32, dropout 0.1, K=4); LoRA keeps CollabLLM's former defaults; both
    round-trip through bundle.json's form; a rank that K does not divide is refused."""
    from collab_llm.adapters import ILoRA, LoRA, adapter_from_dict

    spec = ILoRA()
    assert (spec.r, spec.alpha, spec.dropout, spec.num_experts, spec.gate_hidden_dim) == (8, 32.0, 0.1, 4, None)
    assert (LoRA().r, LoRA().alpha, LoRA().dropout, LoRA().target_modules) == (8, 16.0, 0.05, None)
    for s in (spec, LoRA(r=4, target_modules=["q_proj"]), ILoRA(r=4, num_experts=2, gate_hidden_dim=6)):
        assert adapter_from_dict(s.to_dict()) == s
    assert (spec.kind, LoRA().kind) == ("ilora", "lora")
    with pytest.raises(ValueError, match="multiple of num_experts"):
        ILoRA(r=8, num_experts=3)
    with pytest.raises(ValueError, match="class_path"):
        adapter_from_dict({"class_path": "collab_llm.ilora.ILoRACollabLLM", "init_args": {}})


@pytest.mark.parametrize("family", FAMILIES)
def test_module_trains_gate_with_lora(tmp_path, family):
    import lightning as L

    module, data = _build_module(tmp_path, family)
    routing = module.recommender.routing
    gate_keys = {f"recommender.routing.gate_network.{k}" for k in routing.gate_network.state_dict()}
    assert gate_keys and gate_keys <= module.trainable_keys
    _randomise(module)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.lm_loss(batch, "hybrid").backward()
    weights = routing.expert_gate.weights
    assert weights.shape == (batch["history"].shape[0], 2) and weights.requires_grad
    for name, p in module.named_parameters():
        if name in module.trainable_keys:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    module.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in routing.gate_network.state_dict().items()}
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
              max_steps=2, default_root_dir=str(tmp_path)).fit(module, datamodule=data)
    after = routing.gate_network.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_eval_batch_equals_rows_alone(tmp_path, family):
    """Candidate ranking (B*C expansion) and beam generation of a batch == each row alone, per-row gates."""
    module, data = _build_module(tmp_path, family, eval_batch_size=4, eval_generation=True, num_beams=2,
                                 max_new_tokens=5)
    _randomise(module, seed=3)
    module.eval()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    rows = module.score_batch(batch)
    gates = module.recommender.routing.expert_gate.weights
    assert (gates[0] - gates[1]).abs().max() > 0.05  # rows really get different gates
    _, single = _build_module(tmp_path, family, eval_batch_size=1)
    single.setup("test")
    alone = {}
    for i, b in enumerate(single.test_dataloader()):
        if i == len(rows):
            break
        (row,) = module.score_batch(b)
        alone[row["row_index"]] = row
    for row in rows:
        ref = alone[row["row_index"]]
        torch.testing.assert_close(torch.tensor(row["scores"]), torch.tensor(ref["scores"]), atol=1e-4, rtol=0)
        assert row["answer"] == ref["answer"]
    # the gate matters at this tolerance: uniform gates give other scores
    with torch.no_grad():
        module.recommender.routing.gate_network.net.weight.zero_()
        module.recommender.routing.gate_network.net.bias.zero_()
    uniform = module.score_batch(batch)
    assert max(abs(a - b) for r, u in zip(rows, uniform) for a, b in zip(r["scores"], u["scores"])) > 1e-2


def test_ilora_experiment_config_fits(tmp_path, monkeypatch):
    """configs/llm/experiments/ilora.yaml: fast_dev_run through the project's LightningCLI (the adapter
    chosen by its class_path), on the tiny split, backbone and SASRec."""
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split

    from collab_llm.adapters import ILoRA
    from collab_llm.llm_cli import build_cli

    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "llm" / "experiments" / "ilora.yaml"
    assert "collab-llm fit --config configs/llm/experiments/ilora.yaml" in cfg_path.read_text()
    cfg = yaml.safe_load(cfg_path.read_text())
    adapter = cfg["model"]["adapter"]
    assert adapter["class_path"] == "collab_llm.adapters.ILoRA"
    init = adapter["init_args"]
    assert (init["r"], init["alpha"], init["num_experts"]) == (8, 32.0, 4)  # the paper's r, alpha, K
    monkeypatch.chdir(tmp_path)
    args = [
        "fit", "--config", str(cfg_path),
        "--model.backbone_path", str(make_backbone_dir(tmp_path, "llama")),
        "--model.cf_model_path", str(make_cf_dirs(tmp_path)["sasrec"]),
        "--model.n_bootstrap", "10",
        "--data.data_dir", str(make_split(tmp_path, "next_item")),
        "--data.batch_size", "2", "--data.eval_batch_size", "6",
        "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
    ]
    cli = build_cli(args)
    assert isinstance(cli.model.recommender.adapter, ILoRA)
    config = cli.model.recommender.routing.config
    assert config.num_experts == 4 and config.expert_rank == 2
    assert cli.trainer.global_step == 1
    assert 0.0 <= cli.model.last_metrics["val/hr@1"] <= 1.0


@pytest.mark.real
def test_real_smollm2_gated_equals_per_sample_reference(real_assets):
    """On SmolLM2-135M (tied embeddings, GQA, the 7 projections): batched gated logits == each row alone
    through the ungated adapter with that row's gate folded into lora_A."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(real_assets.smollm2)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    peft_model = get_peft_model(base, ILoRAConfig().lora_config(TARGETS["llama"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft_model.eval()
    lora_a = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_A" in n}
    enc = tok(["Toy Story, GoldenEye, Heat", "Casino"], return_tensors="pt", padding=True, padding_side="left")
    gates = random_gates(2, 4, seed=1)
    gate = ExpertGate()
    gate.attach(peft_model, "default", num_experts=4)
    gate.set(gates)
    with torch.no_grad():
        batched = peft_model(**enc).logits
        gate.set(torch.full((2, 4), 0.25))
        uniform = peft_model(**enc).logits
    assert (batched - uniform).abs().max() > 1e-2  # the gate matters at the tolerance below
    gate.detach()
    for row in range(2):
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if n in lora_a:
                    p.copy_(lora_a[n])
        fold_fixed_gate(peft_model, "default", 4, gates[row])
        with torch.no_grad():
            alone = peft_model(input_ids=enc["input_ids"][row:row + 1],
                               attention_mask=enc["attention_mask"][row:row + 1]).logits[0]
        keep = enc["attention_mask"][row].bool()
        torch.testing.assert_close(batched[row][keep], alone[keep], atol=2e-4, rtol=1e-4)
