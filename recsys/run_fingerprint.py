"""Which data a run was trained on: the run directory's ``data_fingerprint.json``.

``{"dataset": path of the built dataset, "vocab_fingerprint": {vocabulary file: sha256}}``,
written by ``fit`` (:func:`recsys.run_state.record_dataset`). Everything that must know
whether two runs (or a run and a dataset) share their id space reads it through
:func:`read_data_fingerprint`: ``recsys evaluate``'s dataset check, the FAISS index stamp,
the cascade's vocabulary check and ``recsys export``. This module imports json only, so the
light packages (the FAISS stage, serving) can use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from recsys.errors import CheckpointError

DATA_FINGERPRINT = "data_fingerprint.json"


def read_data_fingerprint(run_dir: Union[str, Path]) -> Optional[dict]:
    """The parsed stamp of ``run_dir``, its ``vocab_fingerprint`` a dict; None for a run
    from before the stamp existed; a CheckpointError naming the file when it is damaged."""
    path = Path(run_dir) / DATA_FINGERPRINT
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or not isinstance(saved["vocab_fingerprint"], dict):
            raise TypeError("vocab_fingerprint is not a mapping")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not readable ({exc!r}); the run directory is damaged") from None
    return saved
