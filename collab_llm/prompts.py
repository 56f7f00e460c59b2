"""Prompt templates: YAML data in ``collab_llm/templates/`` rendered into text plus soft-token ids.

A template file (add one without touching code; see the shipped ones) has the keys

    name: str                      # informative
    task: next_item | yes_no
    text: str                      # text-only prompt
    hybrid: str                    # prompt with placeholders for soft tokens
    item_text: "{title}"           # how one item is written in the text-only prompt
    item_hybrid: "{title} [HistoryEmb]"   # ... and in the hybrid prompt
    separator: ", "                # between items of a list
    answer_prefix: " "             # text between the prompt and the answer ("Answer: Yes")
    answer_yes: "Yes"              # yes_no only: the answer words (YAML 1.1 reads a bare
    answer_no: "No"                # `yes:` key as a boolean, hence the prefix)
    wording: movie                 # the default item wording (:data:`WORDINGS`), if the prompts use it

Item wording: a template written for any domain says ``${item}`` / ``${items}`` ("movie" / "movies"),
``${consumed}`` ("watched") and ``${consume}`` ("watch") where a domain's words go; its ``wording`` key
picks the default, and a template name ``<name>@<wording>`` (``llara_movielens@book``, also through
``--model.template``) another one of :data:`WORDINGS`: movie, book, product, item. The shipped
templates render exactly their MovieLens prompts by default.

Prompt fields: ``{history}`` (chronological item list), ``{candidates}`` and ``{n_candidates}``
(next_item), ``{target}`` (title of the item asked about; yes_no), ``{liked}`` / ``{disliked}``
(TALLRec). Item formats may use ``{title}`` only.

Placeholders and what fills them (:data:`ITEM_PLACEHOLDERS`, :data:`USER_PLACEHOLDERS`):
- inside an item format, an item placeholder (``[HistoryEmb]`` or ``[ItemEmb]``) stands for
  *that* item's embedding;
- in the prompt's own text, ``[ItemEmb]`` (or ``[HistoryEmb]``) stands for the target item and
  ``[UserEmb]`` for the user.
:func:`render` returns the soft-token ids in text order, so they align with the placeholders in
the tokenized prompt read row-major.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import yaml

Task = Literal["next_item", "yes_no"]
Mode = Literal["text", "hybrid"]

ITEM_PLACEHOLDERS: tuple[str, ...] = ("[HistoryEmb]", "[ItemEmb]")
USER_PLACEHOLDERS: tuple[str, ...] = ("[UserEmb]",)
ALL_PLACEHOLDERS: tuple[str, ...] = ITEM_PLACEHOLDERS + USER_PLACEHOLDERS

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

_LIST_FIELDS = ("history", "candidates", "liked", "disliked")
_FIELDS: dict[str, set[str]] = {
    "next_item": {"history", "candidates", "n_candidates"},
    "yes_no": {"history", "target", "liked", "disliked"},
}
_KEYS_REQUIRED = {"name", "task", "text", "hybrid"}
_KEYS_OPTIONAL = {"item_text", "item_hybrid", "separator", "answer_prefix", "answer_yes", "answer_no", "wording"}


@dataclass(frozen=True)
class ItemWording:
    """A domain's words in a prompt: ``${item}``, ``${items}``, ``${consumed}``, ``${consume}``."""

    item: str
    items: str
    consumed: str
    consume: str


