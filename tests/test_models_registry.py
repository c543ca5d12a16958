"""The model registry: one decorated file is enough, no import cycles, both families."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import recsys.models
from recsys.models import MODELS, family, register
from recsys.models.base import RankingModel, RetrievalModel
from recsys.models.registry import of_family

MODULE = textwrap.dedent('''
    import torch
    from recsys.models.base import RankingModel, RankingOutput
    from recsys.models.registry import register

    @register
    class TinyRegisteredModel(RankingModel):
        def __init__(self, features, *, width: int = 3) -> None:
            super().__init__(features)
            self.bias = torch.nn.Parameter(torch.zeros(width))

        def forward(self, batch):
            return RankingOutput(logit=self.bias.sum().expand(batch.size))
''')


def test_the_package_registers_every_model_file():
    assert {"DIN", "DARE", "EmbeddingMLP", "FinalMLP"} <= set(MODELS)
    assert all(family(cls) in ("ranking", "retrieval") for cls in MODELS.values())
    assert set(of_family("ranking")) | set(of_family("retrieval")) == set(MODELS)


def test_registry_imports_no_model_and_any_model_module_imports_first():
    import ast
    import recsys.models.registry as registry
    tree = ast.parse(open(registry.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "typing", "torch", "base"}, imported
    for name in ("din", "dare", "finalmlp", "embedding_mlp"):   # no cycle whichever module comes first
        subprocess.run([sys.executable, "-c", f"import recsys.models.{name}"], check=True)


def test_a_new_decorated_module_resolves_by_short_name(tmp_path, monkeypatch):
    (tmp_path / "tiny_registered_model.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("tiny_registered_model")
    try:
        assert MODELS["TinyRegisteredModel"] is module.TinyRegisteredModel
        from recsys.config import parse_config
        config = parse_config({"model": {"class_path": "TinyRegisteredModel", "init_args": {"width": 5}},
                               "data": {"path": "x"}})
        assert config.model_class is module.TinyRegisteredModel
        assert config.model_init_args == {"width": 5}
    finally:
        MODELS.pop("TinyRegisteredModel", None)
        sys.modules.pop("tiny_registered_model", None)


def test_register_rejects_non_models_and_name_clashes():
    with pytest.raises(TypeError, match="neither a RankingModel nor a RetrievalModel"):
        register(object)

    class DIN(RankingModel):   # same short name as the real DIN, another class
        pass
    with pytest.raises(ValueError, match="already registered"):
        register(DIN)

    class Interests(RetrievalModel):
        pass
    try:
        assert register(name="InterestsAlias")(Interests) is Interests
        assert family(MODELS["InterestsAlias"]) == "retrieval"
        assert "InterestsAlias" in of_family("retrieval") and "InterestsAlias" not in of_family("ranking")
    finally:
        MODELS.pop("InterestsAlias", None)


def test_reimporting_a_model_module_is_allowed():
    original = MODELS["DIN"]
    try:
        importlib.reload(importlib.import_module("recsys.models.din"))
        assert MODELS["DIN"] is not original and MODELS["DIN"].__qualname__ == "DIN"
    finally:
        MODELS["DIN"] = original
        sys.modules["recsys.models.din"].DIN = original


def test_models_import_only_the_kernels_public_dispatchers():
    """models/ may use recsys.kernels.<op> (the dispatchers), never the reference or Triton
    internals behind them."""
    import ast
    from pathlib import Path
    root = Path(recsys.models.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recsys.kernels."):
                if node.module.split(".")[2] in ("reference", "triton", "validation"):
                    offenders.append(f"{path.relative_to(root)}: {node.module}")
    assert offenders == []
