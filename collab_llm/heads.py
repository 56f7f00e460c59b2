"""Item-scoring head: score items by the LLM's hidden state against their CF embeddings.

A paradigm-2 formulation beside the papers' answer likelihood (E4SRec-style, Li et al. 2023: the
LLM's last hidden state is read by a small layer that scores items, trained with cross-entropy over
items). Here the item side is the frozen CF model's item embedding, so the head can score any item,
candidates or the whole catalogue::

    h   = LLM hidden state (after the final norm) at the last prompt position      (B, H)
    z   = (h - mean) / std   per feature, fixed statistics (buffers)              (B, H)
    q   = query(z)                                                                (B, d)
    k_c = key(e_c),  e_c = cf.item_embeddings(c)                                  (B, C, d)
    s_c = <q, k_c>                                                                (B, C)

Why standardise, and why start from least squares: an LLM's hidden states have a few features
whose values are tens of times larger than the rest, in every row, and the CF signal is a small
part of the last hidden state. A linear probe that standardises the features and is fitted in
closed form (``bench/injection_probe.py``) reads the signal from the FROZEN SmolLM2's last hidden
state well (README levers table, from ``results/levers/probe_planted_next_item.json``), while the same
linear head trained by Adam from a random start stayed near chance in 48 steps of 8 prompts (the
outlier features dominate every update; 384 noisy examples for a 576 x 64 map). So the head is
initialised by :meth:`ItemScoringHead.fit_least_squares` on a few hundred training prompts run
through the frozen LLM (a forward pass each, no gradients): feature means and deviations become
fixed buffers, and the query is the ridge regression of the standardised hidden state onto the
true next item's CF embedding (the training labels, nothing from the CF model's own scores).
Training then continues jointly with LoRA and the projector (softmax over the candidates).

``key`` starts as the identity (``d`` = the CF dimension), so at step 0 the head asks the LLM for a
query in the CF model's own item space (the space in which SASRec scores its next item).

The score comes out of the LLM: ``h`` is read after the prompt, with its injected soft tokens, has
passed through every layer (LoRA-adapted). Whether the LLM does the work is measured by the
injection bench (``bench/injection_learning.py``): the same head on a prompt reduced to the last
history item, without LoRA, and on soft tokens of permuted items.

Both parts are :class:`projectors.LinearProjector` so that bundles save and load them like projectors.
"""

from __future__ import annotations

import torch
from torch import nn

from projectors.mlp import LinearProjector


class ItemScoringHead(nn.Module):
    """``(h (B, H), e (B, C, d) or (N, d)) -> scores (B, C) or (B, N)``.

    Args:
        hidden_size: the LLM's hidden size ``H``.
        item_dim: the CF item-embedding size ``d``.
    Buffers (saved in checkpoints and bundles): ``mean``, ``std`` ``(H,)`` (0 and 1 until
    :meth:`fit_least_squares` or :meth:`fit_standardization` sets them) and ``initialized`` (0/1).
    """

    def __init__(self, hidden_size: int, item_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.long))
        self.query = LinearProjector(hidden_size, item_dim)
        self.key = LinearProjector(item_dim, item_dim)
        with torch.no_grad():
            self.key.net.weight.copy_(torch.eye(item_dim))
            self.key.net.bias.zero_()

    def standardize(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(h - mean) / std`` per feature, float32."""
        return (hidden.float() - self.mean) / self.std

    @torch.no_grad()
    def fit_standardization(self, hidden: torch.Tensor) -> None:
        """Set ``mean`` / ``std`` from ``hidden (N, H)`` (std floored at 1e-3 of its median)."""
        hidden = hidden.float()
        std = hidden.std(0)
        self.mean.copy_(hidden.mean(0))
        self.std.copy_(std.clamp_min(1e-3 * float(std.median()) + 1e-12))
        self.initialized.fill_(1)

    @torch.no_grad()
    def fit_least_squares(self, hidden: torch.Tensor, targets: torch.Tensor, ridge: float) -> None:
        """Standardise from ``hidden (N, H)``, then set ``query`` to the ridge regression of the
        standardised states onto ``targets (N, d)`` (e.g. the true next items' CF embeddings):
        ``W = argmin |Z W^T + b - Y|^2 + ridge |W|^2``, ``b = mean(Y)``. ``key`` is left as it is."""
        if hidden.dim() != 2 or targets.dim() != 2 or hidden.shape[0] != targets.shape[0]:
            raise ValueError(f"fit_least_squares: hidden (N, H) and targets (N, d), got {tuple(hidden.shape)}, {tuple(targets.shape)}")
        self.fit_standardization(hidden)
        z = self.standardize(hidden).double()
        y = targets.double()
        y_mean = y.mean(0)
        gram = z.T @ z + ridge * torch.eye(z.shape[1], dtype=z.dtype)
        w = torch.linalg.solve(gram, z.T @ (y - y_mean))  # (H, d)
        self.query.net.weight.copy_(w.T.to(self.query.net.weight.dtype))
        self.query.net.bias.copy_(y_mean.to(self.query.net.bias.dtype))

    @torch.no_grad()
    def fit_bilinear(self, hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, ridge: float) -> None:
        """Yes/No: standardise from ``hidden (N, H)``, then fit ``query`` so that
        ``<query(z_i), key(e_i)>`` regresses ``2 * label_i - 1`` (ridge, in its dual form over the N
        rows: ``W = sum_i a_i key(e_i) z_i^T``, ``a = (K + ridge I)^-1 y`` with
        ``K_ij = (z_i . z_j) (k_i . k_j)``, the penalty ``ridge`` times the keys' mean squared norm);
        the query bias is set to 0."""
        self.fit_standardization(hidden)
        z = self.standardize(hidden).double()
        k = self.key(items.float()).double()
        y = 2.0 * labels.double() - 1.0
        y = y - y.mean()
        kernel = (z @ z.T) * (k @ k.T)
        # the penalty in the units of the next-item fit: rescaled by the keys' mean squared norm, the
        # kernel's diagonal relative to the standardised states' (z . z) alone
        penalty = ridge * float((k * k).sum(1).mean())
        a = torch.linalg.solve(kernel + penalty * torch.eye(len(y), dtype=kernel.dtype), y)
        w = (a[:, None] * k).T @ z  # (d, H)
        self.query.net.weight.copy_(w.to(self.query.net.weight.dtype))
        self.query.net.bias.zero_()

    @torch.no_grad()
    def folded_query(self) -> LinearProjector:
        """``query`` with the standardisation folded in: one :class:`LinearProjector` ``H -> d`` equal to
        ``query(standardize(h))`` (what a bundle saves as its ``head_query`` projector)."""
        w = self.query.net.weight.double() / self.std.double()
        b = self.query.net.bias.double() - w @ self.mean.double()
        folded = LinearProjector(self.query.in_dim, self.query.out_dim)
        folded.net.weight.copy_(w.float())
        folded.net.bias.copy_(b.float())
        return folded

    def forward(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 2:
            raise ValueError(f"ItemScoringHead: hidden must be (B, H), got {tuple(hidden.shape)}")
        q = self.query(self.standardize(hidden))  # (B, d)
        k = self.key(items.float())
        if k.dim() == 2:  # (N, d): one shared item set (the catalogue)
            return q @ k.T
        if k.dim() == 3 and k.shape[0] == q.shape[0]:  # (B, C, d): per-row candidates
            return torch.einsum("bd,bcd->bc", q, k)
        raise ValueError(f"ItemScoringHead: items must be (N, d) or (B={q.shape[0]}, C, d), got {tuple(items.shape)}")
