"""Fingerprints and checksums: what an artifact was made from, and whether its bytes are still the ones written.

Every artifact records where it came from and the sha256 of its files (docs/DESIGN.md, "Artifacts"):

- a prepared split: ``manifest.json`` lists ``files`` (sha256 of every table); the split's fingerprint
  (:func:`split_sha256`) is the hash of its manifest, so it covers every table. :func:`catalog_sha256`
  hashes just the item catalogue (the ``raw_id`` of items 1..n): what a CF model must agree with.
- a CF export: ``config.json`` lists ``files`` (``model.safetensors``, ``metrics.json``) and ``made_from``
  (split fingerprint, catalogue hash, seed); its fingerprint (:func:`cf_sha256`) is the hash of
  ``config.json``'s content, so it covers the weights.
- a bundle: ``bundle.json`` lists ``files`` (every file but itself) and ``made_from`` (CF model, split,
  backbone, template, seed, budget); an LLM checkpoint carries the same ``made_from``.

Loading verifies the checksums and refuses a mismatch with a :class:`~collab_llm.errors.UserError` that
names the file; a fingerprint that differs from the one recorded is refused naming both sides, unless
``COLLAB_LLM_ALLOW_MISMATCH=1`` (:data:`ALLOW_ENV`) is set, which the messages say.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from collab_llm.errors import UserError

ALLOW_ENV = "COLLAB_LLM_ALLOW_MISMATCH"
ALLOW_HINT = f"set {ALLOW_ENV}=1 to proceed anyway"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def canonical_sha256(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no whitespace): formatting does not matter."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def short(digest: str | None) -> str:
    return "none" if not digest else str(digest)[:12]


def allow_mismatch() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip() not in ("", "0")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, undecodable or malformed file is a one-line :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing ({what})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 at byte {error.start} ({what} damaged; write it again)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON (line {error.lineno} column {error.colno}: {error.msg}; "
                        f"{what} damaged; write it again)") from None


def file_checksums(root: str | os.PathLike, names: Iterable[str]) -> dict[str, str]:
    """``{relative path: sha256}`` of ``names`` under ``root``."""
    root = Path(root)
    return {name: sha256_file(root / name) for name in sorted(names)}


def all_files(root: str | os.PathLike, exclude: Iterable[str] = ()) -> list[str]:
    """Relative paths (posix) of every file under ``root``, except ``exclude``."""
    root = Path(root)
    skip = set(exclude)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and
                  p.relative_to(root).as_posix() not in skip)


def verify_checksums(root: str | os.PathLike, checksums: Mapping[str, str], recorded_in: str | os.PathLike,
                     extra_allowed: Iterable[str] | None = None) -> None:
    """Refuse (:class:`UserError` naming the file) a listed file that is missing or whose sha256 differs.

    With ``extra_allowed`` (an iterable of names), files under ``root`` that are neither listed nor
    allowed are refused too (something was added to the artifact after it was written).
    """
    root = Path(root)
    if not isinstance(checksums, Mapping) or not all(isinstance(v, str) for v in checksums.values()):
        raise UserError(f"{recorded_in}: field 'files' should map file names to sha256 strings")
    for name, expected in sorted(checksums.items()):
        path = root / name
        if not path.is_file():
            raise UserError(f"{path}: missing, though {recorded_in} lists it (the artifact is incomplete; write it again)")
        got = sha256_file(path)
        if got != expected:
            raise UserError(f"{path}: sha256 {short(got)} differs from {short(expected)} recorded in {recorded_in} "
                            "(the file was changed or corrupted; restore it or write the artifact again)")
    if extra_allowed is not None:
        allowed = set(checksums) | set(extra_allowed)
        extra = [n for n in all_files(root) if n not in allowed]
        if extra:
            raise UserError(f"{root / extra[0]}: not listed in {recorded_in} (added after the artifact was written; "
                            "remove it)")


def mismatch(what: str, recorded: Any, recorded_in: str | os.PathLike, current: Any, current_from: str | os.PathLike,
             hint: str = "") -> None:
    """Refuse a fingerprint ``what`` that differs: one line naming both sides (unless :data:`ALLOW_ENV` is set)."""
    if allow_mismatch():
        return
    raise UserError(f"{recorded_in} records {what} {recorded} but {current_from} has {current}; "
                    f"{hint + '; ' if hint else ''}{ALLOW_HINT}")


# ------------------------------------------------------------------------------------------ splits
def split_manifest(split_dir: str | os.PathLike) -> dict:
    path = Path(split_dir) / "manifest.json"
    manifest = read_json(path, "split manifest")
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a split manifest (expected a JSON object)")
    return manifest


def split_sha256(split_dir: str | os.PathLike) -> str:
    """The split's fingerprint: the hash of its manifest (which lists every table's sha256)."""
    return canonical_sha256(split_manifest(split_dir))


def catalog_sha256(split_dir: str | os.PathLike) -> str | None:
    """Hash of the item catalogue (``raw_id`` of items 1..n in id order), None without ``items.parquet``."""
    path = Path(split_dir) / "items.parquet"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        items = pd.read_parquet(path, columns=["item", "raw_id"]).sort_values("item")
    except Exception as error:  # noqa: BLE001 - any reader failure means the file is damaged
        raise UserError(f"{path}: not a readable items table ({type(error).__name__}); prepare the split again") from None
    return canonical_sha256([[int(i), str(r)] for i, r in zip(items["item"], items["raw_id"])])


def verify_split(split_dir: str | os.PathLike) -> None:
    """Check the tables against the sha256 the manifest lists (no manifest, or one written before checksums:
    nothing to check)."""
    path = Path(split_dir) / "manifest.json"
    if not path.exists():
        return
    files = split_manifest(split_dir).get("files")
    if files is not None:
        verify_checksums(split_dir, files, path)


# ------------------------------------------------------------------------------------------ CF models
def cf_sha256(cf_dir: str | os.PathLike) -> str:
    """A CF export's fingerprint: the hash of its ``config.json`` content (which lists its weights' sha256)."""
    return canonical_sha256(read_json(Path(cf_dir) / "config.json", "CF model config"))


def check_cf_matches_split(cf_dir: str | os.PathLike, n_items: int, made_from: Mapping[str, Any] | None,
                           split_dir: str | os.PathLike) -> None:
    """Refuse a CF model whose item catalogue is not the split's (one line naming both folders).

    Checks the item count always; with the CF export's ``made_from``, also the catalogue hash (same
    count, other items) and the split fingerprint (same catalogue, another split: its training rows may
    hold this split's test rows).
    """
    split_dir, cf_dir = Path(split_dir), Path(cf_dir)
    manifest = split_manifest(split_dir)
    split_items = manifest.get("n_items")
    if split_items is not None and int(split_items) != int(n_items):
        raise UserError(f"{cf_dir}: the CF model has {int(n_items)} items but the split {split_dir} has "
                        f"{int(split_items)}: it was trained on another catalogue (train it on this split with "
                        "collab-llm cf fit, or use the split it was trained on)")
    if not made_from:
        return
    recorded = made_from.get("catalog_sha256")
    if recorded:
        current = catalog_sha256(split_dir)
        if current is not None and current != recorded:
            mismatch("item catalogue", short(recorded), cf_dir / "config.json", short(current), split_dir,
                     "the CF model was trained on other items (train it on this split with collab-llm cf fit)")
    recorded = made_from.get("split_sha256")
    if recorded:
        current = canonical_sha256(manifest)
        if current != recorded:
            mismatch("split", f"{made_from.get('split', '?')} ({short(recorded)})", cf_dir / "config.json",
                     f"split {short(current)}", split_dir,
                     "the CF model was trained on another split of these items (its training rows may hold this "
                     "split's test rows; train it on this split with collab-llm cf fit)")


def check_cf_folder(cf_dir: str | os.PathLike, split_dir: str | os.PathLike) -> None:
    """:func:`check_cf_matches_split` from the CF folder's ``config.json`` alone (no weights loaded);
    folders without a CF config or a split manifest are left to the loaders to report."""
    config_path = Path(cf_dir) / "config.json"
    if not config_path.is_file() or not (Path(split_dir) / "manifest.json").is_file():
        return
    raw = read_json(config_path, "CF model config")
    if isinstance(raw, dict) and isinstance(raw.get("n_items"), int):
        check_cf_matches_split(cf_dir, raw["n_items"], raw.get("made_from"), split_dir)


# ------------------------------------------------------------------------------------------ backbones
def backbone_fingerprint(path: str | os.PathLike) -> dict[str, str | None]:
    """``{"path", "config_sha256"}`` of an HF model folder (the hash of its ``config.json``; None for a hub id);
    ``"default"`` is the default backbone's folder (:func:`collab_llm.assets.resolve_backbone`)."""
    from collab_llm.assets import DEFAULT, resolve_backbone

    if str(path) == DEFAULT:
        path = resolve_backbone(path)
    config = Path(path) / "config.json"
    digest = None
    if config.is_file():
        try:
            digest = canonical_sha256(json.loads(config.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            digest = sha256_file(config)
    return {"path": str(path), "config_sha256": digest}


def compare_made_from(recorded: Mapping[str, Any], current: Mapping[str, Any], recorded_in: str | os.PathLike,
                      current_from: str, keys: Iterable[str], hint: str = "") -> None:
    """Refuse the first key of ``keys`` whose recorded value differs from the current one (both known)."""
    for key in keys:
        a, b = recorded.get(key), current.get(key)
        if a is None or b is None:
            continue
        if key == "backbone":
            a, b = (a or {}).get("config_sha256"), (b or {}).get("config_sha256")
            if a is None or b is None:
                continue
        if a != b:
            show = short if isinstance(a, str) and len(a) == 64 else (lambda v: v)
            mismatch(key.replace("_sha256", ""), show(a), recorded_in, show(b), current_from, hint)
