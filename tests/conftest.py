"""Shared fixtures: single-threaded torch, and the real asset cache (skipped when absent)."""

from __future__ import annotations

import os

import pytest
import torch

from collab_llm.assets import AssetPaths, cache_root, find_assets


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> None:
    """The machine's CPUs are shared: every test runs torch on one thread."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_assets() -> AssetPaths:
    """The cached MovieLens-100K / MovieLens-1M / SmolLM2 folders; skips the test if the cache is incomplete.

    Fill the cache once with ``collab-llm assets`` (or ``python -m collab_llm.assets``).
    """
    paths = find_assets()
    if paths is None and os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI: real assets missing from the cache {cache_root()}; run.sh should have fetched them")
    if paths is None:
        pytest.skip(f"real assets not in the cache {cache_root()}; run `collab-llm assets` first")
    return paths
