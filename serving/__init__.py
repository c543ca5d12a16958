"""In-process scoring for other Python services: exported artifacts, ``Scorer`` and ``Recommender``.

    from recsys.serving import Scorer
    scorer = Scorer.load("artifacts/din")            # written by `recsys export RUN --out artifacts/din`
    probs = scorer.score(history=[...raw item ids...], candidates=[...raw item ids...], user=raw_user_id)

``import recsys.serving`` pulls in torch, numpy, safetensors, pyarrow's Parquet reader and
faiss only (no Lightning, pandas, matplotlib or scikit-learn; a test checks ``sys.modules``).
:func:`export_artifact` (the writing side, which reads the built dataset) is imported on
first use. See docs/serving.md.
"""

from .artifact import FORMAT_VERSION, Artifact, open_artifact
from .compiled import MODES as COMPILED_MODES
from .ids import RequestError
from .request import Request
from .recommender import Recommender
from .scorer import Scorer, ScorerStats

__all__ = ["Artifact", "COMPILED_MODES", "FORMAT_VERSION", "Recommender", "Request", "RequestError", "Scorer",
           "ScorerStats",
           "export_artifact", "open_artifact"]


def __getattr__(name):
    if name == "export_artifact":     # the exporting side reads the built dataset: not imported eagerly
        from .export import export_artifact
        return export_artifact
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
