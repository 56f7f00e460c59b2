"""Evaluation of CF backbones: full ranking, candidate ranking and Yes/No AUC.

Three protocols, each an *evaluator* that accumulates per-row values batch by batch
(``update(model, batch)``) and summarises them (``compute() -> dict[str, float]``):

- ``NextItemEvaluator`` (next-item tables ``loo`` / ``llara``): one target per row.
  Full ranking over all items, reported twice: ``hr@K``, ``ndcg@K``, ``mrr`` with the history NOT
  masked (as RecBole ranks sequential models: an already-seen item may outrank the target), and
  ``filtered/...`` with the row's seen items removed (the target is never removed). Also
  ``cand/hr@1``: the target's rank among the row's 20 stored candidates, and ``seen_share@K``: the
  share of the not-masked top K held by items the user has already seen (history or training), a
  diagnostic of how much the not-masked figures lose to re-recommending them.
- ``MultiRelevantEvaluator`` (random split): all of a user's held-out items are relevant. Seen items
  (training, plus validation for the test split) are removed. ``ndcg@K`` is RecBole's
  multi-relevant NDCG: ``DCG = sum_{j<K} hit_j / log2(j + 2)`` over the top-K list,
  ``IDCG = sum_{j < min(n_relevant, K)} 1 / log2(j + 2)``; ``recall@K = hits / n_relevant``;
  ``hr@K = 1`` if any hit.
- ``YesNoEvaluator`` (Yes/No tables): ``auc`` over all rows, ``uauc`` = mean per-user AUC over users
  with both classes, ``uauc_users`` = how many users were counted.

Batches are dicts of tensors built by ``cf_models.data`` (shapes in each ``update`` docstring).
Ranks follow ``collab_llm.metrics``: 0-based, ties count against the target.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from collab_llm import metrics
from cf_models.base import CFModel


def exclude_items(scores: torch.Tensor, exclude: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Return a copy of ``scores [B, N]`` with the items of ``exclude [B, S]`` (0-padded) set to ``-inf``.

    ``keep [B]``: one item per row that is never excluded (the target). Column 0 is padding and is
    ``-inf`` already, so 0-padding in ``exclude`` is harmless.
    """
    out = scores.clone()
    if exclude.numel():
        out.scatter_(1, exclude, float("-inf"))
    if keep is not None:
        out.scatter_(1, keep.view(-1, 1), scores.gather(1, keep.view(-1, 1)))
    return out


def full_ranking_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of ``targets [B]`` in ``scores [B, n_items + 1]``, optionally without ``exclude [B, S]``."""
    if exclude is not None:
        scores = exclude_items(scores, exclude, keep=targets)
    return metrics.target_ranks(scores, targets)


def multi_relevant_at_k(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-row multi-relevant ``ndcg``, ``recall`` and ``hr`` (any hit) at ``k``.

    Args:
        scores: ``[B, N]`` with excluded items already ``-inf``.
        relevant: ``[B, P]`` relevant item ids, 0-padded; every row needs at least one.
    """
    n_relevant = (relevant != 0).sum(dim=1)
    if bool((n_relevant == 0).any()):
        raise ValueError("multi_relevant_at_k: a row has no relevant item")
    top = scores.topk(k, dim=1).indices  # [B, k]
    is_rel = torch.zeros_like(scores, dtype=torch.bool)
    is_rel.scatter_(1, relevant, True)
    is_rel[:, 0] = False
    hits = is_rel.gather(1, top).double()  # [B, k]
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64, device=scores.device) + 2.0)
    dcg = (hits * discounts).sum(dim=1)
    ideal = (torch.arange(k, device=scores.device).unsqueeze(0) < n_relevant.unsqueeze(1)).double()
    idcg = (ideal * discounts).sum(dim=1)
    return {"ndcg": dcg / idcg, "recall": hits.sum(dim=1) / n_relevant.double(), "hr": (hits.sum(dim=1) > 0).double()}


