"""Lightning callbacks of the LLM side: :class:`WriteBundle`, so that ``collab-llm fit`` ends with a bundle.

    collab-llm fit --config configs/llm/experiments/llara.yaml \\
      --trainer.callbacks+=collab_llm.callbacks.WriteBundle --trainer.callbacks.dirpath work/bundles/llara
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import lightning as L


class WriteBundle(L.Callback):
    """At the end of ``fit`` write the trained :class:`collab_llm.recommender.Recommender` as a bundle to
    ``dirpath`` (:meth:`~collab_llm.recommender.Recommender.save_pretrained`: atomically, with checksums and
    ``made_from``; an existing bundle there is replaced only by a complete one). Rank 0 only.

    Args:
        dirpath: the bundle folder.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.written: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in getattr(pl_module, "last_metrics", {}).items()}
        self.written = pl_module.recommender.save_pretrained(
            Path(self.dirpath).expanduser(), metrics=metrics, command=shlex.join(["collab-llm", *sys.argv[1:]]),
            stage=pl_module.training_stage(), made_from=pl_module.made_from(),
        )
