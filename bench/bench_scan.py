"""How long `superweight scan` takes on the built-in default model, against a bare load + the same forwards.

Targets: the whole scan, load included, within 60 s on a 2-core CPU (issue 2), and within 1.2x of a
bare load plus one plain forward pass per pass the scan needs (issue 10): the scan's JSON timings say
how many (``prompt_passes`` on the short scan prompts, ``probe_passes`` on the batch of probe
windows), and the baseline runs exactly those, on the same shapes, in a fresh process of its own.
Run:  python bench/bench_scan.py [MODEL] [REPEAT]   (interleaved runs, the fastest of each is compared)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

BARE = """
import resource, sys, torch
from superweight import load_model
from superweight.detect.probe import probe_windows
from superweight.detect.result import DEFAULT_PROMPTS, DetectionConfig
spec, prompt_passes, probe_passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lm = load_model(spec)
cfg = DetectionConfig()
prompts = [lm.tokenizer(p, return_tensors="pt").input_ids for p in DEFAULT_PROMPTS]
probe = probe_windows(lm.tokenizer, None, lm.model, cfg.probe_windows, cfg.probe_tokens)
with torch.no_grad():
    for i in range(prompt_passes):
        lm.model(prompts[i % len(prompts)])
    for _ in range(probe_passes):
        lm.model(input_ids=probe.ids, use_cache=False)
print(f"RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


# runs a module as `python -m` would, then reports its own peak RSS on stderr
RSS = (
    "import resource, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    print(f'RSS_KIB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
)


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the child (from its own report), and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    kib = [int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("RSS_KIB=")]
    return seconds, (kib[-1] / 1024 if kib else float("nan")), proc.stdout


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    scan = [sys.executable, "-c", RSS, "superweight.cli.main", "scan", spec, "--json", "-q"]
    subprocess.run(scan, check=True, capture_output=True)  # warms the dequantization cache, as any second run has
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    scans, bares = [], []
    for _ in range(repeat):  # interleaved, best of each: a busy machine slows whichever runs at a bad moment
        scans.append(timed(scan))
        t = json.loads(scans[-1][2])["timings"]
        bares.append(timed([sys.executable, "-c", BARE, spec, str(t["prompt_passes"]), str(t["probe_passes"])]))
    scan_s, scan_rss, out = min(scans)
    base_s, base_rss, _ = min(bares)
    t = json.loads(out)["timings"]
    print(
        f"{spec}: {t['forward_passes']} forward passes "
        f"({t['prompt_passes']} on prompts, {t['probe_passes']} on the probe)"
    )
    print(f"{'step':<40} {'seconds':>8} {'ratio':>7} {'peak RSS MiB':>13}")
    print(f"{'bare load + the same forwards (baseline)':<40} {base_s:8.1f} {1.0:7.2f} {base_rss:13.0f}")
    print(f"{'superweight scan, whole process':<40} {scan_s:8.1f} {scan_s / base_s:7.2f} {scan_rss:13.0f}")
    print(f"{'  of which load':<40} {t['load_s']:8.1f}")
    print(f"{'  of which detection':<40} {t['detect_s']:8.1f}")
    print(f"target: scan <= 1.2x baseline: {'met' if scan_s <= 1.2 * base_s else 'NOT met'}")
    print(f"target: whole scan <= 60 s: {'met' if scan_s <= 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
