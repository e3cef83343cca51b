"""A checkpoint of a few hundred MB, scanned streamed in a subprocess under a memory cap.

The child caps its own address space (``RLIMIT_AS``: what it has mapped after its imports plus a
margin; thread pools and allocator arenas reserve address space too, so the cap is loose) and reports
its peak RSS (``VmHWM``), which is the bound asserted. The plants must be found
exactly, and the RSS growth over a warmed-up process (imports, tokenizer, one empty model built and
dropped) must stay well under the size of the model at the compute dtype: the streamed scan never
holds the model, only the embeddings and one layer at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from superweight.model.synthetic import Planted, Shape, write_planted

SHAPE = Shape(hidden=1024, intermediate=2816, layers=8, heads=8, vocab=8000)
PLANTS = [Planted(2, 100, 2000), Planted(5, 7, 33)]

CHILD = r"""
import json, resource, sys

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

import torch, transformers, accelerate, safetensors  # noqa: E401 - the imports are the baseline
from superweight.detect.strategy import scan_with_strategy
from superweight.detect.result import DetectionConfig
from superweight.detect import streamed, detection  # noqa: F401

path, margin, prompts, probe = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
import gc
warm = streamed.StreamedModel(path)  # imports the model code and tokenizer, reads the embeddings
del warm
gc.collect()
before = status("VmRSS:")
cap = status("VmSize:") + margin
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
result = scan_with_strategy(path, "stream", prompts, DetectionConfig(probe_text=probe, max_iterations=4))
print(json.dumps({"found": sorted([w.layer, w.row, w.col] for w in result.super_weights),
                  "before": before, "peak": status("VmHWM:"), "cap": cap}))
"""


@pytest.mark.slow
def test_streamed_scan_stays_under_a_memory_bound(tmp_path):
    model = write_planted(tmp_path, SHAPE, PLANTS)
    fp32_bytes = SHAPE.parameters() * 4
    assert model.bytes_written > 200e6
    margin = fp32_bytes + 512 * 2**20
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(margin), json.dumps(model.prompts()), model.probe()],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["found"] == sorted([p.layer, p.row, p.col] for p in PLANTS)
    growth = out["peak"] - out["before"]
    assert growth < 0.5 * fp32_bytes, f"peak RSS grew by {growth / 1e6:.0f} MB for a {fp32_bytes / 1e6:.0f} MB model"
