"""Bundles: save / load reproduces scores exactly, adapter swapping, merging (tiny models, offline)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model

from cf_models.mf import MatrixFactorization, MFConfig
from collab_llm.backbone import freeze_with_placeholders, load_backbone, lora_config
from collab_llm.bundle import BundleConfig, LoadedBundle, load_bundle, merge_bundle, save_bundle, save_merged
from collab_llm.ilora import GateNetwork, ILoRAConfig, ILoRAModel
from collab_llm.injection import scatter_soft_tokens
from collab_llm.metrics import Estimate
from collab_llm.scoring import encode_answers, rank_candidates, resolve_answer_token, yes_no_scores
from collab_llm.testing import tiny_causal_lm
from projectors import build_projector

torch.set_num_threads(1)
PLACEHOLDERS = ("[HistoryEmb]", "[UserEmb]", "[ItemEmb]")
PROMPTS = [
    "This user has watched Heat [HistoryEmb], Casino [HistoryEmb] in the previous. Answer:",
    "Babe [HistoryEmb] Answer:",
]
SOFT_ITEMS = torch.tensor([3, 5, 7])  # one item per [HistoryEmb], row-major
TITLES = [["Heat", "Toy Story (1995)", "Casino"], ["Babe", "Sabrina", "GoldenEye"]]


def base_folder(tmp_path, family):
    """Save the tiny model (without placeholders) as an ordinary HF folder: the 'hub' base."""
    path = tmp_path / f"base-{family}"
    if not path.exists():
        model, tok = tiny_causal_lm(family)
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path


def trained(tmp_path, family, seed, ilora=False):
    """A backbone (loaded from the base folder, as training does) with a LoRA whose B matrices are
    random (so the adapter changes the output), a projector and an MF model: a stand-in trained run."""
    backbone = load_backbone(base_folder(tmp_path, family), placeholder_tokens=PLACEHOLDERS)
    if ilora:
        cfg = ILoRAConfig(num_experts=2, lora_rank=4, lora_alpha=8.0, gate_in_dim=8, gate_hidden_dim=None)
        peft_model = get_peft_model(backbone.model, cfg.lora_config(lora_config(backbone.model).target_modules, 0.0,
                                                                    family == "gpt2"))
    else:
        peft_model = get_peft_model(backbone.model, lora_config(backbone.model, r=4, alpha=8.0, dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.eval()
    torch.manual_seed(seed)
    projector = build_projector("llara_mlp", 8, backbone.hidden_size).eval()
    cf = MatrixFactorization(MFConfig(n_users=5, n_items=9, embedding_dim=8)).eval()
    wrapped = peft_model
    if ilora:
        gate = GateNetwork(8, 2, None, zero_init_output=False)
        wrapped = ILoRAModel(peft_model, gate, cfg).eval()
    return backbone, wrapped, projector, cf


def scores(model, tokenizer, projector, cf, ilora=None):
    """P(Yes) and candidate log-likelihoods of PROMPTS with soft tokens, concatenated: (B, 1 + C)."""
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(enc), width, dtype=torch.long)
    for i, row in enumerate(enc):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        slots = ids == tokenizer.convert_tokens_to_ids("[HistoryEmb]")
        embeds = scatter_soft_tokens(embeds, slots, projector(cf.item_embeddings(SOFT_ITEMS)))
        if ilora is not None:
            ilora.route(torch.randn(len(enc), 8, generator=torch.Generator().manual_seed(7)))
        yes = resolve_answer_token(tokenizer, "Yes")
        no = resolve_answer_token(tokenizer, "No")
        p_yes = yes_no_scores(model, embeds, mask, yes, no)
        ranks = rank_candidates(model, embeds, mask, [encode_answers(tokenizer, t) for t in TITLES])
    return torch.cat([p_yes[:, None], ranks], dim=1)


def save(tmp_path, family, name, seed, ilora=False):
    backbone, model, projector, cf = trained(tmp_path, family, seed, ilora)
    folder = save_bundle(
        tmp_path / name,
        model,
        base_model=str(base_folder(tmp_path, family)),
        dtype="float32",
        template="llara_movielens",
        placeholder_ids=backbone.placeholder_ids,
        projectors={"item": projector},
        cf_model=cf,
        metrics={"hr@1": Estimate(0.25, 0.1, 0.4, 95), "valid_ratio": 0.9},
        command="collab-llm fit --config configs/llara.yaml",
        task="next_item",
    )
    peft_model = model.peft_model if ilora else model
    ref = scores(peft_model, backbone.tokenizer, projector, cf, model if ilora else None)
    return folder, backbone, ref


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_layout_and_fresh_load_reproduces_scores(tmp_path, family):
    folder, backbone, ref = save(tmp_path, family, "ml100k", seed=1)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"bundle.json", "README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "projectors/item/config.json", "cf_model/model.safetensors"} <= files
    raw = json.loads((folder / "bundle.json").read_text())
    assert raw["placeholder_ids"] == backbone.placeholder_ids and raw["template"] == "llara_movielens"
    assert raw["metrics"]["hr@1"]["value"] == 0.25
    card = (folder / "README.md").read_text()
    assert "collab-llm fit --config configs/llara.yaml" in card and "0.2500" in card
    assert not list(tmp_path.glob(".ml100k.tmp-*"))  # the atomic temp folder is gone

    loaded = load_bundle(folder)  # loads the base from bundle.json's path
    got = scores(loaded.model, loaded.tokenizer, loaded.projectors["item"], loaded.cf_model)
    assert torch.equal(got, ref)


def test_load_onto_loaded_backbone_reproduces_scores(tmp_path):
    folder, _, ref = save(tmp_path, "qwen2", "b", seed=2)
    model, tok = tiny_causal_lm("qwen2")
    backbone = freeze_with_placeholders(model, tok, PLACEHOLDERS)
    loaded = load_bundle(folder, base=backbone)
    got = scores(loaded.model, loaded.tokenizer, loaded.projectors["item"], loaded.cf_model)
    assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="already holds LoRA layers"):
        load_bundle(folder, base=backbone)


def test_placeholder_id_mismatch_is_refused(tmp_path):
    folder, _, _ = save(tmp_path, "llama", "b", seed=2)
    model, tok = tiny_causal_lm("llama")
    backbone = freeze_with_placeholders(model, tok, ("[UserEmb]", "[HistoryEmb]", "[ItemEmb]"))
    with pytest.raises(ValueError, match="placeholder"):
        load_bundle(folder, base=backbone)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapter_swapping_matches_each_bundle_alone(tmp_path, family):
    folder_a, _, ref_a = save(tmp_path, family, "ml100k", seed=1)
    folder_b, _, ref_b = save(tmp_path, family, "ml1m", seed=2)
    assert (ref_a - ref_b).abs().max() > 1e-3  # the two bundles really differ

    a = load_bundle(folder_a)
    b = load_bundle(folder_b, base=a)
    assert b.model is a.model and b.adapter_name == "ml1m"
    assert sorted(a.model.peft_config) == ["default", "ml1m"]
    for bundle, ref in [(b, ref_b), (a, ref_a), (b, ref_b), (a, ref_a)]:
        bundle.activate()
        got = scores(bundle.model, bundle.tokenizer, bundle.projectors["item"], bundle.cf_model)
        assert torch.allclose(got, ref, atol=1e-6, rtol=0), (bundle.adapter_name, (got - ref).abs().max())
    with pytest.raises(ValueError, match="already used"):
        load_bundle(folder_b, base=a)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_merged_model_scores_equal_unmerged(tmp_path, family):
    folder, _, ref = save(tmp_path, family, "m", seed=3)
    loaded = load_bundle(folder)
    merged = merge_bundle(loaded)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    got = scores(merged, loaded.tokenizer, loaded.projectors["item"], loaded.cf_model)
    assert (got - ref).abs().max() < 1e-4
    # the shared peft model is untouched by merging
    assert torch.equal(scores(loaded.model, loaded.tokenizer, loaded.projectors["item"], loaded.cf_model), ref)
    # a merged folder is an ordinary HF model folder that reloads to the same scores
    out = save_merged(loaded, tmp_path / "merged")
    again = load_backbone(out, placeholder_tokens=PLACEHOLDERS)
    got2 = scores(again.model, again.tokenizer, loaded.projectors["item"], loaded.cf_model)
    assert torch.allclose(got2, got, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ilora_bundle_roundtrip(tmp_path, family):
    from safetensors.torch import load_file

    folder, _, ref = save(tmp_path, family, "il", seed=4, ilora=True)
    assert BundleConfig.read(folder).adapter_kind == "ilora"
    keys = load_file(str(folder / "adapter" / "adapter_model.safetensors")).keys()
    assert all("lora_" in k for k in keys), sorted(k for k in keys if "lora_" not in k)
    loaded = load_bundle(folder)
    assert loaded.ilora is not None
    got = scores(loaded.model, loaded.tokenizer, loaded.projectors["item"], loaded.cf_model, loaded.ilora)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ilora_merge_and_swap_are_refused(tmp_path, family):
    backbone, ilora, projector, cf = trained(tmp_path, family, seed=4, ilora=True)
    bundle = LoadedBundle(
        folder=tmp_path / "il",
        config=BundleConfig(base_model="x", dtype="float32", template="t", placeholder_tokens=PLACEHOLDERS,
                            placeholder_ids=backbone.placeholder_ids, adapter_kind="ilora"),
        model=ilora.peft_model, tokenizer=backbone.tokenizer, placeholder_ids=backbone.placeholder_ids,
        adapter_name="default", projectors={"item": projector}, cf_model=cf, ilora=ilora,
    )
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_bundle(bundle)
    other, _, _ = save(tmp_path, family, "plain", seed=5)
    with pytest.raises(ValueError, match="plain LoRA bundles only"):
        load_bundle(other, base=bundle)


def test_bundle_records_the_resolved_dtype_and_reads_a_legacy_auto(tmp_path):
    import json

    from collab_llm.backbone import resolve_dtype
    from collab_llm.bundle import BundleConfig

    config = BundleConfig(base_model="m", dtype="float32", template="llara_movielens", placeholder_tokens=(),
                          placeholder_ids={})
    raw = config.to_dict()
    raw["dtype"] = "auto"  # what compare wrote before save_bundle resolved it
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    assert BundleConfig.read(tmp_path).dtype == "auto"
    raw["dtype"] = "float16"
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="field 'dtype'"):
        BundleConfig.read(tmp_path)
    assert resolve_dtype("auto") in ("float32", "bfloat16")
