"""How long `superweight scan` takes on the built-in default model, against a bare load + forward.

Target (issue 2): the whole scan, load included, within 60 s on a 2-core CPU.
Run:  python bench/bench_scan.py [MODEL]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def bare(spec: str) -> float:
    """Baseline: load the model and run one forward pass per default prompt, nothing else."""
    code = (
        "import torch, time\n"
        "from superweight import load_model\n"
        "from superweight.detect.detection import DEFAULT_PROMPTS\n"
        f"lm = load_model({spec!r})\n"
        "with torch.no_grad():\n"
        "    for p in DEFAULT_PROMPTS: lm.model(lm.tokenizer(p, return_tensors='pt').input_ids)\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    subprocess.run([sys.executable, "-m", "superweight.cli.main", "scan", spec, "-q"], check=True, capture_output=True)
    start = time.perf_counter()  # (the run above warmed the dequantization cache, as any second run has it)
    proc = subprocess.run(
        [sys.executable, "-m", "superweight.cli.main", "scan", spec, "--json", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    scan_s = time.perf_counter() - start
    timings = json.loads(proc.stdout)["timings"]
    base_s = bare(spec)
    print(f"{'step':<34} {'seconds':>8} {'ratio':>7}")
    print(f"{'bare load + forward (baseline)':<34} {base_s:8.1f} {1.0:7.2f}")
    print(f"{'superweight scan, whole process':<34} {scan_s:8.1f} {scan_s / base_s:7.2f}")
    print(f"{'  of which load':<34} {timings['load_s']:8.1f}")
    print(f"{'  of which detection':<34} {timings['detect_s']:8.1f}")
    print(f"target: whole scan <= 60 s: {'met' if scan_s <= 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
