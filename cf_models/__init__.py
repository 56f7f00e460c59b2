"""Collaborative-filtering backbones (MF, SASRec): models, Lightning training, evaluation, export.

    from cf_models import CFModel, MatrixFactorization, SASRec
    model = CFModel.from_pretrained("runs/cf/sasrec_ml100k_loo")   # dispatches on config.json
    model.item_embeddings(items)            # [..., d]
    model.sequence_representation(history)  # SASRec: [B, L] left-padded -> [B, d]

Train with ``collab-llm cf fit --config configs/cf/<name>.yaml`` (``cf_models.cli``).
"""

from cf_models.base import CFModel
from cf_models.mf import MatrixFactorization, MFConfig
from cf_models.sasrec import SASRec, SASRecConfig

__all__ = ["CFModel", "MatrixFactorization", "MFConfig", "SASRec", "SASRecConfig"]
