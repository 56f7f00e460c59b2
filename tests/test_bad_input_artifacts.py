"""Catalogue of corrupted and mismatched artifacts (issue 11, artifact half): splits, CF exports, bundles,
compare work folders and reports, output locks.

Every case in :data:`CASES` copies real artifacts (made once per module by the real commands: ``prepare``,
``cf fit``, ``save_bundle``) into ``tmp_path``, damages or swaps one thing, runs the ``collab-llm`` command
line (``verify``, ``cf test``, ``cf fit``, ``compare``) and asserts, as ``test_bad_input_prepare.py`` does:

- exit code 2 (:data:`collab_llm.errors.USER_ERROR_EXIT`), no traceback;
- exactly one line on stderr naming the file (or folder) at fault and matching the case's patterns
  (which include the option that proceeds, where there is one);
- nothing written or deleted: every path under ``tmp_path`` is byte-identical afterwards.

The tests after the catalogue check the accepted side (a clean artifact verifies, identical fingerprints
resume, stale locks and killed-export leftovers are cleaned) and the Python-level refusals (``load_bundle``,
LLM checkpoints). README.md "What happens on bad input (artifacts)" counts the cases.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bad_input_prepare import GOOD_INTER, GOOD_ITEMS, assert_one_line_user_error, snapshot  # noqa: E402
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from cf_models.base import CFModel  # noqa: E402
from collab_llm import compare  # noqa: E402
from collab_llm.runs import PROFILES  # noqa: E402
from collab_llm.cli import main as cli_main  # noqa: E402
from collab_llm.errors import USER_ERROR_EXIT, UserError  # noqa: E402
from collab_llm.fingerprint import ALLOW_ENV, split_sha256  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SASREC = str(REPO / "configs" / "cf" / "sasrec_ml100k_loo.yaml")
TINY = ["--trainer.max_epochs", "1", "--trainer.enable_model_summary", "false", "--model.init_args.hidden_size", "8",
        "--model.init_args.ffn_dim", "8", "--model.init_args.max_len", "10", "--data.init_args.max_len", "10",
        "--data.init_args.eval_batch_size", "8"]
PLACEHOLDERS = ("[HistoryEmb]", "[UserEmb]", "[ItemEmb]")


# ------------------------------------------------------------------------------------------ artifacts
def _prepare(inputs: Path, out: Path, *extra: str, inter: str = GOOD_INTER, items: str = GOOD_ITEMS) -> None:
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "inter.csv").write_text(inter)
    (inputs / "items.csv").write_text(items)
    assert cli_main(["prepare", "--interactions", str(inputs / "inter.csv"), "--items", str(inputs / "items.csv"),
                     "--protocol", "loo", "--n-candidates", "3", "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """splitA (seed 0), splitB (seed 1, same items), splitX (same count, other item ids), cf (cf fit on
    splitA), cf_other (same architecture, other weights), bundle (LoRA + projector + cf), backbone."""
    from peft import get_peft_model

    from collab_llm.backbone import load_backbone, lora_config
    from collab_llm.bundle import save_bundle
    from projectors import build_projector

    root = tmp_path_factory.mktemp("artifacts")
    _prepare(root / "in", root / "splitA")
    _prepare(root / "in", root / "splitB", "--seed", "1")
    _prepare(root / "inx", root / "splitX", inter=GOOD_INTER.replace(",m", ",x"), items=GOOD_ITEMS.replace("\nm", "\nx"))
    assert cli_main(["cf", "fit", "--config", SASREC, "--data.init_args.split_dir", str(root / "splitA"),
                     "--export_dir", str(root / "cf"), *TINY]) == 0
    cf = CFModel.from_pretrained(root / "cf")
    torch.manual_seed(1)
    type(cf)(cf.config).save_pretrained(root / "cf_other")
    backbone_dir = make_backbone_dir(root, "llama")
    backbone = load_backbone(backbone_dir, placeholder_tokens=PLACEHOLDERS)
    peft_model = get_peft_model(backbone.model, lora_config(backbone.model, r=4, alpha=8.0, dropout=0.0))
    projector = build_projector("llara_mlp", cf.embedding_dim, backbone.hidden_size)
    save_bundle(root / "bundle", peft_model, base_model=str(backbone_dir), dtype="float32", template="llara_movielens",
                placeholder_ids=backbone.placeholder_ids, projectors={"item": projector}, cf_model=cf,
                made_from={"seed": 0})
    for leftover in root.glob("**/lightning_logs"):
        shutil.rmtree(leftover)
    return root


# ------------------------------------------------------------------------------------------ mutations
def garble(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    k = int(len(data) * at)
    data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def edit_json(path: Path, **changes: object) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def drop_files_field(cf: Path) -> None:
    """An export written before checksums (config.json without 'files')."""
    obj = json.loads((cf / "config.json").read_text())
    obj.pop("files"), obj.pop("made_from", None)
    (cf / "config.json").write_text(json.dumps(obj))


def live_lock(target: Path) -> None:
    (target.parent / f".{target.name}.lock").write_text(json.dumps(
        {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "command": "collab-llm other"}))


def make_work(t: Path) -> None:
    """t/work as compare makes it: the nextitem split (ml-100k / loo / seed 0) and a finished CF model on it."""
    work = t / "work"
    (work / "cf").mkdir(parents=True)
    shutil.copytree(t / "splitA", work / "ml100k_loo")
    edit_json(work / "ml100k_loo" / "manifest.json", source="ml-100k", protocol="nextitem/loo")
    cf = CFModel.from_pretrained(t / "cf")
    cf.save_pretrained(work / "cf" / "sasrec_ml100k_loo-ep1", extra_json={"metrics.json": {"train_seconds": 1.0}},
                       made_from={**(cf.made_from or {}), "split_sha256": split_sha256(work / "ml100k_loo")})


def finished_run(t: Path, **changes: object) -> None:
    """t/report/runs/sasrec/result.json of a finished run (its fingerprint with ``changes``)."""
    comp = compare.Comparison("nextitem", ["sasrec"], PROFILES["smoke"], t / "work", t / "report")
    fingerprint = {**comp.run_fingerprint("sasrec"), **changes}
    path = t / "report" / "runs" / "sasrec" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"profile": asdict(comp.profile), "fingerprint": fingerprint, "records": [{"seed": 0}]}))


def legacy_run(t: Path) -> None:
    """A result.json written before fingerprints (profile + records of seed 0)."""
    finished_run(t)
    path = t / "report" / "runs" / "sasrec" / "result.json"
    obj = json.loads(path.read_text())
    obj.pop("fingerprint")
    path.write_text(json.dumps(obj))


# ------------------------------------------------------------------------------------------ catalogue
@dataclass
class Case:
    name: str
    argv: list[str]
    patterns: list[str]
    setup: Callable[[Path], None] | None = None
    needs: list[str] = field(default_factory=lambda: ["splitA", "splitB", "splitX", "cf", "cf_other", "bundle",
                                                      "tiny-llama"])


VERIFY_CF = ["verify", "{t}/cf"]
CF_TEST = ["cf", "test", "--config", SASREC, "--data.init_args.split_dir", "{t}/splitA", "--model_dir", "{t}/cf", *TINY]
CF_FIT = ["cf", "fit", "--config", SASREC, "--data.init_args.split_dir", "{t}/splitA", "--export_dir", "{t}/out", *TINY]
LLM_FIT = ["fit", "--config", str(REPO / "configs" / "llm" / "experiments" / "llara.yaml"), "--model.backbone_path",
           "{t}/tiny-llama", "--data.data_dir", "{t}/split-next_item", "--model.cf_model_path", "{t}/cf",
           "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"]
COMPARE = ["compare", "--protocol", "nextitem", "--methods", "sasrec", "--profile", "smoke", "--work-dir", "{t}/work",
           "--report-dir", "{t}/report"]


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced (a flag whose value is ``flag`` itself: that value)."""
    out = list(argv)
    i = out.index(flag)
    out[i + 1 if flag.startswith("-") else i] = value
    return out


