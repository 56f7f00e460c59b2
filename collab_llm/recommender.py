"""The trained LLM recommender as one object: :class:`Recommender`, a plain ``nn.Module``.

It holds a frozen causal LM with a peft adapter (:mod:`collab_llm.adapters`: LoRA, or iLoRA whose gate
routing it owns), the soft-token injector (frozen CF model + trainable projector,
:mod:`collab_llm.injection`), the prompt template and its answer token ids, how it scores (``scorer``:
the answer's likelihood, or an :class:`collab_llm.heads.ItemScoringHead` on a hidden state) and which
loss it trains (``yes_no_loss``: ``"lm"`` softmax over the Yes/No logits, ``"bce"`` sigmoid of the Yes
logit; ``head_loss``). Every method that runs the LLM routes the adapter first (iLoRA's per-sample
gate), so no caller conditions anything by hand.

- :meth:`Recommender.embed`: ``inputs_embeds (B, T, H)`` with soft tokens, and the mask, of a prompt view.
- :meth:`Recommender.loss`: the supervised loss of a batch (LM cross-entropy, CoLLM's BCE, or the head's);
  :meth:`Recommender.candidate_logps` the answers' log-likelihoods the preference stage
  (:mod:`collab_llm.sdpo`) compares.
- :meth:`Recommender.score`: per-row predictions (next-item: candidate scores; Yes/No: P(Yes)).
- :meth:`Recommender.save_pretrained` / :meth:`Recommender.from_pretrained`: that folder IS the bundle
  (:mod:`collab_llm.bundle`), and ``bundle.json`` records everything needed to score it the way it was
  trained (``scoring``: scorer, yes_no_loss, head settings, answer ids; ``adapter``: the spec).

Training regimes, optimisers, logging and evaluation aggregation live in the Lightning module
(:class:`collab_llm.module.CollabLLM`), a trainer around ``self.recommender``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from peft import get_peft_model
from torch import Tensor, nn

from collab_llm import scoring
from collab_llm.adapters import ILoRA, ILoRARouting, LoRA, adapter_from_dict
from collab_llm.backbone import DType, load_backbone, mean_embedding_norm
from collab_llm.dropout import use_packed_dropout
from collab_llm.errors import UserError
from collab_llm.heads import ItemScoringHead
from collab_llm.injection import SoftTokenInjector
from collab_llm.prompts import ITEM_PLACEHOLDERS, USER_PLACEHOLDERS, Mode, Task, load_template
from projectors.mlp import ProjectorKind, build_projector

Scorer = Literal["likelihood", "head"]
HeadLoss = Literal["candidates", "catalog"]
YesNoLoss = Literal["lm", "bce"]
HeadTarget = Literal["default", "signed_item", "user"]
#: ``bundle.json`` ``scoring`` of a bundle written before the field existed: likelihood scoring, and the
#: Yes/No softmax (``"lm"``), the only Yes/No scoring such bundles' readers applied.
LEGACY_SCORING: dict[str, Any] = {"scorer": "likelihood", "yes_no_loss": "lm", "head_loss": "candidates",
                                  "head_layer": None, "head_target": "default"}
#: state-dict prefixes of the module before it held a Recommender -> now (old checkpoints still load).
_OLD_PREFIXES = {"llm.": "recommender.llm.", "injector.": "recommender.injector.", "head.": "recommender.head.",
                 "gate_network.": "recommender.routing.gate_network."}


def check_settings(task: Task, template: str, scorer: str, yes_no_loss: str, head_loss: str,
                   head_layer: int | None, head_target: str) -> None:
    """Refuse scoring / loss settings that do not fit each other or the template's task (ValueError)."""
    if head_target not in ("default", "signed_item", "user") or (head_target != "default" and task != "yes_no"):
        raise ValueError(f"head_target={head_target!r}: 'default', or for a yes_no template 'signed_item' / 'user'")
    if yes_no_loss not in ("lm", "bce"):
        raise ValueError(f"yes_no_loss must be 'lm' or 'bce', got {yes_no_loss!r}")
    if yes_no_loss == "bce" and task != "yes_no":
        raise ValueError(f"yes_no_loss='bce' needs a yes_no template; {template!r} is a {task} template")
    if scorer not in ("likelihood", "head"):
        raise ValueError(f"scorer must be 'likelihood' or 'head', got {scorer!r}")
    if head_loss not in ("candidates", "catalog"):
        raise ValueError(f"head_loss must be 'candidates' or 'catalog', got {head_loss!r}")
    if head_layer is not None and (scorer != "head" or head_layer < 1):
        raise ValueError(f"head_layer={head_layer}: needs scorer='head' and a block number >= 1 (null: the final layer)")


