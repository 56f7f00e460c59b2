"""Projectors: shapes, parity with hand-written formulas, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from projectors import CollmMLP, LinearProjector, LlaraMLP, Projector, build_projector

torch.set_num_threads(1)


def test_llara_mlp_matches_formula():
    torch.manual_seed(0)
    p = LlaraMLP(4, 6)
    x = torch.randn(3, 5, 4)
    l1, l2 = p.net[0], p.net[2]
    ref = F.gelu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    torch.testing.assert_close(p(x), ref)
    assert p(x).shape == (3, 5, 6)


def test_collm_mlp_matches_formula_and_width():
    torch.manual_seed(0)
    p = CollmMLP(4, 6)
    assert p.net[0].out_features == 40
    x = torch.randn(7, 4)
    l1, l2 = p.net[0], p.net[2]
    torch.testing.assert_close(p(x), torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)


def test_wrong_input_dim_fails():
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 4\)"):
        LinearProjector(4, 2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="unknown projector kind"):
        build_projector("conv", 2, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["linear", "llara_mlp", "collm_mlp"])
def test_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    p = build_projector(kind, 4, 6)
    p.save_pretrained(tmp_path / "proj")
    assert sorted(f.name for f in (tmp_path / "proj").iterdir()) == ["config.json", "model.safetensors"]
    q = Projector.from_pretrained(tmp_path / "proj")
    assert type(q) is type(p)
    x = torch.randn(2, 4)
    torch.testing.assert_close(q(x), p(x))
    # overwriting is atomic and leaves no temporary folders behind
    p.save_pretrained(tmp_path / "proj")
    assert [f.name for f in tmp_path.iterdir()] == ["proj"]
    if kind != "linear":
        with pytest.raises(ValueError, match="not a LinearProjector"):
            LinearProjector.from_pretrained(tmp_path / "proj")


def test_from_pretrained_rejects_unknown_class(tmp_path):
    LinearProjector(2, 3).save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text(json.dumps({"class": "Evil", "args": {}}))
    with pytest.raises(ValueError, match="unknown projector class 'Evil'"):
        Projector.from_pretrained(tmp_path / "p")
