"""The installed package exposes one import name, ``recsys``.

The wheel is built from this checkout and its top-level names are read from the archive;
the editable install (what the README uses) is checked from a directory outside the
checkout, where the repository's own folders are not on ``sys.path``.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

GENERIC = ("models", "kernels", "data_pipelines", "serving")


@pytest.mark.slow
def test_wheel_has_only_the_recsys_top_level_name(tmp_path):
    # build from a copy: setuptools writes build/ beside the sources, which must not race
    # with other test processes or leave files in the checkout
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("recsys", "data_pipelines", "models", "kernels", "serving"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("recsys-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"recsys"}, top
    # the fixed top-level folders arrive as subpackages, with their subpackages
    for module in ("recsys/models/din.py", "recsys/models/layers/mlp.py", "recsys/kernels/triton/common.py",
                   "recsys/data_pipelines/sources/taobao.py", "recsys/serving/__init__.py", "recsys/contract.py"):
        assert module in names, module


def test_editable_install_and_cli_import_only_recsys(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "import recsys.cli, recsys.models.din, recsys.data_pipelines.loader, recsys.kernels.din_attention\n"
        "import recsys.serving, recsys.runner\n"
        f"leaked = [m for m in {GENERIC!r} if m in sys.modules or importlib.util.find_spec(m) is not None]\n"
        "assert not leaked, leaked\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cli = subprocess.run([sys.executable, "-m", "recsys.cli", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and "quickstart" in cli.stdout, cli.stderr
