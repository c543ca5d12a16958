"""One reader per raw format; each yields ``pyarrow.RecordBatch`` of normalized events
(see :mod:`data_pipelines.schema`) and reports bad rows to a RejectionReport."""
