"""Scans at real sizes: Llama-2-7B- and 13B-shaped checkpoints with planted super weights, four ways.

    python bench/bench_big.py                       # 7b and 13b, table into docs/scale.md
    python bench/bench_big.py --sizes 7b --no-docs  # one size, print only

Each checkpoint is written shard by shard (one layer at a time, never the whole model) into a
temporary folder that is deleted afterwards, even on failure or SIGTERM. Then, each in its own
subprocess (so that peak RSS is that method's alone, read from /proc/self/status VmHWM):

* ``memory``: ``from_pretrained`` (bf16) + the in-memory scan; 7B only, and skipped when less than
  18 GB is available (the machine is shared);
* ``offload``: accelerate disk offload (``device_map=auto``, ``max_memory cpu=1GiB``, bf16), the same
  in-memory scan code running on the dispatched model (down-projections kept resident);
* ``stream``: the layer-streamed scan (fp32 compute, one layer at a time);
* ``weights``: the weight-only ranking (no forward pass), and a plain sequential read of the same
  tensors' bytes as the disk-speed baseline.

The table gives wall time, peak RSS, both as ratios to ``stream`` measured in the same run, and
whether exactly the planted coordinates were found (weights-only: the planted coordinates are the
top of the list). No GPU timing: this machine has none.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "7b": ("LLAMA2_7B", [(2, 3968, 7003), (4, 1024, 300)], [(6, 77, 5000)]),
    "13b": ("LLAMA2_13B", [(3, 2000, 4000), (5, 100, 13000)], [(8, 5000, 12)]),
    "small": ((512, 1376, 8, 8), [(2, 300, 1000), (4, 10, 20)], [(6, 5, 50)]),  # a quick check of the bench itself
}
STRATEGIES = ("memory", "offload", "stream", "weights")
MEMORY_NEEDS = 18 * 10**9


def available() -> int:
    from superweight.detect.strategy import available_bytes

    return available_bytes() or 0


# ------------------------------------------------------------------------------------- child mode


def measure(strategy: str, path: Path) -> dict:
    """Run one method on the checkpoint at ``path`` in this process; return what it found and its cost."""
    from superweight.detect.result import DetectionConfig
    from superweight.model.placement import peak_rss_bytes
    from superweight.progress import set_quiet

    set_quiet(True)
    info = json.loads((path / "plants.json").read_text())
    plants = sorted(tuple(p) for p in info["plants"])
    cfg = DetectionConfig(probe_text=info["probe"], max_iterations=3)
    start = time.perf_counter()
    extra: dict = {}
    if strategy == "weights":
        from superweight.detect.weights_only import weight_scan

        result = weight_scan(str(path), top_k=50)
        found = sorted((c.layer, c.row, c.col) for c in result.candidates[: len(plants)])
        extra = {"bytes_read": result.bytes_read, "decoy_rank": _rank(result, info["decoys"])}
    elif strategy == "read":
        extra = {"bytes_read": _raw_read(path)}
        found = plants
    else:
        from superweight.detect.strategy import scan_with_strategy

        kwargs = {"dtype": "float32" if strategy == "stream" else "bfloat16"}
        if strategy == "offload":
            kwargs.update(max_memory="cpu=1GiB", offload_folder=str(path / "offload"))
        result = scan_with_strategy(str(path), strategy, info["prompts"][:1], cfg, **kwargs)
        found = sorted((w.layer, w.row, w.col) for w in result.super_weights)
        extra = {"layer_reads": result.source.get("layer_reads"), "placement": result.source["placement"]["layers"][:3]}
    wall = time.perf_counter() - start
    return {"strategy": strategy, "wall_s": wall, "peak_rss": peak_rss_bytes(), "found": found,
            "exact": found == plants, **extra}  # fmt: skip


def _rank(result, decoys) -> list:
    return [result.rank_of(f"model.layers.{d[0]}.mlp.down_proj", d[1], d[2]) for d in decoys]


def _raw_read(path: Path) -> int:
    """Read the bytes of every MLP tensor the weight-only score reads, sequentially: the disk's speed."""
    from superweight.model.files import resolve_model_files

    total = 0
    for span in resolve_model_files(str(path)).spans:
        if ".mlp." in span.name or "layernorm" in span.name:
            with open(span.path, "rb") as fh:
                fh.seek(span.offset)
                left = span.nbytes
                while left:
                    chunk = fh.read(min(left, 64 << 20))
                    left -= len(chunk)
                    total += len(chunk)
    return total


# ------------------------------------------------------------------------------------ parent mode


DEADLINE = [float("inf")]  # time.time() by which every measurement must have ended