def _model_scores(model: CFModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.full_scores(users=batch.get("user"), history=batch.get("history"))


class Evaluator(Protocol):
    def update(self, model: CFModel, batch: dict[str, torch.Tensor]) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def per_row(self) -> dict[str, np.ndarray]: ...


class _PerRow:
    """Stores per-row values by name; ``compute`` returns their means."""

    def __init__(self) -> None:
        self._values: dict[str, list[np.ndarray]] = {}

    def _add(self, name: str, values: torch.Tensor | np.ndarray) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().double().cpu().numpy()
        self._values.setdefault(name, []).append(np.asarray(values, dtype=np.float64))

    def per_row(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self._values.items()}

    def compute(self) -> dict[str, float]:
        out = {k: float(v.mean()) for k, v in self.per_row().items()}
        if self._values:
            out["n_rows"] = float(next(iter(self.per_row().values())).size)
        return out


class NextItemEvaluator(_PerRow):
    """Full ranking (history masked and not) and 20-candidate ranking of one target per row."""

    def __init__(self, ks: Sequence[int] = (5, 10, 20)) -> None:
        super().__init__()
        self.ks = tuple(ks)

    @torch.no_grad()
    def update(self, model: CFModel, batch: dict[str, torch.Tensor]) -> None:
        """``batch``: ``user [B]``, ``history [B, L]`` (left-padded), ``target [B]``, ``seen [B, S]``
        (0-padded items to filter), optional ``candidates [B, C]``."""
        scores = _model_scores(model, batch).float()
        target = batch["target"]
        for prefix, ranks in (
            ("", full_ranking_ranks(scores, target)),
            ("filtered/", full_ranking_ranks(scores, target, exclude=batch["seen"])),
        ):
            for k in self.ks:
                self._add(f"{prefix}hr@{k}", metrics.hit_at_k_per_row(ranks, k))
                self._add(f"{prefix}ndcg@{k}", metrics.ndcg_at_k_per_row(ranks, k))
            self._add(f"{prefix}mrr", metrics.mrr_per_row(ranks))
        seen = batch["seen"]
        top = scores.topk(min(max(self.ks), scores.shape[1]), dim=1).indices  # [B, K], best first
        held = ((top.unsqueeze(-1) == seen.unsqueeze(1)) & (seen.unsqueeze(1) != 0)).any(-1) & (top != 0)
        for k in self.ks:
            self._add(f"seen_share@{k}", held[:, :k].double().mean(dim=1))
        if "candidates" in batch:
            cand = batch["candidates"]
            cand_scores = scores.gather(1, cand)
            target_col = (cand == target.view(-1, 1)).float().argmax(dim=1)
            if not bool((cand.gather(1, target_col.view(-1, 1)).squeeze(1) == target).all()):
                raise ValueError("a row's candidates do not contain its target")
            ranks = metrics.target_ranks(cand_scores, target_col)
            self._add("cand/hr@1", metrics.hit_at_k_per_row(ranks, 1))
            self._add("cand/ndcg@5", metrics.ndcg_at_k_per_row(ranks, 5))


class MultiRelevantEvaluator(_PerRow):
    """Full ranking with seen items removed and every held-out item of the user relevant."""

    def __init__(self, ks: Sequence[int] = (5, 10, 20)) -> None:
        super().__init__()
        self.ks = tuple(ks)

    @torch.no_grad()
    def update(self, model: CFModel, batch: dict[str, torch.Tensor]) -> None:
        """``batch``: ``user [B]``, ``history [B, L]``, ``seen [B, S]``, ``relevant [B, P]`` (0-padded)."""
        scores = exclude_items(_model_scores(model, batch).float(), batch["seen"])
        for k in self.ks:
            for name, values in multi_relevant_at_k(scores, batch["relevant"], k).items():
                self._add(f"{name}@{k}", values)


class YesNoEvaluator:
    """AUC over rows and UAUC over users with both classes."""

    def __init__(self) -> None:
        self._users: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, model: CFModel, batch: dict[str, torch.Tensor]) -> None:
        """``batch``: ``user [B]``, ``item [B]``, ``label [B]`` (0/1), ``history [B, L]``."""
        scores = model.pair_scores(batch["item"], users=batch.get("user"), history=batch.get("history"))
        self._users.append(batch["user"].cpu().numpy())
        self._labels.append(batch["label"].cpu().numpy())
        self._scores.append(scores.detach().double().cpu().numpy())

    def per_row(self) -> dict[str, np.ndarray]:
        return {
            "user": np.concatenate(self._users),
            "label": np.concatenate(self._labels),
            "score": np.concatenate(self._scores),
        }

    def compute(self) -> dict[str, float]:
        rows = self.per_row()
        value, n_users = metrics.uauc(rows["user"], rows["label"], rows["score"])
        return {
            "auc": metrics.auc(rows["label"], rows["score"]),
            "uauc": value,
            "uauc_users": float(n_users),
            "n_rows": float(rows["label"].size),
        }


def evaluate(model: CFModel, batches, evaluator: Evaluator) -> dict[str, float]:
    """Run ``evaluator`` over an iterable of batches with ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            evaluator.update(model, batch)
    finally:
        model.train(was_training)
    return evaluator.compute()
