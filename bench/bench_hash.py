"""Hashing throughput of `fingerprint` against plain hashlib over the same files, and the fast path's time.

Run: ``python bench/bench_hash.py [MODEL ...]`` (default: the default model's GGUF file and, when it
exists, its dequantized safetensors cache). Best of ``--repeat`` runs; ratios are against hashlib
SHA-256 over the raw file bytes, measured in the same run on the same (page-cached) files.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def raw_sha(files: list[Path]) -> None:
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while data := fh.read(8 << 20):
                h.update(data)


def default_models() -> list[str]:
    from superweight.model.loading import gguf_cache_dir
    from superweight.model.spec import ALIASES, DEFAULT_MODEL, alias_file

    models = [DEFAULT_MODEL]
    if DEFAULT_MODEL in ALIASES:
        cached = gguf_cache_dir(alias_file(DEFAULT_MODEL), "float32")
        if (cached / "model.safetensors").is_file():
            models.append(str(cached))
    return models


def fast_manifest(mf):
    """A manifest holding one super-weight-like entry: the largest |w| of the first down-projection."""
    import numpy as np

    from superweight.guard.diff import read_tensor
    from superweight.guard.fingerprint import build_manifest, read_element
    from superweight.guard.manifest import SuperWeightEntry

    span = next(s for s in mf.spans if "down" in s.name)
    w = read_tensor(span)
    idx = tuple(int(i) for i in np.unravel_index(int(np.abs(w).argmax()), w.shape))
    e = read_element(span, idx)
    entry = SuperWeightEntry(layer=0, module=span.name, row=idx[0], col=idx[-1], expert=None, param=span.name,
                             index=list(idx), value=e["file_value"], memory_dtype=e["dtype"], memory_bits=e["bits"],
                             **e)  # fmt: skip
    return build_manifest(spec=mf.spec, records=[], mf=mf, super_weights=[entry])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from superweight.guard.hashing import hash_files
    from superweight.guard.verify import check_super_weight_bytes
    from superweight.model.files import resolve_model_files

    print(f"{'model':<34} {'MB':>7} {'variant':<38} {'GB/s':>6} {'x hashlib':>9}")
    for spec in args.models or default_models():
        mf = resolve_model_files(spec)
        size = sum(f.stat().st_size for f in mf.files)
        raw_sha(mf.files)  # warm the page cache
        base = best(lambda mf=mf: raw_sha(mf.files), args.repeat)
        name = Path(spec).name[:34]
        print(
            f"{name:<34} {size / 1e6:7.0f} {'hashlib sha256 over the raw files':<38} {size / base / 1e9:6.2f} {1:9.2f}"
        )
        variants = [
            ("per-tensor sha256", dict(extras=False, file_hashes=False)),
            ("+ locator and NaN/Inf count", dict(extras=True, file_hashes=False)),
            ("+ whole-file hashes (fingerprint)", dict(extras=True, file_hashes=True)),
        ]
        for label, kw in variants:
            t = best(lambda mf=mf, kw=kw: hash_files(mf, progress=False, **kw), args.repeat)
            print(f"{'':<34} {'':>7} {label:<38} {size / t / 1e9:6.2f} {base / t:9.2f}")
        manifest = fast_manifest(mf)
        files = {p.name: p for p in mf.files}
        t = best(lambda m=manifest, f=files: check_super_weight_bytes(m, f), max(args.repeat, 20))
        print(f"{'':<34} {'':>7} {'fast path: 1 super weight + its row':<38} {t * 1e6:5.0f} µs  "
              f"({base / t:,.0f}x faster than hashing the files)")  # fmt: skip


if __name__ == "__main__":
    main()