def run_child(strategy: str, path: Path, timeout: int, log) -> dict:
    timeout = int(min(timeout, DEADLINE[0] - time.time()))
    if timeout < 30:
        return {"strategy": strategy, "error": "not run: out of time before the deadline"}
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--measure", strategy, str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"strategy": strategy, "error": f"timed out after {timeout} s"}
    outer = time.perf_counter() - start
    log.write(f"--- {strategy} rc={proc.returncode}\n{proc.stderr[-3000:]}\n")
    log.flush()
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"strategy": strategy, "error": f"failed: {last[:120]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = outer
    return out


def bench_size(size: str, root: Path, timeout: int, log) -> list[dict]:
    from superweight.model import synthetic

    shape_name, plants, decoys = SIZES[size]
    shape = synthetic.Shape(*shape_name) if isinstance(shape_name, tuple) else getattr(synthetic, shape_name)
    path = root / size
    start = time.perf_counter()
    model = synthetic.write_planted(
        path, shape, [synthetic.Planted(*p) for p in plants], [synthetic.Planted(*d) for d in decoys]
    )
    write_s = time.perf_counter() - start
    info = {"plants": plants, "decoys": decoys, "prompts": model.prompts(), "probe": model.probe()}
    (path / "plants.json").write_text(json.dumps(info))
    log.write(f"=== {size}: wrote {model.bytes_written / 1e9:.1f} GB in {write_s:.0f} s\n")
    log.flush()
    rows = []
    for strategy in ("stream", "weights", "read", "memory", "offload"):
        if strategy == "memory" and size != "7b":
            continue
        if strategy == "memory" and available() < MEMORY_NEEDS:
            rows.append({"strategy": strategy, "error": f"SKIP: {available() / 1e9:.1f} GB available < 18 GB"})
            continue
        row = run_child(strategy, path, timeout, log)
        log.write(f"{size} {json.dumps(row)}\n")
        log.flush()
        rows.append(row)
    for row in rows:
        row.update(size=size, gb=model.bytes_written / 1e9, params=shape.parameters())
    shutil.rmtree(path, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | method | wall s | peak RSS GiB | time vs stream | RSS vs stream | exactly the plants | notes |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    names = {"memory": "from_pretrained + in-memory scan", "offload": "accelerate disk offload + scan",
             "stream": "layer-streamed scan", "weights": "weights only", "read": "plain read, same bytes"}  # fmt: skip
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        base = next((r for r in group if r["strategy"] == "stream" and "error" not in r), None)
        for r in group:
            label = f"{size.upper()}-shaped ({r['params'] / 1e9:.1f} B params, {r['gb']:.1f} GB bf16)"
            if "error" in r:
                lines.append(f"| {label} | {names[r['strategy']]} | - | - | - | - | - | {r['error']} |")
                continue
            gib = r["peak_rss"] / 2**30
            t_ratio = f"{r['wall_s'] / base['wall_s']:.2f}x" if base else "-"
            m_ratio = f"{r['peak_rss'] / base['peak_rss']:.2f}x" if base else "-"
            notes = []
            if r.get("bytes_read"):
                notes.append(f"read {r['bytes_read'] / 1e9:.1f} GB at {r['bytes_read'] / r['wall_s'] / 1e6:.0f} MB/s")
            if r.get("layer_reads"):
                notes.append(f"{r['layer_reads']} layer reads")
            if r.get("decoy_rank"):
                notes.append(f"decoy rank {r['decoy_rank']}")
            exact = "n/a" if r["strategy"] == "read" else ("yes" if r["exact"] else f"no: {r['found']}")
            lines.append(f"| {label} | {names[r['strategy']]} | {r['wall_s']:.0f} | {gib:.2f} | {t_ratio} | "
                         f"{m_ratio} | {exact} | {'; '.join(notes)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_docs(text: str) -> None:
    from superweight.io import atomic_write_text

    doc = REPO / "docs" / "scale.md"
    start, end = "<!-- results:scale:start -->", "<!-- results:scale:end -->"
    current = doc.read_text()
    head, _, rest = current.partition(start)
    _, _, tail = rest.partition(end)
    atomic_write_text(doc, f"{head}{start}\n{text}{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="7b,13b")
    parser.add_argument("--dir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--log", default=None, help="progress log (default: stderr)")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--minutes", type=float, default=None, help="stop starting measurements after this long")
    parser.add_argument("--measure", nargs=2, metavar=("STRATEGY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return 0
    if args.minutes is not None:
        DEADLINE[0] = time.time() + 60 * args.minutes
    root = Path(tempfile.mkdtemp(prefix="superweight-bench-", dir=args.dir))

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    log = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115
    rows: list[dict] = []
    try:
        for size in args.sizes.split(","):
            rows += bench_size(size.strip(), root, args.timeout, log)
            text = table(rows)
            log.write(text)
            log.flush()
            if not args.no_docs:
                write_docs(text)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