WORDINGS: dict[str, ItemWording] = {
    "movie": ItemWording("movie", "movies", "watched", "watch"),
    "book": ItemWording("book", "books", "read", "read"),
    "product": ItemWording("product", "products", "bought", "buy"),
    "item": ItemWording("item", "items", "interacted with", "interact with"),
}
#: separates a template name from a wording: ``llara_movielens@book``
WORDING_SEPARATOR = "@"
_WORDED_KEYS = ("text", "hybrid", "item_text", "item_hybrid")


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt, text-only and hybrid (see the module docstring for the fields)."""

    name: str
    task: Task
    text: str
    hybrid: str
    item_text: str = "{title}"
    item_hybrid: str = "{title} [HistoryEmb]"
    separator: str = ", "
    answer_prefix: str = " "
    answer_yes: str = "Yes"
    answer_no: str = "No"
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        where = f"template {self.source}"
        if self.task not in _FIELDS:
            raise ValueError(f"{where}: task must be 'next_item' or 'yes_no', got {self.task!r}")
        for key in ("text", "hybrid"):
            names = _field_names(getattr(self, key), f"{where}: {key}")
            unknown = names - _FIELDS[self.task]
            if unknown:
                raise ValueError(
                    f"{where}: {key} uses unknown field(s) {sorted(unknown)}; "
                    f"allowed for task {self.task!r}: {sorted(_FIELDS[self.task])}"
                )
        for key in ("item_text", "item_hybrid"):
            names = _field_names(getattr(self, key), f"{where}: {key}")
            if names - {"title"}:
                raise ValueError(f"{where}: {key} may only use {{title}}, got {sorted(names)}")
        if any(p in self.text or p in self.item_text for p in ALL_PLACEHOLDERS):
            raise ValueError(f"{where}: the text-only prompt must not contain placeholders {ALL_PLACEHOLDERS}")

    def prompt(self, mode: Mode) -> str:
        if mode == "text":
            return self.text
        if mode == "hybrid":
            return self.hybrid
        raise ValueError(f"mode must be 'text' or 'hybrid', got {mode!r}")

    def item_format(self, mode: Mode) -> str:
        return self.item_text if mode == "text" else self.item_hybrid

    def list_fields(self, mode: Mode) -> list[str]:
        """The item-list fields the prompt of ``mode`` uses (truncated together, oldest first)."""
        names = _field_names(self.prompt(mode), self.source)
        return [f for f in _LIST_FIELDS if f in names and f != "candidates"]


def _field_names(fmt: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as err:
        raise ValueError(f"{where}: malformed format string {fmt!r}: {err}") from err
    return {name for _, name, _, _ in parsed if name is not None}


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """Load a template by name (``collab_llm/templates/<name>.yaml``) or from a YAML path, either optionally
    followed by ``@<wording>`` (:data:`WORDINGS`; the module docstring)."""
    name_or_path, wording = split_wording(str(name_or_path))
    path = _template_path(name_or_path)
    data = _read_template(path)
    return PromptTemplate(source=str(path), **apply_wording(data, wording, path))


def _template_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"prompt template {str(name_or_path)!r} not found at {path}; shipped: {known}")
    return path


def _read_template(path: Path) -> dict[str, str]:
    """A template file's keys, checked (strings only, known keys)."""
    with open(path) as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    missing = _KEYS_REQUIRED - set(data)
    unknown = set(data) - _KEYS_REQUIRED - _KEYS_OPTIONAL
    if missing or unknown:
        raise ValueError(f"{path}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: key {key!r} is not a string (YAML reads bare yes/no/on/off as booleans)")
        if not isinstance(value, str):
            raise ValueError(f"{path}: key {key!r} must be a string, got {type(value).__name__}")
    return data


def split_wording(name: str) -> tuple[str, str | None]:
    """``"llara_movielens@book"`` -> ``("llara_movielens", "book")``; no ``@``: ``(name, None)``."""
    base, sep, wording = name.rpartition(WORDING_SEPARATOR)
    if not sep or not base:
        return name, None
    if wording not in WORDINGS:
        raise ValueError(f"template {name!r}: unknown item wording {wording!r}; expected one of {sorted(WORDINGS)}")
    return base, wording


def with_wording(template: str, wording: str | None) -> str:
    """The template name ``template`` with item wording ``wording`` (``None``, or a template whose prompts name
    no domain (no ``wording`` key): as given)."""
    base = split_wording(template)[0]
    if wording is None or "wording" not in _read_template(_template_path(base)):
        return template
    if wording not in WORDINGS:
        raise ValueError(f"unknown item wording {wording!r}; expected one of {sorted(WORDINGS)}")
    return f"{split_wording(template)[0]}{WORDING_SEPARATOR}{wording}"


