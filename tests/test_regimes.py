"""The training regimes as pure functions of the global step (collab_llm.regimes)."""

from __future__ import annotations

import pytest

from collab_llm.regimes import check_regime, eval_mode, groups_moved, hybrid_probability, train_mode


def test_hybrid_probability_and_views_per_regime():
    assert [hybrid_probability("text", s, 1, 0) for s in (0, 9)] == [0.0, 0.0]
    assert [hybrid_probability("joint", s, 1, 0) for s in (0, 9)] == [1.0, 1.0]
    assert [hybrid_probability("curriculum", s, 200, 0) for s in (0, 50, 200, 999)] == [0.0, 0.25, 1.0, 1.0]
    assert [hybrid_probability("two_stage", s, 1, 3) for s in (0, 2, 3, 9)] == [0.0, 0.0, 1.0, 1.0]
    assert train_mode(0.0, 5, 0) == "text" and train_mode(1.0, 5, 0) == "hybrid"
    draws = [train_mode(0.5, s, 7) for s in range(200)]
    assert draws == [train_mode(0.5, s, 7) for s in range(200)]  # a function of (seed, step)
    assert 60 < draws.count("hybrid") < 140 and draws != [train_mode(0.5, s, 8) for s in range(200)]
    assert [eval_mode("two_stage", s, 3) for s in (0, 3)] == ["text", "hybrid"]
    assert (eval_mode("text", 9, 0), eval_mode("joint", 0, 0), eval_mode("curriculum", 0, 0)) == ("text", "hybrid", "hybrid")


def test_groups_moved_freeze_lora_in_stage_two_and_the_projector_on_text_steps():
    assert groups_moved("joint", 0, 0, "hybrid") == {"lora", "projector"}
    assert groups_moved("curriculum", 0, 0, "text") == {"lora"}
    assert groups_moved("two_stage", 2, 3, "text") == {"lora"}
    assert groups_moved("two_stage", 3, 3, "hybrid") == {"projector"}


def test_bad_regime_settings_are_refused():
    with pytest.raises(ValueError, match="regime must be"):
        check_regime("mixed", True, None, 0)
    with pytest.raises(ValueError, match="needs cf_model_path"):
        check_regime("joint", False, None, 0)
    with pytest.raises(ValueError, match="curriculum_steps must be > 0"):
        check_regime("curriculum", True, 0, 0)
    with pytest.raises(ValueError, match="stage1_steps > 0"):
        check_regime("two_stage", True, None, 0)
    check_regime("text", False, None, 0)
