"""The FAISS stage: indexes over a retrieval model's item tower (:mod:`.index`),
multi-interest search and merge (:mod:`.search`), and the batch candidate job behind
``recsys retrieve`` (:mod:`.batch`). ``index`` and ``search`` import no Lightning, pandas
or pyarrow (serving loads them); ``batch`` reads the built dataset and may.

This ``__init__`` imports nothing, so ``import recsys.retrieval.index`` stays light."""
