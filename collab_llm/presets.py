"""The comparison presets: the MovieLens protocols (:data:`PROTOCOLS`: where each one's data, CF model and config
fragments come from), the preference stages, and how method names compose (``X+sdpo``, ``head_l4`` of ``head``).

``collab-llm compare`` (:mod:`collab_llm.compare`) runs them; ``compare --data DIR`` keeps a protocol's methods and
fragments and takes a user's split in place of its MovieLens data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Protocol = Literal["nextitem", "yesno"]
#: the shipped configs: package data (``collab_llm/configs``, a link to the repository's ``configs/`` in a
#: checkout), so compare finds them from an installed wheel; fingerprints name them relative to the package
PACKAGE = Path(__file__).resolve().parent  # collab_llm/
CONFIGS = PACKAGE / "configs"


@dataclass(frozen=True)
class ProtocolSpec:
    """Where a protocol's data, CF model and configs come from."""

    dataset: str  # collab-llm prepare --dataset
    prepare_protocol: str  # collab-llm prepare --protocol
    split_name: str  # folder under the work dir
    cf_method: str  # the CF model alone ("sasrec" / "mf")
    cf_config: Path
    data_config: Path
    default_methods: tuple[str, ...]
    llm_methods: dict[str, Path]  # method -> model config fragment
    train_table: str | None = None  # the LLMs' training table (None: the data config's)
    own_cf_config: Path | None = None  # the CF config trained on a user's split (``--data`` without ``--cf-model``)


PROTOCOLS: dict[str, ProtocolSpec] = {
    "nextitem": ProtocolSpec(
        dataset="ml-100k", prepare_protocol="loo", split_name="ml100k_loo", cf_method="sasrec",
        cf_config=CONFIGS / "cf" / "sasrec_ml100k_loo.yaml",
        data_config=CONFIGS / "llm" / "data" / "ml100k_loo.yaml",
        default_methods=("sasrec", "tallrec", "llara", "ilora", "head", "head_l4"),
        own_cf_config=CONFIGS / "cf" / "sasrec_loo.yaml",  # early-stops on validation, no epoch count tuned on ML-100K
        llm_methods={
            "tallrec": CONFIGS / "llm" / "model" / "tallrec.yaml",
            "llara": CONFIGS / "llm" / "model" / "llara.yaml",
            "ilora": CONFIGS / "llm" / "model" / "ilora.yaml",
            # not a paper's: the item-scoring head fitted in closed form (README "Injection that learns")
            "head": CONFIGS / "llm" / "model" / "head.yaml",
            "head_l4": CONFIGS / "llm" / "model" / "head_l4.yaml",  # the head reading decoder block 4
        },
    ),
    "yesno": ProtocolSpec(
        dataset="ml-1m", prepare_protocol="collm", split_name="ml1m_collm", cf_method="mf",
        cf_config=CONFIGS / "cf" / "mf_collm_ml1m.yaml",
        data_config=CONFIGS / "llm" / "data" / "ml1m_collm.yaml",
        default_methods=("mf", "tallrec", "collm", "head", "head_l4", "head_l4_user"),
        llm_methods={
            "tallrec": CONFIGS / "llm" / "model" / "tallrec_collm.yaml",
            "collm": CONFIGS / "llm" / "model" / "collm_yes_no.yaml",
            "head": CONFIGS / "llm" / "model" / "head_yes_no.yaml",
            "head_l4": CONFIGS / "llm" / "model" / "head_l4_yes_no.yaml",
            # block 4 read at the user's token onto the injected user vector, the MF injected folded
            "head_l4_user": CONFIGS / "llm" / "model" / "head_l4_user_yes_no.yaml",
        },
        # TALLRec-style few-shot LLM tuning (CoLLM's preset, its largest TALLRec set); MF trains on all of train
        train_table="train_256",
        own_cf_config=CONFIGS / "cf" / "mf_collm_ml1m.yaml",  # early-stops on validation AUC
    ),
}


def split_task(split_dir: Path) -> str:
    """The comparison protocol (``nextitem`` / ``yesno``) of a prepared split folder, from its manifest's
    ``protocol`` (``nextitem/loo``, ``yesno/collm``, ...); a folder that is not such a split is a
    one-line :class:`~collab_llm.errors.UserError` naming ``--data``."""
    from collab_llm.errors import UserError
    from collab_llm.fingerprint import split_manifest, verify_split

    if not (Path(split_dir) / "manifest.json").is_file():
        raise UserError(f"--data {split_dir}: not a prepared split (no manifest.json); write one with "
                        "collab-llm prepare --interactions FILE --items FILE --protocol loo --out DIR")
    verify_split(split_dir)
    protocol = str(split_manifest(split_dir).get("protocol", ""))
    task = protocol.split("/", 1)[0]
    if task not in PROTOCOLS:
        raise UserError(f"--data {split_dir}: a {protocol!r} split; compare needs a next-item split (prepare "
                        "--protocol loo or llara) or a Yes/No one (--protocol collm or tallrec)")
    return task


#: preference stage -> its model fragment, composed after the start method's (``<method>+<stage>``)
PREFERENCE_STAGES: dict[str, Path] = {
    "sdpo": CONFIGS / "llm" / "model" / "sdpo.yaml",
    "dpo": CONFIGS / "llm" / "model" / "dpo.yaml",
}


def config_name(path: Path) -> str:
    """A shipped config's name in reports and fingerprints: ``configs/llm/model/llara.yaml``, wherever installed."""
    return str(path.relative_to(PACKAGE))


def split_method(method: str) -> tuple[str, str | None]:
    """``"llara+sdpo"`` -> ``("llara", "sdpo")``; ``"llara"`` -> ``("llara", None)``."""
    start, plus, stage = method.partition("+")
    return (start, stage) if plus else (method, None)


def start_method(method: str) -> str | None:
    """A preference stage's supervised start (its paired-difference baseline); ``None`` for other methods."""
    start, stage = split_method(method)
    return start if stage is not None else None


#: a named improvement -> the method it improves on (the report pairs them, as it pairs X+sdpo with X)
VARIANT_OF: dict[str, str] = {"head_l4": "head", "head_l4_user": "head_l4"}


def own_baseline(method: str) -> str | None:
    """The run a method is paired with besides TALLRec: a preference stage's start, a variant's original."""
    return start_method(method) or VARIANT_OF.get(method)
