"""Soft-token injection: frozen CF model -> projector -> soft tokens at the placeholder positions.

``input_ids (B, T)`` are embedded by the LLM's (frozen) input embedding into ``(B, T, H)``; the
positions holding placeholder tokens are found with a boolean mask and overwritten, in row-major
order, by the projected CF embeddings with ``masked_scatter`` (as LLaVA does in transformers):

    item slots ([HistoryEmb], [ItemEmb]):  projector(cf.item_embeddings(soft_item_ids))  (N_i, H)
    user slots ([UserEmb]):                projector(cf.user_embeddings(soft_user_ids))  (N_u, H)

``soft_item_ids`` / ``soft_user_ids`` come from the collator (:mod:`collab_llm.collate`) in the same
row-major order. The number of placeholders must equal the number of soft tokens, else a
``ValueError``. The CF model is frozen (no gradient, eval mode); the projector is trained and its
output is cast to the embedding dtype (bf16 backbones).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from projectors.base import Projector


def scatter_soft_tokens(
    inputs_embeds: torch.Tensor, mask: torch.Tensor, soft_tokens: torch.Tensor, what: str = "soft"
) -> torch.Tensor:
    """Write ``soft_tokens (N, H)`` into ``inputs_embeds (B, T, H)`` where ``mask (B, T)`` is True.

    Row-major: the k-th True position of ``mask`` (reading row 0 left to right, then row 1, ...)
    receives ``soft_tokens[k]``. Out of place; differentiable w.r.t. ``soft_tokens``.
    """
    n_slots = int(mask.sum())
    if soft_tokens.dim() != 2 or soft_tokens.shape[1] != inputs_embeds.shape[-1]:
        raise ValueError(f"{what} tokens must be (N, {inputs_embeds.shape[-1]}), got {tuple(soft_tokens.shape)}")
    if n_slots != soft_tokens.shape[0]:
        raise ValueError(
            f"{n_slots} {what} placeholder position(s) in input_ids but {soft_tokens.shape[0]} {what} token(s); "
            "the collator's soft-token ids and the prompt disagree"
        )
    if n_slots == 0:
        return inputs_embeds
    full_mask = mask.unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(full_mask, soft_tokens.to(inputs_embeds.dtype))


class SoftTokenInjector(nn.Module):
    """Builds ``inputs_embeds`` with soft tokens from a frozen CF model and a trainable projector.

    Args:
        cf_model: object with ``item_embeddings(LongTensor[N]) -> (N, d)`` and (for user slots)
            ``user_embeddings(LongTensor[N]) -> (N, d)``; ``None`` for text-only use.
        projector: ``(N, d) -> (N, H)``; ``None`` iff ``cf_model`` is None.
        item_token_ids: token ids of the item placeholders (``[HistoryEmb]``, ``[ItemEmb]``).
        user_token_ids: token ids of the user placeholders (``[UserEmb]``).
    """

    def __init__(
        self,
        cf_model: nn.Module | None,
        projector: Projector | None,
        item_token_ids: Sequence[int],
        user_token_ids: Sequence[int],
    ) -> None:
        super().__init__()
        if (cf_model is None) != (projector is None):
            raise ValueError("cf_model and projector must both be given or both be None")
        self.cf_model = cf_model
        self.projector = projector
        if cf_model is not None:
            for p in cf_model.parameters():
                p.requires_grad_(False)
            cf_model.eval()
        self.register_buffer("item_token_ids", torch.tensor(list(item_token_ids), dtype=torch.long), persistent=False)
        self.register_buffer("user_token_ids", torch.tensor(list(user_token_ids), dtype=torch.long), persistent=False)

    def train(self, mode: bool = True) -> "SoftTokenInjector":
        super().train(mode)
        if self.cf_model is not None:
            self.cf_model.eval()  # frozen: dropout off, always
        return self

    def placeholder_masks(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(B, T)`` masks of item and user placeholder positions."""
        return torch.isin(input_ids, self.item_token_ids), torch.isin(input_ids, self.user_token_ids)

    def forward(
        self,
        embedding: nn.Module,
        input_ids: torch.Tensor,
        soft_item_ids: torch.Tensor,
        soft_user_ids: torch.Tensor,
    ) -> torch.Tensor:
        """``input_ids (B, T)`` -> ``inputs_embeds (B, T, H)`` with every placeholder overwritten.

        Args:
            embedding: the LLM's input embedding module (``model.get_input_embeddings()``).
            soft_item_ids: ``(N_i,)`` item ids, one per item placeholder, row-major.
            soft_user_ids: ``(N_u,)`` user ids, one per user placeholder, row-major.
        """
        embeds = embedding(input_ids)
        item_mask, user_mask = self.placeholder_masks(input_ids)
        if self.cf_model is None or self.projector is None:
            n = int(item_mask.sum() + user_mask.sum())
            if n or soft_item_ids.numel() or soft_user_ids.numel():
                raise ValueError(
                    f"text-only injector got {n} placeholder position(s) and "
                    f"{soft_item_ids.numel() + soft_user_ids.numel()} soft-token id(s); expected none "
                    "(use a hybrid model with a CF model, or the text prompt view)"
                )
            return embeds
        proj_dtype = next(self.projector.parameters()).dtype
        if soft_item_ids.numel() or item_mask.any():
            with torch.no_grad():
                cf_items = self.cf_model.item_embeddings(soft_item_ids)
            embeds = scatter_soft_tokens(embeds, item_mask, self.projector(cf_items.to(proj_dtype)), "item")
        if soft_user_ids.numel() or user_mask.any():
            with torch.no_grad():
                cf_users = self.cf_model.user_embeddings(soft_user_ids)
            embeds = scatter_soft_tokens(embeds, user_mask, self.projector(cf_users.to(proj_dtype)), "user")
        return embeds
