"""Collation: rows of the prepared tables -> tokenized, masked, padded batches with soft-token ids.

Rows come from the prepared next-item tables (``user, history, target, candidates``) or Yes/No
tables (``user, item, label, history, warm`` [+ ``liked``, ``disliked``]) of docs/DESIGN.md, as
dicts (see :class:`TableDataset`). Titles come from the split's ``items`` table.

Tokenization (fixed; scoring relies on it): ``prompt_ids = tok(prompt, add_special_tokens=True)``
and ``answer_ids = tok(answer_prefix + answer, add_special_tokens=False) + [eos]`` tokenized
separately and concatenated; ``answer_prefix`` is the template's (``" "`` in the shipped ones),
so the Yes/No answer token is ``tok(" Yes")`` -- :meth:`PromptCollator.answer_token_id`.

Truncation: a prompt whose ``prompt + answer`` exceeds ``max_length`` tokens loses its OLDEST
items of every list field (history / liked / disliked, the last ``k`` of each are kept) until it
fits; an item is dropped whole with its placeholder. Candidates are never dropped. If even ``k =
min_history`` does not fit, a ``ValueError`` names the row.

Batch keys (all tensors unless stated; B rows, placeholders read row-major):

- ``row_index`` ``Long[B]``: row of the table each example came from.
- ``users`` ``Long[B]``; ``history`` ``Long[B, L]``: the history (capped to ``max_history``)
  LEFT-padded with 0, most recent last (input of ``sequence_representation``, e.g. iLoRA's gate).
- one view per prompt mode in ``modes``, ``batch["text"]`` and/or ``batch["hybrid"]``, each a dict:
  - ``input_ids``, ``attention_mask`` ``[B, T]`` prompt + answer + EOS, RIGHT-padded (training);
  - ``labels`` ``[B, T]``: the answer + EOS, -100 on the prompt and on padding;
  - ``prompt_input_ids``, ``prompt_attention_mask`` ``[B, P]``: the prompt alone, LEFT-padded
    (generation, Yes/No scoring, candidate ranking);
  - ``soft_item_ids`` ``Long[N_i]``: the item id for every item placeholder (``[HistoryEmb]``,
    ``[ItemEmb]``) in row-major order -- identical for ``input_ids`` and ``prompt_input_ids``;
  - ``soft_user_ids`` ``Long[N_u]``: the user id for every ``[UserEmb]``, row-major;
  - ``n_history`` ``Long[B]``: items kept per list field after truncation.
  The text view has empty ``soft_*`` tensors.
- next_item: ``target`` ``Long[B]``, ``candidates`` ``Long[B, C]``, ``target_index`` ``Long[B]``
  (column of the target in ``candidates``), ``candidate_token_ids`` (a Python
  ``list[list[list[int]]]``: per row, per candidate, ``tok(answer_prefix + title) + [eos]``),
  ``candidate_titles`` (``list[list[str]]``, for parsing generated answers).
- yes_no: ``item`` ``Long[B]``, ``label`` ``Long[B]`` (0/1), ``warm`` ``Bool[B]`` (when the table
  has it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from collab_llm.prompts import (
    ALL_PLACEHOLDERS,
    ITEM_PLACEHOLDERS,
    USER_PLACEHOLDERS,
    Mode,
    PromptTemplate,
    render,
)

IGNORE_INDEX = -100

_REQUIRED_COLUMNS = {
    "next_item": ("user", "history", "target", "candidates"),
    "yes_no": ("user", "item", "label", "history"),
}
_LIST_COLUMNS = ("history", "candidates", "liked", "disliked")


class TableDataset(Dataset):
    """Rows of a prepared table as plain dicts (ints, lists of ints, bools) plus ``row_index``."""

    def __init__(self, frame: pd.DataFrame, task: str, name: str = "table") -> None:
        if task not in _REQUIRED_COLUMNS:
            raise ValueError(f"task must be 'next_item' or 'yes_no', got {task!r}")
        missing = [c for c in _REQUIRED_COLUMNS[task] if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing} for task {task!r}; has {list(frame.columns)}")
        self.name = name
        self.columns = [c for c in frame.columns]
        self._records = frame.reset_index(drop=True).to_dict("records")

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self._records[index]
        out: dict[str, Any] = {"row_index": int(index)}
        for key, value in rec.items():
            if key in _LIST_COLUMNS:
                out[key] = [int(v) for v in np.asarray(value).tolist()]
            elif isinstance(value, (np.bool_, bool)):
                out[key] = bool(value)
            elif isinstance(value, (np.integer, int)):
                out[key] = int(value)
            else:
                out[key] = value
        return out


def titles_from_items(items: pd.DataFrame, name: str = "items") -> dict[int, str]:
    """``item id -> title`` from an items table (columns ``item``, ``title``)."""
    for col in ("item", "title"):
        if col not in items.columns:
            raise ValueError(f"{name}: missing column {col!r}; has {list(items.columns)}")
    return {int(i): str(t) for i, t in zip(items["item"].tolist(), items["title"].tolist())}


@dataclass
class _Encoded:
    prompt_ids: list[int]
    soft_items: list[int]
    soft_users: list[int]
    n_history: int


class PromptCollator:
    """Callable ``list[row dict] -> batch dict`` (keys in the module docstring).

    Args:
        tokenizer: the backbone's tokenizer with placeholders added.
        template: the prompt template (its ``task`` decides the row format).
        titles: item id -> title.
        placeholder_ids: placeholder string -> token id (``Backbone.placeholder_ids``).
        modes: which prompt views to build ("text", "hybrid").
        max_length: maximum tokens of prompt + answer + EOS.
        max_history: keep at most the last ``max_history`` items of each list field (None: all).
        min_history: truncation never goes below this many items per list field.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: PromptTemplate,
        titles: dict[int, str],
        placeholder_ids: dict[str, int],
        modes: Sequence[Mode] = ("text", "hybrid"),
        max_length: int = 512,
        max_history: int | None = None,
        min_history: int = 1,
    ) -> None:
        if not modes:
            raise ValueError("modes must name at least one of 'text', 'hybrid'")
        for mode in modes:
            if mode not in ("text", "hybrid"):
                raise ValueError(f"unknown prompt mode {mode!r}; expected 'text' or 'hybrid'")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("tokenizer needs pad and eos tokens (use collab_llm.backbone.load_tokenizer)")
        for token in ALL_PLACEHOLDERS:
            if token in template.hybrid or token in template.item_hybrid:
                if token not in placeholder_ids:
                    raise ValueError(f"template {template.source} uses {token} but the tokenizer has no such placeholder")
        self.tokenizer = tokenizer
        self.template = template
        self.titles = titles
        self.modes = tuple(modes)
        self.max_length = max_length
        self.max_history = max_history
        self.min_history = min_history
        self.task = template.task
        self.item_token_ids = [placeholder_ids[t] for t in ITEM_PLACEHOLDERS if t in placeholder_ids]
        self.user_token_ids = [placeholder_ids[t] for t in USER_PLACEHOLDERS if t in placeholder_ids]
        self._answer_cache: dict[str, list[int]] = {}
        if self.task == "yes_no":
            self.yes_id = self.answer_token_id(template.answer_yes)
            self.no_id = self.answer_token_id(template.answer_no)

    # ---------------------------------------------------------------- tokens
    def answer_ids(self, answer: str) -> list[int]:
        """``tok(answer_prefix + answer) + [eos]`` (cached)."""
        ids = self._answer_cache.get(answer)
        if ids is None:
            ids = self.tokenizer(self.template.answer_prefix + answer, add_special_tokens=False)["input_ids"]
            ids = [int(i) for i in ids] + [int(self.tokenizer.eos_token_id)]
            self._answer_cache[answer] = ids
        return ids

    def answer_token_id(self, word: str) -> int:
        """The single token the model emits for ``word`` right after the prompt (e.g. Yes / No)."""
        ids = self.answer_ids(word)[:-1]
        if len(ids) != 1:
            raise ValueError(
                f"answer word {word!r} with prefix {self.template.answer_prefix!r} tokenizes to {len(ids)} "
                f"tokens {ids}; Yes/No scoring needs a single token (change the template's yes/no/answer_prefix)"
            )
        return ids[0]

    def _encode_prompt(self, row: dict[str, Any], mode: Mode, lists: dict[str, list[int]], target: int, n_answer: int) -> _Encoded:
        fields = self.template.list_fields(mode)
        n_max = max((len(lists[f]) for f in fields if f in lists), default=0)

        def attempt(k: int) -> _Encoded:
            cut = {name: (values[-k:] if (name in fields and k < len(values)) else values) for name, values in lists.items()}
            if k == 0:
                cut = {name: ([] if name in fields else values) for name, values in lists.items()}
            rendered = render(self.template, mode, self.titles, int(row["user"]), cut, target)
            ids = [int(i) for i in self.tokenizer(rendered.text, add_special_tokens=True)["input_ids"]]
            return _Encoded(ids, rendered.soft_items, rendered.soft_users, k)

        def fits(enc: _Encoded) -> bool:
            return len(enc.prompt_ids) + n_answer <= self.max_length

        best = attempt(n_max)
        if not fits(best):
            lo = min(self.min_history, n_max)
            smallest = attempt(lo)
            if not fits(smallest):
                raise ValueError(
                    f"row {row['row_index']} (user {row['user']}): the {mode} prompt needs "
                    f"{len(smallest.prompt_ids) + n_answer} tokens with its item lists cut to {lo} item(s), "
                    f"more than max_length={self.max_length}; raise max_length or shorten the template"
                )
            best, hi = smallest, n_max  # invariant: attempt(lo) fits, attempt(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                enc = attempt(mid)
                if fits(enc):
                    lo, best = mid, enc
                else:
                    hi = mid
        n_item_slots = sum(1 for i in best.prompt_ids if i in self.item_token_ids)
        n_user_slots = sum(1 for i in best.prompt_ids if i in self.user_token_ids)
        if n_item_slots != len(best.soft_items) or n_user_slots != len(best.soft_users):
            raise ValueError(
                f"row {row['row_index']}: {mode} prompt has {n_item_slots} item / {n_user_slots} user placeholder "
                f"tokens but {len(best.soft_items)} / {len(best.soft_users)} soft-token ids were rendered"
            )
        return best

    def length_proxy(self, row: dict[str, Any]) -> int:
        """A cheap stand-in for the row's prompt length (no tokenizer): the characters of the titles its
        prompt renders (list fields cut to ``max_history``, candidates included) plus 4 a title for
        the separators. Used only to group rows of similar length into batches
        (:class:`collab_llm.datamodule.LengthGroupedSampler`)."""
        total = 0
        for name in _LIST_COLUMNS:
            values = row.get(name)
            if not values:
                continue
            if name != "candidates" and self.max_history is not None:
                values = values[-self.max_history:]
            total += sum(len(self.titles.get(int(i), "")) + 4 for i in values)
        if "item" in row:
            total += len(self.titles.get(int(row["item"]), "")) + 4
        return total

    # ---------------------------------------------------------------- batch
    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        pad = int(self.tokenizer.pad_token_id)
        batch: dict[str, Any] = {
            "row_index": torch.tensor([int(r["row_index"]) for r in rows], dtype=torch.long),
            "users": torch.tensor([int(r["user"]) for r in rows], dtype=torch.long),
        }
        per_row_lists: list[dict[str, list[int]]] = []
        targets: list[int] = []
        answers: list[list[int]] = []
        for r in rows:
            lists = {k: list(r[k]) for k in ("history", "liked", "disliked") if k in r}
            if self.max_history is not None:
                lists = {k: v[-self.max_history:] if self.max_history > 0 else [] for k, v in lists.items()}
            if self.task == "next_item":
                target = int(r["target"])
                cands = [int(c) for c in r["candidates"]]
                if cands.count(target) != 1:
                    raise ValueError(
                        f"row {r['row_index']} (user {r['user']}): target {target} appears {cands.count(target)} "
                        "times in candidates; expected exactly once"
                    )
                lists["candidates"] = cands
                if target not in self.titles:
                    raise KeyError(f"row {r['row_index']}: target item {target} has no title")
                answers.append(self.answer_ids(self.titles[target]))
            else:
                target = int(r["item"])
                label = int(r["label"])
                if label not in (0, 1):
                    raise ValueError(f"row {r['row_index']}: label must be 0 or 1, got {label}")
                answers.append(self.answer_ids(self.template.answer_yes if label == 1 else self.template.answer_no))
            per_row_lists.append(lists)
            targets.append(target)

        hist = [lists["history"] for lists in per_row_lists]
        width = max(1, max(len(h) for h in hist))
        history = torch.zeros(len(rows), width, dtype=torch.long)
        for i, h in enumerate(hist):
            if h:
                history[i, width - len(h):] = torch.tensor(h, dtype=torch.long)
        batch["history"] = history

        for mode in self.modes:
            encoded = [
                self._encode_prompt(r, mode, lists, t, len(a))
                for r, lists, t, a in zip(rows, per_row_lists, targets, answers)
            ]
            batch[mode] = _pad_view(encoded, answers, pad)

        if self.task == "next_item":
            batch["target"] = torch.tensor(targets, dtype=torch.long)
            cands = [lists["candidates"] for lists in per_row_lists]
            if len({len(c) for c in cands}) != 1:
                raise ValueError(f"rows {[int(r['row_index']) for r in rows]}: candidate lists differ in length")
            batch["candidates"] = torch.tensor(cands, dtype=torch.long)
            batch["target_index"] = torch.tensor([c.index(t) for c, t in zip(cands, targets)], dtype=torch.long)
            batch["candidate_token_ids"] = [[self.answer_ids(self.titles[c]) for c in row] for row in cands]
            batch["candidate_titles"] = [[self.titles[c] for c in row] for row in cands]
        else:
            batch["item"] = torch.tensor(targets, dtype=torch.long)
            batch["label"] = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
            if all("warm" in r for r in rows):
                batch["warm"] = torch.tensor([bool(r["warm"]) for r in rows], dtype=torch.bool)
        return batch


