"""Matrix factorisation: ``score(u, i) = <p_u, q_i> + b_u + b_i + b``.

Trained with BPR on sampled negatives (implicit feedback, ``cf_models.training.MFTask`` with
``loss="bpr"``) or with pointwise BCE on explicit 0/1 labels (CoLLM's MF on the Yes/No protocol,
``loss="bce"``). Biases are optional; the embeddings the LLM side reads never include them, unless
the model is exported folded (:meth:`MatrixFactorization.folded`: ``[p_u, 1, b_u]`` and ``[q_i, b_i, 1]``,
whose inner product is the whole score but the constant ``b``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cf_models.base import CFModel, check_ids, mask_padding_column


@dataclass
class MFConfig:
    """``n_users`` / ``n_items``: largest ids (tables hold one extra row for padding id 0).

    ``embedding_dim``: d. ``use_bias``: add user, item and global biases to the score.
    ``init_std``: std of the normal initialisation of the embeddings.
    ``folded_biases``: provenance only: this model is :meth:`MatrixFactorization.folded` of a model with
    biases (its last two embedding columns hold them).
    """

    n_users: int
    n_items: int
    embedding_dim: int = 64
    use_bias: bool = False
    init_std: float = 0.1
    folded_biases: bool = False


class MatrixFactorization(CFModel):
    """User and item tables ``P: [n_users + 1, d]``, ``Q: [n_items + 1, d]`` (row 0 = padding, zero)."""

    model_type = "mf"
    config_class = MFConfig

    def __init__(self, config: MFConfig) -> None:
        super().__init__(config)
        d = config.embedding_dim
        self.user_embedding = nn.Embedding(config.n_users + 1, d, padding_idx=0)
        self.item_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.user_embedding.weight, std=config.init_std)
        nn.init.normal_(self.item_embedding.weight, std=config.init_std)
        with torch.no_grad():
            self.user_embedding.weight[0].zero_()
            self.item_embedding.weight[0].zero_()
        if config.use_bias:
            self.user_bias = nn.Embedding(config.n_users + 1, 1, padding_idx=0)
            self.item_bias = nn.Embedding(config.n_items + 1, 1, padding_idx=0)
            self.global_bias = nn.Parameter(torch.zeros(()))
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @torch.no_grad()
    def folded(self) -> "MatrixFactorization":
        """The same scores without bias terms: users ``[p_u, 1, b_u]``, items ``[q_i, b_i, 1]`` (d + 2 columns),
        so the embeddings a projector injects carry the whole score; only the global bias ``b`` (a constant:
        rankings and AUC unchanged) is dropped. Padding rows stay zero. Requires ``use_bias``."""
        if not self.config.use_bias:
            raise ValueError("folded(): this MatrixFactorization has no biases to fold (use_bias is false)")
        c = self.config
        out = MatrixFactorization(MFConfig(n_users=c.n_users, n_items=c.n_items, embedding_dim=c.embedding_dim + 2,
                                           use_bias=False, init_std=c.init_std, folded_biases=True))
        users = torch.cat([self.user_embedding.weight, torch.ones_like(self.user_bias.weight), self.user_bias.weight], 1)
        items = torch.cat([self.item_embedding.weight, self.item_bias.weight, torch.ones_like(self.item_bias.weight)], 1)
        users[0].zero_()
        items[0].zero_()
        out.user_embedding.weight.copy_(users)
        out.item_embedding.weight.copy_(items)
        return out.to(self.user_embedding.weight.dtype)

    def item_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        check_ids("items", items, self.config.n_items)
        return self.item_embedding(items)

    def user_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        check_ids("users", users, self.config.n_users)
        return self.user_embedding(users)

    def query_representation(
        self, users: torch.Tensor | None = None, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        if users is None:
            raise ValueError("MatrixFactorization scores items for users: pass users=LongTensor[B]")
        return self.user_embeddings(users)

    def full_scores(self, users: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """``users: [B]`` -> ``[B, n_items + 1]``; column 0 is ``-inf``."""
        p = self.query_representation(users=users)
        scores = p @ self.item_embedding.weight.T
        if self.config.use_bias:
            scores = scores + self.user_bias(users) + self.item_bias.weight.T + self.global_bias
        return mask_padding_column(scores)

    def pair_scores(
        self, items: torch.Tensor, users: torch.Tensor | None = None, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``items: [B]`` or ``[B, C]``, ``users: [B]`` -> scores of the same shape as ``items``."""
        p = self.query_representation(users=users)
        q = self.item_embeddings(items)
        if items.dim() == 1:
            scores = (p * q).sum(-1)
            if self.config.use_bias:
                scores = scores + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + self.global_bias
            return scores
        scores = torch.einsum("bd,bcd->bc", p, q)
        if self.config.use_bias:
            scores = scores + self.user_bias(users) + self.item_bias(items).squeeze(-1) + self.global_bias
        return scores