CASES: list[Case] = [
    # --- CF export: damaged files ------------------------------------------------------------------------
    Case("cf: garbled weights", VERIFY_CF, [r"cf/model\.safetensors: sha256 \w+ differs from \w+ recorded in .*cf/config\.json"],
         lambda t: garble(t / "cf" / "model.safetensors")),
    Case("cf: truncated weights", CF_TEST, [r"cf/model\.safetensors: sha256 .* recorded in .*cf/config\.json"],
         lambda t: truncate(t / "cf" / "model.safetensors")),
    Case("cf: bad JSON config", CF_TEST, [r"cf/config\.json: not valid JSON \(line 1 column"],
         lambda t: (t / "cf" / "config.json").write_text("{\"model_type\": ")),
    Case("cf: config not UTF-8", VERIFY_CF, [r"cf/config\.json: not valid UTF-8 at byte 0"],
         lambda t: (t / "cf" / "config.json").write_bytes(b"\xff\xfe{}")),
    Case("cf: config missing", CF_TEST, [r"cf/config\.json is missing"], lambda t: (t / "cf" / "config.json").unlink()),
    Case("cf: metrics changed", VERIFY_CF, [r"cf/metrics\.json: sha256 .* recorded in .*cf/config\.json"],
         lambda t: edit_json(t / "cf" / "metrics.json", best_valid=0.99)),
    Case("cf: metrics deleted", VERIFY_CF, [r"cf/metrics\.json: missing, though .*cf/config\.json lists it"],
         lambda t: (t / "cf" / "metrics.json").unlink()),
    Case("cf (no checksums): truncated weights", VERIFY_CF, [r"cf/model\.safetensors: not a readable safetensors file"],
         lambda t: (drop_files_field(t / "cf"), truncate(t / "cf" / "model.safetensors"))),
    Case("cf (no checksums): weights of another size", VERIFY_CF,
         [r"cf/model\.safetensors: tensors do not fit .*cf/config\.json"],
         lambda t: (drop_files_field(t / "cf"), edit_json(t / "cf" / "config.json", n_items=12))),
    Case("cf: config field of wrong type", VERIFY_CF, [r"cf/config\.json: "],
         lambda t: (drop_files_field(t / "cf"), edit_json(t / "cf" / "config.json", num_heads=3))),
    # --- CF export vs split -------------------------------------------------------------------------------
    Case("cf vs split: other item count", _with(CF_TEST, "--model_dir", "{t}/small"),
         [r"small: the CF model has 5 items but the split .*splitA has 8"],
         lambda t: CFModel.from_pretrained(t / "cf").__class__(
             CFModel.from_pretrained(t / "cf").config.__class__(**{**asdict(CFModel.from_pretrained(t / "cf").config),
                                                                   "n_items": 5})).save_pretrained(t / "small")),
    Case("cf vs split: same count, other items", _with(CF_TEST, "--data.init_args.split_dir", "{t}/splitX"),
         [r"cf/config\.json records item catalogue \w+ but .*splitX has \w+", ALLOW_ENV]),
    Case("cf vs split: another split of the items", _with(CF_TEST, "--data.init_args.split_dir", "{t}/splitB"),
         [r"cf/config\.json records split .*splitA .* but .*splitB has split \w+", "test rows", ALLOW_ENV]),
    Case("LLM fit: CF model of another catalogue", LLM_FIT,
         [r"cf: the CF model has 8 items but the split .*split-next_item has 24: it was trained on another catalogue"],
         lambda t: make_split(t, "next_item")),
    Case("verify --split: other items", ["verify", "{t}/cf", "--split", "{t}/splitX"],
         [r"records item catalogue .* but .*splitX has", ALLOW_ENV]),
    Case("cf test: model_dir is a split", _with(CF_TEST, "--model_dir", "{t}/splitB"), [r"splitB/config\.json is missing"]),
    # --- split --------------------------------------------------------------------------------------------
    Case("split: garbled table", CF_TEST, [r"splitA/train\.parquet: sha256 .* recorded in .*splitA/manifest\.json"],
         lambda t: garble(t / "splitA" / "train.parquet", 0.5)),
    Case("split: table deleted", ["verify", "{t}/splitA"], [r"splitA/test\.parquet: missing, though .*manifest\.json lists it"],
         lambda t: (t / "splitA" / "test.parquet").unlink()),
    Case("split: bad JSON manifest", CF_TEST, [r"splitA/manifest\.json: not valid JSON"],
         lambda t: (t / "splitA" / "manifest.json").write_text("{]")),
    Case("split: table swapped for another split's", ["verify", "{t}/splitA"], [r"splitA/test\.parquet: sha256"],
         lambda t: shutil.copy(t / "splitB" / "test.parquet", t / "splitA" / "test.parquet")),
    # --- bundle -------------------------------------------------------------------------------------------
    Case("bundle: CF model swapped (same dimension)", ["verify", "{t}/bundle"],
         [r"bundle/bundle\.json records CF model \w+ but .*bundle/cf_model has CF model \w+", ALLOW_ENV],
         lambda t: (shutil.rmtree(t / "bundle" / "cf_model"), shutil.copytree(t / "cf_other", t / "bundle" / "cf_model"))),
    Case("bundle: garbled adapter", ["verify", "{t}/bundle"],
         [r"bundle/adapter/adapter_model\.safetensors: sha256 .* recorded in .*bundle/bundle\.json"],
         lambda t: garble(t / "bundle" / "adapter" / "adapter_model.safetensors")),
    Case("bundle: truncated projector", ["verify", "{t}/bundle"], [r"bundle/projectors/item/\S+: sha256"],
         lambda t: truncate(next((t / "bundle" / "projectors" / "item").glob("*.safetensors")))),
    Case("bundle: adapter config edited", ["verify", "{t}/bundle"], [r"bundle/adapter/adapter_config\.json: sha256"],
         lambda t: edit_json(t / "bundle" / "adapter" / "adapter_config.json", r=8)),
    Case("bundle: garbled CF weights", ["verify", "{t}/bundle"], [r"bundle/cf_model/model\.safetensors: sha256"],
         lambda t: garble(t / "bundle" / "cf_model" / "model.safetensors")),
    Case("bundle: bad bundle.json", ["verify", "{t}/bundle"], [r"bundle/bundle\.json: not valid JSON"],
         lambda t: (t / "bundle" / "bundle.json").write_text("{\"format\": \"collab-llm-bundle\",")),
    Case("bundle: adapter file deleted", ["verify", "{t}/bundle"],
         [r"bundle/adapter/adapter_model\.safetensors: missing, though .*bundle\.json lists it"],
         lambda t: (t / "bundle" / "adapter" / "adapter_model.safetensors").unlink()),
    Case("verify: not an artifact", ["verify", "{t}/tiny-llama/.."], [r"not a split \(manifest\.json\), CF model"]),
    # --- cf fit output folder -----------------------------------------------------------------------------
    Case("cf fit: --export_dir is a foreign folder", CF_FIT,
         [r"out: is a non-empty folder without a CF model config\.json", r"--export_dir"],
         lambda t: ((t / "out").mkdir(), (t / "out" / "thesis.tex").write_text("years"))),
    Case("cf fit: --export_dir is a file", CF_FIT, [r"out: is not a folder", r"--export_dir"],
         lambda t: (t / "out").write_text("x")),
    Case("cf fit: --export_dir is a split", _with(CF_FIT, "--export_dir", "{t}/splitB"),
         [r"splitB: is a non-empty folder without a CF model config\.json"]),
    Case("cf fit: CF export with a foreign file", _with(CF_FIT, "--export_dir", "{t}/cf"),
         [r"cf: is a CF model folder that also holds files save_pretrained did not write \(\['notes\.txt'\]\)"],
         lambda t: (t / "cf" / "notes.txt").write_text("mine")),
    Case("cf fit: --export_dir locked by a live run", CF_FIT,
         [r"out: process \d+ on host \S+ since 2026-01-01T00:00:00 \(collab-llm other\) is writing it \(lock .*\.out\.lock\)"],
         lambda t: live_lock(t / "out")),
    # --- configs: class_path restricted to the project's (and torch/Lightning's) classes -----------------------
    Case("config: callback class os.system", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"evil\.yaml: key 'trainer\.callbacks\[1\]\.class_path' names class 'os\.system', which configs may not import"],
         lambda t: write_config(t, lambda c: c["trainer"]["callbacks"].insert(1, {"class_path": "os.system"}))),
    Case("config: model class subprocess.Popen", ["fit", "--config", "{t}/evil.yaml"],
         [r"evil\.yaml: key 'model\.class_path' names class 'subprocess\.Popen'"],
         lambda t: (t / "evil.yaml").write_text("model:\n  class_path: subprocess.Popen\n  init_args: {args: [ls]}\n")),
    Case("config: --model.class_path override", ["cf", "fit", "--config", SASREC, "--model.class_path", "builtins.eval"],
         [r"the command line: key 'model\.class_path' names class 'builtins\.eval'"]),
    Case("config: inline callback override", ["cf", "fit", "--config", SASREC, "--trainer.callbacks+",
                                              '{"class_path": "shutil.rmtree", "init_args": {"path": "/"}}'],
         [r"the command line: key 'trainer\.callbacks\+\.class_path' names class 'shutil\.rmtree'"]),
    Case("config: --data given as a file naming another class", ["cf", "fit", "--config", SASREC, "--data", "{t}/data.yaml"],
         [r"data\.yaml: key 'data\.class_path' names class 'os\.remove'"],
         lambda t: (t / "data.yaml").write_text("class_path: os.remove\ninit_args: {path: x}\n")),
    # sub-config files: a value naming a .yaml/.json file is that part of the config (jsonargparse)
    Case("config: model given as a file inside a --config", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"sub/model\.yaml: key 'model\.class_path' names class 'os\.system', which configs may not import"],
         lambda t: (sub_config(t, "sub/model.yaml", "class_path: os.system\n"),
                    write_config(t, lambda c: c.update(model="sub/model.yaml")))),
    Case("config: callback list item given as a file", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"sub/cb\.yaml: key 'trainer\.callbacks\[2\]\.class_path' names class 'shutil\.rmtree'"],
         lambda t: (sub_config(t, "sub/cb.yaml", "class_path: shutil.rmtree\ninit_args: {path: /}\n"),
                    write_config(t, lambda c: c["trainer"]["callbacks"].append("sub/cb.yaml")))),
    Case("config: a sub-config naming another, relative to its own folder", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"sub/inner\.yaml: key 'model\.init_args\.loss\.class_path' names class 'os\.system'"],
         lambda t: (sub_config(t, "sub/model.yaml", "class_path: cf_models.training.SASRecTask\ninit_args: inner.yaml\n"),
                    sub_config(t, "sub/inner.yaml", "loss: {class_path: os.system}\n"),
                    write_config(t, lambda c: c.update(model="sub/model.yaml")))),
    Case("config: --trainer given as a file", ["cf", "fit", "--config", SASREC, "--trainer", "{t}/trainer.yaml"],
         [r"trainer\.yaml: key 'trainer\.logger\.class_path' names class 'os\.system'"],
         lambda t: sub_config(t, "trainer.yaml", "logger: {class_path: os.system}\n")),
    Case("config: --model.init_args.<group> given as a file", ["fit", "--config", "{t}/evil.yaml",
                                                               "--model.init_args.adapter", "{t}/adapter.yaml"],
         [r"adapter\.yaml: key 'model\.init_args\.adapter\.class_path' names class 'subprocess\.Popen'"],
         lambda t: (sub_config(t, "adapter.yaml", "class_path: subprocess.Popen\n"),
                    write_config(t, lambda c: None))),
    Case("config: short-form class name in a config file", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"evil\.yaml: key 'trainer\.callbacks\[2\]' names class 'builtins\.exec'"],
         lambda t: write_config(t, lambda c: c["trainer"]["callbacks"].append("builtins.exec"))),
    Case("config: a file naming itself", ["cf", "fit", "--config", "{t}/evil.yaml", *TINY],
         [r"evil\.yaml: key 'trainer\.callbacks\[3\]\.class_path' names class 'os\.system'"],
         lambda t: write_config(t, lambda c: c["trainer"]["callbacks"].extend(["evil.yaml", {"class_path": "os.system"}]))),
    # --- wrong flags found by a new-user sweep ----------------------------------------------------------------
    Case("cf fit: --data.init_args.split_dir not a split", _with(CF_FIT, "--data.init_args.split_dir", "{t}/nosplit"),
         [r"nosplit: not a prepared split \(manifest\.json missing\); create it with `collab-llm prepare .*"
          r"--data\.init_args\.split_dir"], needs=[]),
    Case("compare: unknown method", _with(COMPARE, "sasrec", "nope"),
         [r"--methods: protocol 'nextitem' has no method\(s\) \['nope'\]; known: "], needs=[]),
    Case("compare: preference stage before its start", _with(COMPARE, "sasrec", "llara+sdpo"),
         [r"'llara\+sdpo' starts from the finished 'llara' run of this report: list 'llara' before it in --methods"],
         needs=[]),
    Case("LLM fit: --ckpt_path not a checkpoint", [*LLM_FIT, "--ckpt_path", "{t}/notes.txt"],
         [r"notes\.txt: not a checkpoint \(expected the torch archive a ModelCheckpoint writes.*--ckpt_path"],
         lambda t: (t / "notes.txt").write_text("not a checkpoint\n"), needs=[]),
    Case("LLM fit: --ckpt_path a folder", [*LLM_FIT, "--ckpt_path", "{t}/cf"],
         [r"cf: a folder, not a checkpoint file \(--ckpt_path takes a \.ckpt file or 'last'\)"], needs=["cf"]),
    Case("LLM fit: --data.batch_size 0", [*_with(LLM_FIT, "--model.cf_model_path", "{t}/cf-sasrec"), "--data.batch_size", "0"],
         [r"^collab-llm: error: --data\.batch_size must be >= 1, got 0$"],
         lambda t: (make_split(t, "next_item"), make_cf_dirs(t)), needs=["tiny-llama"]),
    Case("cf fit: --model.init_args.hidden_size 0", [*CF_FIT, "--model.init_args.hidden_size", "0"],
         [r"^collab-llm: error: --model\.init_args\.hidden_size must be >= 1, got 0$"], needs=["splitA"]),
    Case("cf fit: hidden size not a multiple of the heads", [*CF_FIT, "--model.init_args.num_heads", "3"],
         [r"--model\.init_args\.hidden_size \(8\) must be a multiple of --model\.init_args\.num_heads \(3\)"],
         needs=["splitA"]),
    Case("cf fit: --data.init_args.batch_size 0", [*CF_FIT, "--data.init_args.batch_size", "0"],
         [r"^collab-llm: error: --data\.init_args\.batch_size must be >= 1, got 0$"], needs=["splitA"]),
    Case("verify: a split manifest without its tables", ["verify", "{t}/splitA"],
         [r"splitA/manifest\.json: field 'tables' missing; expected a collab-llm split manifest .*collab-llm prepare"],
         lambda t: drop_field(t / "splitA" / "manifest.json", "tables"), needs=["splitA"]),
    Case("config: not YAML", ["cf", "fit", "--config", "{t}/evil.yaml"], [r"evil\.yaml: not a readable YAML config"],
         lambda t: (t / "evil.yaml").write_text("model: [unclosed\n")),
    # --- compare: runs keyed by fingerprint ------------------------------------------------------------------
    Case("compare: --seed 1 into a seed-0 report", [*COMPARE, "--seed", "1"],
         [r"report/runs/sasrec/result\.json: this run finished under another seed \(0\), not 1", r"--report-dir"],
         lambda t: (make_work(t), finished_run(t))),
    Case("compare: another budget", [*COMPARE, "--llm-steps", "5"],
         [r"runs/sasrec/result\.json: this run finished under another budget \("],
         lambda t: (make_work(t), finished_run(t))),
    Case("compare: another data split", COMPARE, [r"runs/sasrec/result\.json: this run finished under another data split "
                                                  r"\(0000000000..\), not \w+"],
         lambda t: (make_work(t), finished_run(t, split_sha256="0" * 64))),
    Case("compare: another CF model", COMPARE, [r"runs/sasrec/result\.json: this run finished under another CF model"],
         lambda t: (make_work(t), finished_run(t, cf_model_sha256="1" * 64))),
    Case("compare: another method config", COMPARE, [r"result\.json: this run finished under another method config"],
         lambda t: (make_work(t), finished_run(t, method_config_sha256="2" * 64))),
    Case("compare: result.json before fingerprints, other seed", [*COMPARE, "--seed", "1"],
         [r"result\.json: this run finished under another seed \(0\), not 1"], lambda t: (make_work(t), legacy_run(t))),
    Case("compare: bad JSON result", COMPARE, [r"runs/sasrec/result\.json: not valid JSON"],
         lambda t: (make_work(t), finished_run(t),
                    (t / "report" / "runs" / "sasrec" / "result.json").write_text("{"))),
    Case("compare: report locked by a live run", COMPARE, [r"report: process \d+ on host .* is writing it"],
         lambda t: (make_work(t), live_lock(t / "report"))),
    # --- compare: work folders it did not make ---------------------------------------------------------------
    Case("fit: projector not a kind", LLM_FIT + ["--model.projector", "nope"],
         [r"error: --model\.projector: Expected a typing\.Literal\['linear', 'llara_mlp'.*Got value: nope", r"--help"]),
    Case("fit: adapter rank not a number", LLM_FIT + ["--model.adapter.r", "zero"],
         [r"error: --model\.adapter\.r: Expected a <class 'int'>\. Got value: zero"]),
    Case("fit: unknown model option", LLM_FIT + ["--model.nonsense", "3"], [r"error: --model: Option 'nonsense' is not accepted"]),
    Case("fit: unknown flag", LLM_FIT + ["--bogus"], [r"unrecognized arguments: --bogus"]),
    Case("cf fit: hidden size not a number", CF_FIT + ["--model.init_args.hidden_size", "wide"],
         [r"error: --model\.hidden_size: Expected a <class 'int'>\. Got value: wide", r"collab-llm cf fit\|test --help"]),
    Case("compare: foreign work split", COMPARE, [r"work/ml100k_loo: not a split folder compare made", r"--work-dir"],
         lambda t: ((t / "work" / "ml100k_loo").mkdir(parents=True), (t / "work" / "ml100k_loo" / "notes.txt").write_text("x"))),
    Case("compare: work split of another dataset", COMPARE,
         [r"work/ml100k_loo: holds a split of inter / loo / seed 0, not the ml-100k / loo / seed 0", r"--work-dir"],
         lambda t: ((t / "work").mkdir(), shutil.copytree(t / "splitA", t / "work" / "ml100k_loo"))),
    Case("compare: work split of another seed", COMPARE, [r"holds a split of ml-100k / loo / seed 1, not the ml-100k / loo / seed 0"],
         lambda t: (make_work(t), edit_json(t / "work" / "ml100k_loo" / "manifest.json", seed=1))),
    Case("compare: garbled work split", COMPARE, [r"work/ml100k_loo/valid\.parquet: sha256"],
         lambda t: (make_work(t), garble(t / "work" / "ml100k_loo" / "valid.parquet", 0.5))),
    Case("compare: foreign CF folder", COMPARE,
         [r"cf/sasrec_ml100k_loo-ep1: is a non-empty folder without a CF model config\.json.*compare did not make it"],
         lambda t: (make_work(t), shutil.rmtree(t / "work" / "cf" / "sasrec_ml100k_loo-ep1"),
                    (t / "work" / "cf" / "sasrec_ml100k_loo-ep1").mkdir(),
                    (t / "work" / "cf" / "sasrec_ml100k_loo-ep1" / "x.txt").write_text("x"))),
    Case("compare: CF model of another split", COMPARE,
         [r"sasrec_ml100k_loo-ep1/config\.json records split .* but .*work/ml100k_loo has split", ALLOW_ENV],
         lambda t: (make_work(t), shutil.rmtree(t / "work" / "cf" / "sasrec_ml100k_loo-ep1"),
                    shutil.copytree(t / "cf", t / "work" / "cf" / "sasrec_ml100k_loo-ep1"))),
    Case("compare: CF model of another catalogue", COMPARE, [r"sasrec_ml100k_loo-ep1/config\.json records item catalogue"],
         lambda t: (make_work(t), edit_cf_made_from(t / "work" / "cf" / "sasrec_ml100k_loo-ep1", catalog_sha256="3" * 64))),
]


