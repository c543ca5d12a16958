"""The open feature contract, data side: field declarations → side tables → manifest → loader."""

import hashlib
from pathlib import Path

import pytest

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource

# sha256 over split_columns/**.npy and flat/*.npy (relative path + bytes, sorted) of the
# builds below, computed at commit 4d8fb40, before side fields existed: configs without
# side fields, and the side fields themselves, must leave the sample columns byte-identical.
PINNED = {
    "din": "ded39b2d8548f5ad0fcb17cd2eddae2e42c40efa9fc77f9be8606dbde163167c",
    "dare": "8cdb174712d417c3c9b626969cb9a1da60b611bed5e022bbe52d6da6125d395e",
}
PROTOCOLS = {
    "din": ProtocolConfig(max_length=20),
    "dare": ProtocolConfig(name="dare", max_length=10, negatives="popularity", n_neg=2, n_train_targets=3),
}


def sample_digest(out: Path) -> str:
    h = hashlib.sha256()
    for sub in ("split_columns", "flat"):
        for f in sorted((Path(out) / sub).rglob("*.npy")):
            h.update(str(f.relative_to(out)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def pinned_config(tmp_path, protocol: str, **extra) -> DataConfig:
    src = SourceConfig(format="synthetic", synthetic=SyntheticSource(n_rows=20_000, n_items=2_000, n_categories=40,
                                                                     mean_events=30.0, min_events=5))
    return DataConfig(output=str(tmp_path / protocol), source=src, protocol=PROTOCOLS[protocol], partitions=3,
                      **extra)


@pytest.mark.parametrize("protocol", sorted(PINNED))
def test_configs_without_side_fields_keep_their_sample_columns(tmp_path, protocol):
    out = build_dataset(pinned_config(tmp_path, protocol), progress=False)
    assert sample_digest(out) == PINNED[protocol]
