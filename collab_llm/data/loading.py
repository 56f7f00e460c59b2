"""Reading a prepared split folder back (the only way later stages should read one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from collab_llm.data.writing import MANIFEST
from collab_llm.errors import UserError


@dataclass
class PreparedSplit:
    """A prepared split folder: manifest + parquet tables, read lazily and cached.

    Attributes:
        folder: the folder.
        manifest: parsed ``manifest.json`` (protocol, source, source_sha256, seed, filters, tables, n_users, n_items, stats, files: sha256 per table, verified on load).
    List columns (``history``, ``candidates``, ...) come back as numpy int64 arrays per row.
    """

    folder: Path
    manifest: dict[str, Any]
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def protocol(self) -> str:
        return str(self.manifest["protocol"])

    @property
    def n_users(self) -> int:
        return int(self.manifest["n_users"])

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    @property
    def table_names(self) -> list[str]:
        return sorted(self.manifest["tables"])

    def table(self, name: str) -> pd.DataFrame:
        """The table ``<name>.parquet`` (e.g. ``"train"``, ``"test"``, ``"train_16"``), checked against the manifest."""
        if name not in self.manifest["tables"]:
            raise KeyError(f"{self.folder}: no table {name!r}; the manifest lists {self.table_names}")
        if name not in self._cache:
            path = self.folder / f"{name}.parquet"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {MANIFEST} but missing; re-run the prepare step")
            frame = pq.read_table(path).to_pandas()
            expected = int(self.manifest["tables"][name])
            if len(frame) != expected:
                raise ValueError(f"{path}: {len(frame)} rows but {MANIFEST} says {expected}; re-run the prepare step")
            self._cache[name] = frame
        return self._cache[name]

    @property
    def items(self) -> pd.DataFrame:
        return self.table("items")

    @property
    def users(self) -> pd.DataFrame:
        return self.table("users")

    @property
    def interactions(self) -> pd.DataFrame:
        return self.table("interactions")

    def train_interactions(self) -> pd.DataFrame:
        """The interactions a CF model may train on (``split == 'train'``)."""
        inter = self.interactions
        return inter[inter["split"] == "train"].reset_index(drop=True)


def load_split(folder: str | Path) -> PreparedSplit:
    """Open a folder written by ``prepare_nextitem`` / ``prepare_yesno`` / ``prepare_random_split``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: not a prepared split ({MANIFEST} missing); create it with `collab-llm prepare ... --out "
            f"{folder}` or give another split folder (cf: --data.init_args.split_dir, fit: --data.data_dir; an "
            "interrupted prepare leaves no folder at all, so this folder came from elsewhere)"
        )
    from collab_llm.fingerprint import read_json

    manifest = read_json(path, "split manifest")
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a collab-llm split manifest (a JSON object); write the split with "
                        "`collab-llm prepare`")
    for key in ("protocol", "tables", "n_users", "n_items", "seed"):
        if key not in manifest:
            raise UserError(f"{path}: field {key!r} missing; expected a collab-llm split manifest (write the split "
                            "with `collab-llm prepare`)")
    if manifest.get("files") is not None:  # sha256 of every table (splits written before checksums: none)
        from collab_llm.fingerprint import verify_checksums

        verify_checksums(folder, manifest["files"], path)
    return PreparedSplit(folder=folder, manifest=manifest)
