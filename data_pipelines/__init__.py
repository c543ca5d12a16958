"""Arrow data pipelines: raw logs → events → vocabularies → timelines → samples → torch batches.

Kept light on purpose: importing a submodule must not import torch unless it is the loader
(or the Batch contract)."""