def apply_wording(data: dict[str, str], wording: str | None, path: Path | str) -> dict[str, str]:
    """A template file's keys with ``${item}``-style words filled in (``wording``, else the file's ``wording``)."""
    data = dict(data)
    default = data.pop("wording", None)
    chosen = wording or default
    if chosen is None:  # a template without wording: its text as written
        return data
    uses = any("$" in data.get(k, "") for k in _WORDED_KEYS)
    if chosen not in WORDINGS:
        raise ValueError(f"{path}: unknown item wording {chosen!r}; expected one of {sorted(WORDINGS)}")
    if not uses:
        raise ValueError(f"{path}: has no item wording fields (${{item}}, ...); it cannot be worded {chosen!r}")
    words = asdict(WORDINGS[chosen])
    for key in _WORDED_KEYS:
        if key in data:
            try:
                data[key] = string.Template(data[key]).substitute(words)
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}: {key}: bad item wording field {err}; known: "
                                 f"{sorted('${' + w + '}' for w in words)}") from err
    return data


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt and the ids that fill its placeholders, in text order.

    Attributes:
        text: the prompt string.
        soft_items: item id for each item placeholder, in order of appearance.
        soft_users: user id for each user placeholder, in order of appearance.
    """

    text: str
    soft_items: list[int]
    soft_users: list[int]


def _scan_placeholders(text: str) -> list[str]:
    """Placeholders occurring in ``text``, in order."""
    found: list[tuple[int, str]] = []
    for token in ALL_PLACEHOLDERS:
        start = text.find(token)
        while start != -1:
            found.append((start, token))
            start = text.find(token, start + len(token))
    return [tok for _, tok in sorted(found)]


def render(
    template: PromptTemplate,
    mode: Mode,
    titles: dict[int, str],
    user: int,
    lists: dict[str, Sequence[int]],
    target: int | None = None,
) -> RenderedPrompt:
    """Render the ``mode`` prompt for one example.

    Args:
        titles: item id -> title.
        user: the user id (fills ``[UserEmb]``).
        lists: item-list fields, e.g. ``{"history": [3, 7], "candidates": [...]}`` (ids).
        target: the item asked about (yes_no ``{target}`` and prompt-level ``[ItemEmb]``).
    """
    item_fmt = template.item_format(mode)
    item_slots = _scan_placeholders(item_fmt)
    soft_items: list[int] = []
    soft_users: list[int] = []
    pieces: list[str] = []

    def item_string(item: int) -> str:
        if item not in titles:
            raise KeyError(f"item id {item} has no title in the items table")
        title = titles[item]
        if any(p in title for p in ALL_PLACEHOLDERS):
            raise ValueError(f"title of item {item} ({title!r}) contains a placeholder string")
        for slot in item_slots:
            if slot in USER_PLACEHOLDERS:
                soft_users.append(user)
            else:
                soft_items.append(item)
        return item_fmt.format(title=title)

    for literal, name, _, _ in string.Formatter().parse(template.prompt(mode)):
        for slot in _scan_placeholders(literal):
            if slot in USER_PLACEHOLDERS:
                soft_users.append(user)
            else:
                if target is None:
                    raise ValueError(f"template {template.source}: {slot} in the prompt text needs a target item")
                soft_items.append(target)
        pieces.append(literal)
        if name is None:
            continue
        if name == "n_candidates":
            pieces.append(str(len(lists["candidates"])))
        elif name == "target":
            if target is None:
                raise ValueError(f"template {template.source}: {{target}} needs a target item")
            if target not in titles:
                raise KeyError(f"target item id {target} has no title in the items table")
            pieces.append(titles[target])
        else:
            if name not in lists:
                raise KeyError(f"template {template.source} uses {{{name}}} but the row has no {name!r} list")
            pieces.append(template.separator.join(item_string(int(i)) for i in lists[name]))
    return RenderedPrompt("".join(pieces), soft_items, soft_users)