def _pad_view(encoded: list[_Encoded], answers: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer tensors and left-padded prompt-only tensors for one view."""
    b = len(encoded)
    full = [e.prompt_ids + a for e, a in zip(encoded, answers)]
    t = max(len(f) for f in full)
    p = max(len(e.prompt_ids) for e in encoded)
    input_ids = torch.full((b, t), pad, dtype=torch.long)
    attention = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    prompt_ids = torch.full((b, p), pad, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    for i, (e, a) in enumerate(zip(encoded, answers)):
        n = len(e.prompt_ids) + len(a)
        input_ids[i, :n] = torch.tensor(e.prompt_ids + a, dtype=torch.long)
        attention[i, :n] = 1
        labels[i, len(e.prompt_ids):n] = torch.tensor(a, dtype=torch.long)
        k = len(e.prompt_ids)
        prompt_ids[i, p - k:] = torch.tensor(e.prompt_ids, dtype=torch.long)
        prompt_mask[i, p - k:] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "prompt_input_ids": prompt_ids,
        "prompt_attention_mask": prompt_mask,
        "soft_item_ids": torch.tensor([i for e in encoded for i in e.soft_items], dtype=torch.long),
        "soft_user_ids": torch.tensor([u for e in encoded for u in e.soft_users], dtype=torch.long),
        "n_history": torch.tensor([e.n_history for e in encoded], dtype=torch.long),
    }