def folded_cf_model(cf_model: Any, path: Any) -> Any:
    """The folded export of a loaded MF with biases (same scores but the global constant; the embeddings carry
    the biases), keeping where it was loaded from (its fingerprint and ``made_from``, which bundles record)."""
    fold = getattr(cf_model, "folded", None)
    if fold is None or not getattr(cf_model.config, "use_bias", False):
        kind = getattr(cf_model.config, "model_type", type(cf_model).__name__)
        raise ValueError(f"cf_fold_biases: true: the CF model at {path} is a {kind!r} model without bias terms; "
                         "folding needs an MF trained with use_bias: true (or set cf_fold_biases: false)")
    out = fold()
    out.made_from, out.source_sha256 = cf_model.made_from, cf_model.source_sha256
    return out


def upgrade_state_keys(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint ``state_dict`` with the keys of a module written before it held a Recommender
    (``llm.*``, ``injector.*``, ``head.*``, ``gate_network.*``) renamed to ``recommender.*``; others as they are."""
    out = {}
    for key, value in state.items():
        old = next((p for p in _OLD_PREFIXES if key.startswith(p)), None)
        out[_OLD_PREFIXES[old] + key[len(old):] if old else key] = value
    return out


class Recommender(nn.Module):
    """Frozen LLM + adapter + soft-token injector + template + scoring; see the module docstring.

    Build one for training with :meth:`build`, or load a trained one with :meth:`from_pretrained`.

    Args:
        llm: the peft model (frozen base + adapter; trainable tensors float32).
        tokenizer: the base tokenizer with the placeholder tokens.
        placeholder_ids: placeholder string -> token id, in the order they were added.
        template: template name or YAML path (:func:`collab_llm.prompts.load_template`).
        injector: CF model + projector (both ``None`` for text-only prompts).
        adapter: the adapter spec the peft model was built from.
        routing: the adapter's per-sample conditioning (iLoRA), or None.
        head: the item-scoring head (``scorer="head"``), or None.
        scorer, yes_no_loss, head_loss, head_layer, head_target: see :class:`collab_llm.module.CollabLLM`.
        base_model, dtype: the base LLM's folder / id and the dtype it runs in (recorded in bundles).
    """

    def __init__(
        self, llm: nn.Module, tokenizer: Any, placeholder_ids: Mapping[str, int], template: str,
        injector: SoftTokenInjector, adapter: LoRA, routing: ILoRARouting | None = None,
        head: ItemScoringHead | None = None, scorer: Scorer = "likelihood", yes_no_loss: YesNoLoss = "lm",
        head_loss: HeadLoss = "candidates", head_layer: int | None = None, head_target: HeadTarget = "default",
        base_model: str = "", dtype: DType = "float32",
    ) -> None:
        super().__init__()
        self.template_name = template
        self.template = load_template(template)
        self.task: Task = self.template.task
        check_settings(self.task, template, scorer, yes_no_loss, head_loss, head_layer, head_target)
        if (scorer == "head") != (head is not None):
            raise ValueError(f"scorer={scorer!r} {'needs' if scorer == 'head' else 'takes no'} item-scoring head")
        if scorer == "head" and injector.cf_model is None:
            raise ValueError("scorer='head' scores items against their CF embeddings: it needs a CF model")
        if (routing is not None) != isinstance(adapter, ILoRA):
            raise ValueError(f"adapter {type(adapter).__name__} and routing {type(routing).__name__} disagree")
        self.llm = llm
        if adapter.dropout_masks == "bits16":
            use_packed_dropout(llm)
        self.tokenizer = tokenizer
        self.placeholder_ids = dict(placeholder_ids)
        self.injector = injector
        self.adapter = adapter
        self.routing = routing
        self.head = head
        self.scorer: Scorer = scorer
        self.yes_no_loss: YesNoLoss = yes_no_loss
        self.head_loss_kind: HeadLoss = head_loss
        self.head_layer = head_layer
        self.head_target: HeadTarget = head_target
        self.base_model = str(base_model)
        self.dtype_name = dtype
        self.stage: dict[str, Any] = {"name": "supervised"}
        self.bundle: Any = None  # the LoadedBundle of from_pretrained
        if self.task == "yes_no":
            prefix = self.template.answer_prefix
            self.yes_id = scoring.resolve_answer_token(tokenizer, self.template.answer_yes, prefix=prefix)
            self.no_id = scoring.resolve_answer_token(tokenizer, self.template.answer_no, prefix=prefix)

    @classmethod
    def build(
        cls, backbone_path: str, template: str, cf_model_path: str | None = None, projector: ProjectorKind = "llara_mlp",
        dtype: DType = "float32", adapter: LoRA | None = None, scorer: Scorer = "likelihood",
        yes_no_loss: YesNoLoss = "lm", head_loss: HeadLoss = "candidates", head_layer: int | None = None,
        head_target: HeadTarget = "default", gradient_checkpointing: bool = False, seed: int = 0,
        cf_fold_biases: bool = False,
    ) -> Recommender:
        """A fresh, untrained recommender: the backbone of ``backbone_path`` with a new ``adapter`` (default
        :class:`LoRA`), a new projector onto the CF model of ``cf_model_path`` (``None``: text-only), a new
        head for ``scorer="head"``. Initialisation depends on ``seed`` only: adapter ``seed``, projector
        ``seed + 1``, iLoRA gate ``seed + 2``, head ``seed + 3``. ``cf_fold_biases``: inject the MF's
        folded export (:meth:`cf_models.mf.MatrixFactorization.folded`: users ``[p_u, 1, b_u]``, items
        ``[q_i, b_i, 1]``, so the tokens carry its biases) of the saved MF, instead of its embeddings."""
        adapter = adapter if adapter is not None else LoRA()
        check_settings(load_template(template).task, template, scorer, yes_no_loss, head_loss, head_layer, head_target)
        backbone = load_backbone(backbone_path, dtype)
        if gradient_checkpointing:
            backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            backbone.model.enable_input_require_grads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA and projector initialisation depend on the seed only
            llm = get_peft_model(backbone.model, adapter.peft_config(backbone.model))
        for _, p in llm.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trainable LoRA weights in fp32 even on a bf16 backbone
        llm.train()  # LoRA (and backbone) dropout active in training, as under HF's Trainer

        cf_model = proj = None
        if cf_model_path is not None:
            # importing the model modules registers their model_type for CFModel.from_pretrained
            import importlib

            from cf_models.base import CFModel

            for name in ("cf_models.mf", "cf_models.sasrec"):
                importlib.import_module(name)

            cf_model = CFModel.from_pretrained(cf_model_path)
            if cf_fold_biases:
                cf_model = folded_cf_model(cf_model, cf_model_path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                proj = build_projector(
                    projector, int(cf_model.embedding_dim), backbone.hidden_size,
                    target_norm=mean_embedding_norm(backbone.model) if projector.startswith("scaled_") else None,
                )
        elif cf_fold_biases:
            raise ValueError("cf_fold_biases: true folds a CF model's biases into its embeddings: it needs cf_model_path")
        ids = backbone.placeholder_ids
        injector = SoftTokenInjector(cf_model, proj, [ids[t] for t in ITEM_PLACEHOLDERS if t in ids],
                                     [ids[t] for t in USER_PLACEHOLDERS if t in ids])
        head = None
        if scorer == "head":
            if cf_model is None:
                raise ValueError("scorer='head' scores items against their CF embeddings: it needs cf_model_path")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 3)
                head = ItemScoringHead(backbone.hidden_size, int(cf_model.embedding_dim))
        return cls(llm, backbone.tokenizer, ids, template, injector, adapter, adapter.routing(llm, cf_model, seed), head,
                   scorer=scorer, yes_no_loss=yes_no_loss, head_loss=head_loss, head_layer=head_layer,
                   head_target=head_target, base_model=backbone_path, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ the LLM's inputs
    @staticmethod
    def view(batch: dict[str, Any], mode: Mode) -> dict[str, Tensor]:
        """The batch's prompt view ``mode`` (``"text"`` / ``"hybrid"``, :mod:`collab_llm.collate`)."""
        if mode not in batch:
            views = [k for k in ("text", "hybrid") if k in batch]
            raise KeyError(f"batch has no {mode!r} prompt view (has {views}); add it to the datamodule's modes")
        return batch[mode]

    def embed(self, view: dict[str, Tensor], prompt_only: bool) -> tuple[Tensor, Tensor]:
        """``inputs_embeds (B, T, H)`` with soft tokens, and the attention mask, of one view (``prompt_only``:
        the left-padded prompt, else the right-padded prompt + answer)."""
        ids = view["prompt_input_ids"] if prompt_only else view["input_ids"]
        mask = view["prompt_attention_mask"] if prompt_only else view["attention_mask"]
        embeds = self.injector(self.llm.get_input_embeddings(), ids, view["soft_item_ids"], view["soft_user_ids"])
        return embeds, mask

    def condition(self, batch: dict[str, Any]) -> None:
        """Route the adapter for ``batch`` (iLoRA: the gate from ``batch["history"]``); plain LoRA: nothing.
        Called by every method here that runs the LLM."""
        if self.routing is not None:
            self.routing.condition(batch, self.injector.cf_model)

    # ------------------------------------------------------------------ losses
    def loss(self, batch: dict[str, Any], mode: Mode) -> Tensor:
        """The supervised loss of a batch in prompt view ``mode``: the head's (``scorer="head"``), CoLLM's
        BCE (``yes_no_loss="bce"``), else the answer's cross-entropy."""
        if self.scorer == "head":
            return self.head_loss(batch, mode)
        if self.yes_no_loss == "bce":
            return self.bce_loss(batch, mode)
        return self.lm_loss(batch, mode)

    def lm_loss(self, batch: dict[str, Any], mode: Mode) -> Tensor:
        """Mean cross-entropy of the answer + EOS tokens (prompt masked)."""
        view = self.view(batch, mode)
        embeds, mask = self.embed(view, prompt_only=False)
        self.condition(batch)
        return scoring.answer_lm_loss(self.llm, embeds, mask, view["labels"])

    def bce_loss(self, batch: dict[str, Any], mode: Mode) -> Tensor:
        """CoLLM's loss: BCE-with-logits of the Yes logit at the answer position against the label."""
        embeds, mask = self.embed(self.view(batch, mode), prompt_only=True)
        self.condition(batch)
        yes_logit = scoring.yes_no_logits(self.llm, embeds, mask, self.yes_id, self.no_id)[:, 0]
        return nn.functional.binary_cross_entropy_with_logits(yes_logit, batch["label"].to(yes_logit).float())

    def head_loss(self, batch: dict[str, Any], mode: Mode) -> Tensor:
        """Next-item: softmax cross-entropy of the target among the candidates (or the catalogue);
        Yes/No: BCE of the target item's head logit against the label."""
        if self.task == "yes_no":
            logit = self.head_scores(batch, mode, "target")[:, 0]
            return nn.functional.binary_cross_entropy_with_logits(logit, batch["label"].to(logit).float())
        if self.head_loss_kind == "catalog":
            return nn.functional.cross_entropy(self.head_scores(batch, mode, "catalog"), batch["target"].to(self.device) - 1)
        scores = self.head_scores(batch, mode, "candidates")
        return nn.functional.cross_entropy(scores, batch["target_index"].to(self.device))

    def candidate_logps(self, batch: dict[str, Any], mode: Mode, answers: Any = None,
                        length_normalize: bool = False) -> Tensor:
        """``(B, A)`` log-likelihoods of each row's answers (default: its candidates' titles) after its prompt:
        one prompt pass, the answers packed over its KV cache (:func:`collab_llm.scoring.rank_candidates`)."""
        embeds, mask = self.embed(self.view(batch, mode), prompt_only=True)
        self.condition(batch)
        answers = batch["candidate_token_ids"] if answers is None else answers
        return scoring.rank_candidates(self.llm, embeds, mask, answers, length_normalize)

    # ------------------------------------------------------------------ the head
    def prompt_hidden(self, batch: dict[str, Any], embeds: Tensor, mask: Tensor) -> Tensor:
        """``(B, H)``: the LLM's last hidden state of the left-padded prompt ``embeds`` (what the head
        reads; ``head_layer``: that decoder block's output)."""
        self.condition(batch)
        return scoring.last_hidden_state(self.llm, embeds, mask, layer=self.head_layer)

    @torch.no_grad()
    def head_items(self, batch: dict[str, Any], items: str) -> Tensor:
        """Frozen CF item embeddings for the head: ``"candidates"`` ``(B, C, d)``, ``"catalog"``
        ``(n_items, d)`` (items 1..n), ``"target"`` ``(B, 1, d)`` (Yes/No: the item asked about) or
        ``"next"`` ``(B, d)`` (next-item: the true next item)."""
        cf = self.injector.cf_model
        if items == "candidates":
            return cf.item_embeddings(batch["candidates"].to(self.device))
        if items == "target":
            return cf.item_embeddings(batch["item"].to(self.device)).unsqueeze(1)
        if items == "next":
            return cf.item_embeddings(batch["target"].to(self.device))
        if items == "catalog":
            return cf.item_embeddings(torch.arange(1, int(cf.config.n_items) + 1, device=self.device))
        raise ValueError(f"items must be candidates/target/next/catalog, got {items!r}")

    def head_scores(self, batch: dict[str, Any], mode: Mode, items: str = "candidates",
                    embedded: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Item-scoring head on the prompt of ``mode``: ``(B, C)`` candidate scores (``items="candidates"``),
        ``(B, n_items)`` catalogue scores (``"catalog"``: items 1..n), or ``(B, 1)`` target-item logits
        (Yes/No, ``"target"``). ``embedded``: the prompt's ``(inputs_embeds, mask)`` when already built."""
        if self.head is None:
            raise RuntimeError("head_scores needs scorer='head'")
        embeds, mask = embedded if embedded is not None else self.embed(self.view(batch, mode), prompt_only=True)
        return self.head(self.prompt_hidden(batch, embeds, mask), self.head_items(batch, items))

    @torch.no_grad()
    def align_head(self, dataset: Any, collator: Any, rows: int, seed: int, init: str, ridge: float,
                   batch_size: int = 8, transfer: Any = None) -> dict[str, float]:
        """Fit the head in closed form (``init``: ``"least_squares"`` or ``"standardize"``) on the hybrid
        prompts of ``rows`` rows of ``dataset`` (the first rows of a permutation seeded by ``seed + 5``),
        collated by ``collator`` (``transfer``: moves a batch to the device), run through the LLM in eval mode
        (no dropout). Targets: next-item, the true next item's CF embedding; Yes/No by ``head_target``
        (``"default"``: the labels through the bilinear form; ``"signed_item"``: ``+-e_item``; ``"user"``:
        the user's CF embedding). Returns ``rows``, ``tokens``, ``seconds``."""
        t0 = time.perf_counter()
        tokens = 0
        n = min(rows, len(dataset))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 5))[:n]
        was_training = self.llm.training
        self.llm.eval()  # no LoRA dropout in the alignment pass
        hidden, targets, items, labels = [], [], [], []
        try:
            for start in range(0, n, batch_size):
                batch = collator([dataset[int(i)] for i in order[start:start + batch_size]])
                batch = transfer(batch) if transfer is not None else batch
                embeds, mask = self.embed(self.view(batch, "hybrid"), prompt_only=True)
                tokens += int(mask.sum())
                hidden.append(self.prompt_hidden(batch, embeds, mask).float().cpu())
                if self.task == "next_item":  # regression target: the true next item's CF embedding
                    targets.append(self.head_items(batch, "next").float().cpu())
                else:
                    items.append(self.head_items(batch, "target")[:, 0].float().cpu())
                    labels.append(batch["label"].cpu())
                    if self.head_target == "user":
                        targets.append(self.injector.cf_model.user_embeddings(batch["users"].to(self.device)).float().cpu())
        finally:
            self.llm.train(was_training)
        where = self.head.mean.device
        h = torch.cat(hidden).to(where)
        if init == "standardize":
            self.head.fit_standardization(h)
        elif self.task == "next_item" or self.head_target == "user":
            self.head.fit_least_squares(h, torch.cat(targets).to(where), ridge)
        elif self.head_target == "signed_item":
            signs = 2.0 * torch.cat(labels).to(where).float() - 1.0
            self.head.fit_least_squares(h, signs[:, None] * torch.cat(items).to(where), ridge)
        else:
            self.head.fit_bilinear(h, torch.cat(items).to(where), torch.cat(labels).to(where), ridge)
        return {"rows": float(n), "tokens": float(tokens), "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, batch: dict[str, Any], mode: Mode, length_normalize: bool = False, generate: bool = False,
              max_new_tokens: int = 32, num_beams: int = 1) -> list[dict[str, Any]]:
        """Per-row predictions of one batch in prompt view ``mode``. Next-item: ``scores`` (one per
        candidate: summed, or with ``length_normalize`` mean, answer log-likelihood; or the head's), and with
        ``generate`` the generated ``answer`` and the parsed ``choice``; Yes/No: ``score`` = P(Yes) (softmax
        over the Yes/No logits for ``yes_no_loss="lm"``, sigmoid of the Yes logit for ``"bce"``, sigmoid of
        the head's logit for ``scorer="head"``). Each row also has ``row_index``, ``user`` and
        ``target_index`` (next-item) or ``label`` and ``warm`` (Yes/No)."""
        embeds, mask = self.embed(self.view(batch, mode), prompt_only=True)
        rows: list[dict[str, Any]] = []
        users = batch["users"].tolist()
        index = batch["row_index"].tolist()
        if self.task == "next_item":
            if self.scorer == "head":
                scores = self.head_scores(batch, mode, "candidates", (embeds, mask)).float().cpu()
            else:
                self.condition(batch)
                scores = scoring.rank_candidates(
                    self.llm, embeds, mask, batch["candidate_token_ids"], length_normalize).float().cpu()
            choices: list[int | None] = [None] * len(users)
            answers = [""] * len(users)
            if generate:
                self.condition(batch)
                answers = scoring.generate_answers(self.llm, embeds, mask, self.tokenizer, max_new_tokens, num_beams)
                choices = [scoring.parse_choice(a, t) for a, t in zip(answers, batch["candidate_titles"])]
            for i in range(len(users)):
                rows.append({
                    "row_index": index[i], "user": users[i], "target_index": int(batch["target_index"][i]),
                    "scores": scores[i].tolist(), "answer": answers[i], "choice": choices[i],
                })
            return rows
        if self.scorer == "head":
            p_yes = torch.sigmoid(self.head_scores(batch, mode, "target", (embeds, mask))[:, 0]).float().cpu()
        elif self.yes_no_loss == "bce":
            self.condition(batch)
            p_yes = torch.sigmoid(scoring.yes_no_logits(self.llm, embeds, mask, self.yes_id, self.no_id)[:, 0]).float().cpu()
        else:
            self.condition(batch)
            p_yes = scoring.yes_no_scores(self.llm, embeds, mask, self.yes_id, self.no_id).float().cpu()
        warm = batch["warm"].tolist() if "warm" in batch else [True] * len(users)
        for i in range(len(users)):
            rows.append({"row_index": index[i], "user": users[i], "label": int(batch["label"][i]),
                         "score": float(p_yes[i]), "warm": bool(warm[i])})
        return rows

    # ------------------------------------------------------------------ bundles
    def scoring_record(self) -> dict[str, Any]:
        """How it scores, as ``bundle.json`` ``scoring`` records it."""
        answers = {"yes": int(self.yes_id), "no": int(self.no_id)} if self.task == "yes_no" else {}
        return {"scorer": self.scorer, "yes_no_loss": self.yes_no_loss, "head_loss": self.head_loss_kind,
                "head_layer": self.head_layer, "head_target": self.head_target, "answer_ids": answers}

    def save_pretrained(
        self, folder: str | os.PathLike, metrics: Mapping[str, Any] | None = None, command: str | None = None,
        stage: Mapping[str, Any] | None = None, made_from: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the bundle (atomically, with checksums; :func:`collab_llm.bundle.save_bundle`): adapter
        (+ iLoRA gate), projector ``item``, head, CF model, and ``bundle.json`` with the scoring settings and
        the adapter spec. ``stage``: how it was trained (default: what it was loaded with, or supervised)."""
        from collab_llm.bundle import save_bundle

        model = self.routing.ilora_model(self.llm) if self.routing is not None else self.llm
        proj = self.injector.projector
        return save_bundle(
            folder, model, base_model=self.base_model, dtype=self.dtype_name, template=self.template_name,
            placeholder_ids=self.placeholder_ids, projectors={"item": proj} if proj is not None else None,
            cf_model=self.injector.cf_model, metrics=metrics, command=command, task=self.task,
            stage=stage if stage is not None else self.stage, made_from=made_from, head=self.head,
            scoring=self.scoring_record(), adapter_spec=self.adapter.to_dict(),
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: Any = None, base_model: str | None = None,
                        verify: bool = True) -> Recommender:
        """Load a bundle (:func:`collab_llm.bundle.load_bundle`: checksums and the CF model verified unless
        ``verify=False``) as a Recommender in eval mode that scores the way it was trained. Bundles written
        before ``bundle.json`` had ``scoring`` read as :data:`LEGACY_SCORING` (likelihood, Yes/No softmax);
        their head (``head_query`` / ``head_key`` projectors) cannot be scored and is refused.
        ``.bundle`` is the :class:`collab_llm.bundle.LoadedBundle` (folder, config, adapter swapping). ``base``:
        as :func:`collab_llm.bundle.load_bundle`'s, or another loaded Recommender (plain LoRA) whose LLM then
        holds both adapters; call ``rec.bundle.activate()`` before scoring with one of them."""
        from collab_llm.bundle import load_bundle, load_head

        if isinstance(base, Recommender):
            if base.bundle is None:
                raise ValueError("base: a Recommender loaded with from_pretrained (its bundle's LLM takes the adapter)")
            base = base.bundle
        loaded = load_bundle(folder, base=base, base_model=base_model, verify=verify)
        config = loaded.config
        where = Path(folder) / "bundle.json"
        if config.scoring is None and "head_query" in config.projectors:
            raise UserError(f"{where}: a head bundle written before bundle.json recorded its head and scoring; "
                            "it cannot be scored outside its run (export it again)")
        settings = {**LEGACY_SCORING, **(config.scoring or {})}
        if config.adapter_spec is not None:
            adapter = adapter_from_dict(config.adapter_spec, str(where))
            if adapter.kind != config.adapter_kind:
                raise UserError(f"{where}: adapter.spec is {type(adapter).__name__} but adapter.kind is "
                                f"{config.adapter_kind!r}; the bundle is inconsistent (export it again)")
        elif loaded.ilora is not None:
            c = loaded.ilora.config
            adapter = ILoRA(r=c.lora_rank, alpha=c.lora_alpha, num_experts=c.num_experts, gate_hidden_dim=c.gate_hidden_dim)
        else:
            peft_cfg = loaded.model.peft_config[loaded.adapter_name]
            adapter = LoRA(r=peft_cfg.r, alpha=float(peft_cfg.lora_alpha), dropout=float(peft_cfg.lora_dropout),
                           target_modules=sorted(peft_cfg.target_modules))
        ids = loaded.placeholder_ids
        injector = SoftTokenInjector(loaded.cf_model, loaded.projectors.get("item"),
                                     [ids[t] for t in ITEM_PLACEHOLDERS if t in ids],
                                     [ids[t] for t in USER_PLACEHOLDERS if t in ids])
        routing = None
        if loaded.ilora is not None:
            routing = ILoRARouting(loaded.model, loaded.ilora.gate_network, loaded.ilora.config, gate=loaded.ilora.gate)
        head = load_head(loaded.folder, config) if config.head is not None else None
        rec = cls(loaded.model, loaded.tokenizer, ids, config.template, injector, adapter, routing, head,
                  scorer=settings["scorer"], yes_no_loss=settings["yes_no_loss"], head_loss=settings["head_loss"],
                  head_layer=settings["head_layer"], head_target=settings["head_target"],
                  base_model=base_model or config.base_model, dtype=config.dtype)
        recorded = settings.get("answer_ids") or {}
        if recorded and recorded != {"yes": rec.yes_id, "no": rec.no_id}:
            raise UserError(f"{where}: answer token ids {recorded} were recorded, the tokenizer now gives "
                            f"{{'yes': {rec.yes_id}, 'no': {rec.no_id}}}; load the base model it was trained with")
        rec.stage = dict(config.stage)
        rec.bundle = loaded
        return rec.eval()