def write_config(t: Path, change: Callable[[dict], None]) -> None:
    """t/evil.yaml: the shipped SASRec config (split t/splitA) changed by ``change``."""
    import yaml

    config = yaml.safe_load(Path(SASREC).read_text())
    config["data"]["init_args"]["split_dir"] = str(t / "splitA")
    change(config)
    (t / "evil.yaml").write_text(yaml.safe_dump(config))


def drop_field(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    data.pop(key)
    path.write_text(json.dumps(data))


def sub_config(t: Path, name: str, text: str) -> None:
    (t / name).parent.mkdir(parents=True, exist_ok=True)
    (t / name).write_text(text)


def edit_cf_made_from(folder: Path, **changes: object) -> None:
    """Re-save a CF export with other ``made_from`` fields (checksums stay valid: it is written again)."""
    cf = CFModel.from_pretrained(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    cf.save_pretrained(folder, extra_json={"metrics.json": metrics}, made_from={**(cf.made_from or {}), **changes})


def _argv(t: Path, argv: list[str]) -> list[str]:
    return [a.replace("{t}", str(t)) for a in argv]


def _copy_base(base: Path, t: Path, names: list[str]) -> None:
    for name in names:
        shutil.copytree(base / name, t / name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_artifact_is_one_clear_line_exit_2_nothing_touched(
    base: Path, tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLLAB_LLM_DEBUG", raising=False)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    _copy_base(base, tmp_path, case.needs)
    if case.setup is not None:
        case.setup(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = cli_main(_argv(tmp_path, case.argv))
    err = capsys.readouterr().err
    assert snapshot(tmp_path) == before, "the command wrote or deleted something"
    assert_one_line_user_error(code, err, case.patterns)


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


# --- what is accepted, and the Python-level refusals ---------------------------------------------------------


def test_clean_artifacts_verify_and_record_what_they_were_made_from(base: Path, capsys) -> None:
    for name, kind in (("splitA", "split"), ("cf", "CF model"), ("bundle", "bundle")):
        assert cli_main(["verify", str(base / name)]) == 0
        assert capsys.readouterr().out.startswith(f"ok: {kind} {base / name} sha256 ")
    config = json.loads((base / "cf" / "config.json").read_text())
    assert set(config["files"]) == {"model.safetensors", "metrics.json"}  # finished only with its metrics
    made = config["made_from"]
    assert made["split_sha256"] == split_sha256(base / "splitA") and made["seed"] == 0 and made["catalog_sha256"]
    bundle = json.loads((base / "bundle" / "bundle.json").read_text())
    assert bundle["made_from"]["cf_model_source_sha256"] == CFModel.from_pretrained(base / "cf").source_sha256
    assert bundle["made_from"]["cf_made_from"]["split_sha256"] == made["split_sha256"]
    assert "adapter/adapter_model.safetensors" in bundle["files"] and "bundle.json" not in bundle["files"]
    manifest = json.loads((base / "splitA" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"train.parquet", "valid.parquet", "test.parquet", "items.parquet"}


@pytest.mark.parametrize(("flag", "value", "message"), [("--test-rows", "0", "must be >= 1, got 0"),
                                                        ("--llm-steps", "-2", "must be >= 1, got -2"),
                                                        ("--test-rows", "ten", "expected a whole number >= 1, got 'ten'")])
def test_compare_refuses_counts_below_one(tmp_path: Path, monkeypatch, capsys, flag: str, value: str, message: str) -> None:
    """``compare --test-rows 0`` stacked an empty score list (a traceback); counts are checked by the parser."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", "--methods", "sasrec", "--profile", "smoke", flag, value])
    assert exit_info.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"collab-llm compare: error: argument {flag}: {message}"
    assert list(tmp_path.iterdir()) == []


def test_sub_config_files_of_project_classes_pass_the_guard(tmp_path: Path, monkeypatch) -> None:
    """The accepted side of the sub-config cases: nested files naming only allowed classes, a short-form
    allowed class, a value that is an existing dotted path, and the shipped configs."""
    from collab_llm.config_guard import check_class_paths

    monkeypatch.chdir(tmp_path)
    sub_config(tmp_path, "sub/model.yaml", "class_path: cf_models.training.SASRecTask\ninit_args: inner.yaml\n")
    sub_config(tmp_path, "sub/inner.yaml", "hidden_size: 8\n")
    sub_config(tmp_path, "main.yaml", "model: sub/model.yaml\ntrainer:\n  callbacks: [lightning.pytorch.callbacks.EarlyStopping]\n")
    (tmp_path / "cf.sasrec").mkdir()
    check_class_paths(["--config", SASREC, "--config", "main.yaml", "--trainer.callbacks+", "sub/model.yaml",
                       "--model.init_args.cf_model_path", "cf.sasrec", "--model", "collab_llm.module.CollabLLM"])
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        check_class_paths(["--config", str(config)])


def test_allow_mismatch_env_proceeds(base: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _copy_base(base, tmp_path, ["cf", "splitB"])
    argv = _argv(tmp_path, _with(CF_TEST, "--data.init_args.split_dir", "{t}/splitB"))
    assert cli_main(argv) == USER_ERROR_EXIT
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert cli_main(argv) == 0


def test_load_bundle_refuses_a_swapped_cf_model_and_verify_false_loads(base: Path, tmp_path: Path) -> None:
    from collab_llm.bundle import load_bundle

    shutil.copytree(base / "bundle", tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.cf_model is not None
    shutil.rmtree(tmp_path / "bundle" / "cf_model")
    shutil.copytree(base / "cf_other", tmp_path / "bundle" / "cf_model")
    with pytest.raises(UserError, match=r"bundle\.json records CF model \w+ but .*cf_model has CF model"):
        load_bundle(tmp_path / "bundle")
    assert load_bundle(tmp_path / "bundle", verify=False).cf_model is not None


def test_checkpoint_trained_with_another_cf_model_is_refused(base: Path, tmp_path: Path) -> None:
    from collab_llm.module import MADE_FROM_KEY, CollabLLM

    def module(cf: str) -> CollabLLM:
        return CollabLLM(str(base / "tiny-llama"), "llara_movielens", regime="joint", cf_model_path=str(base / cf))

    a = module("cf")
    checkpoint = {"state_dict": a.state_dict(), "global_step": 3}
    a.on_save_checkpoint(checkpoint)
    assert checkpoint[MADE_FROM_KEY]["cf_model_sha256"] == CFModel.from_pretrained(base / "cf").source_sha256
    module("cf").on_load_checkpoint(dict(checkpoint))  # the same CF model: accepted
    with pytest.raises(UserError, match=r"the checkpoint records cf_model \w+ but this run's model \(CF model .*cf_other"):
        module("cf_other").on_load_checkpoint(dict(checkpoint))


def test_locks_name_the_holder_stale_ones_are_taken_over(tmp_path: Path) -> None:
    from collab_llm.io import lock_path, output_lock

    target = tmp_path / "out"
    lock_path(target).write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname()}))  # its process is gone
    with output_lock(target) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with output_lock(target):  # nested in the same process: free
            pass
        assert path.exists()
    assert not lock_path(target).exists()
    live_lock(target)
    with pytest.raises(UserError, match=rf"out: process {os.getppid()} on host .* is writing it"):
        with output_lock(target):
            pass


def test_killed_export_leftovers_are_cleaned_and_the_rerun_finishes(base: Path, tmp_path: Path) -> None:
    from cf_models.base import is_finished_export

    _copy_base(base, tmp_path, ["splitA"])
    # a cf fit killed during its export: a half-written temp folder and its lock, both of a dead process
    (tmp_path / ".out.tmp-999999999-abc").mkdir()
    (tmp_path / ".out.tmp-999999999-abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname()}))
    assert cli_main(_argv(tmp_path, CF_FIT)) == 0
    assert is_finished_export(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "splitA"]
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())["test"]
    assert cli_main(_argv(tmp_path, CF_FIT)) == 0  # its own export is replaced: the same metrics
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test"] == first


def test_compare_reuses_only_finished_cf_models_and_skips_identical_runs(base: Path, tmp_path: Path) -> None:
    _copy_base(base, tmp_path, ["splitA", "cf"])
    make_work(tmp_path)
    comp = compare.Comparison("nextitem", ["sasrec"], PROFILES["smoke"], tmp_path / "work", tmp_path / "report",
                              log=lambda _: None)
    assert comp.reusable_split() and comp.reusable_cf()
    finished_run(tmp_path)
    assert comp.finished("sasrec") and comp.finished("sasrec", early=True)  # the same fingerprint: skipped
    (tmp_path / "work" / "cf" / "sasrec_ml100k_loo-ep1" / "metrics.json").unlink()
    edit_json(tmp_path / "work" / "cf" / "sasrec_ml100k_loo-ep1" / "config.json", files={})
    assert not comp.reusable_cf()  # weights without metrics: an interrupted export, trained again
    seeded = compare.Comparison("nextitem", ["sasrec"], PROFILES["smoke"], tmp_path / "work", tmp_path / "r", seed=1)
    assert seeded.split_dir.name == "ml100k_loo-seed1" and seeded.cf_dir.name == "sasrec_ml100k_loo-seed1-ep1"
    # the quick profile's capped SASRec and the full profile's are different folders, whichever ran first
    names = {p: compare.Comparison("nextitem", ["sasrec"], PROFILES[p], tmp_path / "work", tmp_path / "r").cf_dir.name
             for p in ("quick", "full")}
    assert names == {"quick": "sasrec_ml100k_loo-ep8", "full": "sasrec_ml100k_loo"}
    assert not seeded.reusable_split()


def test_kill_9_during_cf_fit_then_rerun_gives_the_uninterrupted_metrics(base: Path, tmp_path: Path) -> None:
    """A real ``kill -9`` of ``collab-llm cf fit`` while it holds its export folder: the rerun takes the stale
    lock over, leaves no leftovers and exports the same test metrics as an uninterrupted run."""
    import signal
    import subprocess
    import time

    _copy_base(base, tmp_path, ["splitA"])

    def no_early_stop(config: dict) -> None:
        config["trainer"]["callbacks"][0]["init_args"]["patience"] = 10**6

    write_config(tmp_path, no_early_stop)  # t/evil.yaml: a run that only the kill ends
    long_run = _with(_with(_argv(tmp_path, CF_FIT), "--config", str(tmp_path / "evil.yaml")), "--trainer.max_epochs", "100000")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "collab_llm.cli", *long_run], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / ".out.lock"
    try:
        deadline = time.time() + 120
        while not lock.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists(), "cf fit never took its lock"
        time.sleep(0.5)  # training
        assert proc.poll() is None, "cf fit ended before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid  # the killed run's lock is left behind
    assert not (tmp_path / "out").exists()  # nothing half-exported
    assert cli_main(_argv(tmp_path, CF_FIT)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml", "out", "splitA"]  # lock taken over, released
    assert cli_main(_with(_argv(tmp_path, CF_FIT), "--export_dir", str(tmp_path / "again"))) == 0
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())["test"] for d in ("out", "again")]
    assert metrics[0] == metrics[1]


def test_a_legacy_cf_export_with_metrics_counts_as_finished(tmp_path: Path) -> None:
    """An export written before checksums (no files list) is not retrained by compare when its metrics
    are there: that would replace the model earlier runs were trained with."""
    from cf_models.base import is_finished_export

    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sasrec", "n_items": 5}))
    (folder / "model.safetensors").write_bytes(b"weights")
    assert not is_finished_export(folder)  # no metrics: an interrupted export
    (folder / "metrics.json").write_text("{}")
    assert is_finished_export(folder)
    edit_json(folder / "config.json", files={"model.safetensors": "0" * 64})  # a checksummed export without metrics
    assert not is_finished_export(folder)


def test_kill_9_of_prepare_while_writing_or_replacing_then_rerun_gives_the_same_split(base: Path, tmp_path: Path) -> None:
    """``collab-llm prepare`` killed with its tables written in the temporary folder (not renamed yet), and an
    ``--overwrite`` killed between its two renames (the old split moved aside, the new one not in place):
    the same command again writes the uninterrupted split (same fingerprint) and leaves nothing else."""
    from test_kill9 import debris, run_killed

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "inter.csv").write_text(GOOD_INTER)
    (tmp_path / "in" / "items.csv").write_text(GOOD_ITEMS)
    argv = ["prepare", "--interactions", str(tmp_path / "in" / "inter.csv"), "--items", str(tmp_path / "in" / "items.csv"),
            "--protocol", "loo", "--n-candidates", "3", "--out", str(tmp_path / "split")]
    expected = split_sha256(base / "splitA")
    run_killed(argv, "atomic_dir:written", tmp_path)
    assert not (tmp_path / "split").exists() and debris(tmp_path)  # a temp folder and the lock of a dead process
    assert cli_main(argv) == 0
    assert split_sha256(tmp_path / "split") == expected and debris(tmp_path) == []

    run_killed([*argv, "--overwrite"], "atomic_dir:moved_aside", tmp_path)
    assert not (tmp_path / "split").exists() and [p for p in debris(tmp_path) if ".old-" in p]
    assert cli_main([*argv, "--overwrite"]) == 0
    assert split_sha256(tmp_path / "split") == expected and debris(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "split"]


def test_kill_9_of_cf_fit_during_its_export_then_rerun_gives_the_uninterrupted_export(base: Path, tmp_path: Path) -> None:
    """``collab-llm cf fit`` killed during its export (weights, ``metrics.json`` and ``config.json`` written in the
    temporary folder, nothing renamed): no export exists, and the same command again exports the uninterrupted
    run's weights and test metrics, taking the dead process's lock over and leaving nothing behind."""
    from safetensors.torch import load_file
    from test_kill9 import debris, run_killed

    from cf_models.base import is_finished_export

    _copy_base(base, tmp_path, ["splitA"])
    argv = _argv(tmp_path, CF_FIT)
    run_killed(argv, "atomic_dir:written", tmp_path)
    assert not (tmp_path / "out").exists()
    left = debris(tmp_path)
    assert ".out.lock" in left and any(p.startswith(".out.tmp-") for p in left)
    assert cli_main(argv) == 0
    assert is_finished_export(tmp_path / "out") and debris(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "splitA"]
    metrics = [json.loads((d / "metrics.json").read_text())["test"] for d in (base / "cf", tmp_path / "out")]
    assert metrics[0] == metrics[1]
    weights = [load_file(d / "model.safetensors") for d in (base / "cf", tmp_path / "out")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
