"""Weight-only ranking vs activation detection: every planted architecture and both built-in models.

    python scripts/results_weights_only.py            # writes the block in docs/scale.md
    python scripts/results_weights_only.py --no-docs  # prints it only

For each model, activation detection (``find_super_weights``, the judge) gives the confirmed super
weights; the weight-only list (``weight_scan``, no forward pass) is then asked where it ranks each of
them, and what share of its top k they make up (precision at k).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the planted tiny models

START, END = "<!-- results:weights-only:start -->", "<!-- results:weights-only:end -->"


def planted_rows() -> list[list]:
    from tiny import CONFIGS, PROBE, PROMPTS, Plant, planted

    from superweight.detect.detection import find_super_weights
    from superweight.detect.result import DetectionConfig
    from superweight.detect.weights_only import compare_with_scan, weight_scan

    rows = []
    for cls in CONFIGS:
        if "Moe" in cls or "Mixtral" in cls:
            rows.append([cls, "-", "-", "-", "mixture of experts: not scored"])
            continue
        model, tok = planted(cls, Plant(layer=2, row=9, col=40))
        scan = find_super_weights(model, tok, PROMPTS, DetectionConfig(probe_text=PROBE, min_loss_increase=0.05))
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            try:
                result = weight_scan(folder, top_k=50)
            except Exception as exc:  # MoE: not scored
                rows.append([cls, len(scan.super_weights), "-", "-", f"not scored ({type(exc).__name__})"])
                continue
        check = compare_with_scan(result, scan.super_weights)
        rows.append([cls, len(scan.super_weights), ", ".join(str(r["rank"]) for r in check.ranks),
                     f"{check.precision_at[1]:.2f}", ""])  # fmt: skip
    return rows


def builtin_rows() -> list[list]:
    from superweight.detect.detection import find_super_weights
    from superweight.detect.weights_only import compare_with_scan, weight_scan
    from superweight.model.loading import load_model

    rows = []
    for alias in ("smollm2-135m", "gemma3-270m"):
        lm = load_model(alias)
        scan = find_super_weights(lm.model, lm.tokenizer, model_name=alias)
        del lm
        result = weight_scan(alias, top_k=200)
        check = compare_with_scan(result, scan.super_weights, ks=(1, 3, 10, 50))
        ranks = ", ".join(f"L{r['layer']} [{r['row']}, {r['col']}]: {r['rank'] or '>200'}" for r in check.ranks)
        top = result.candidates[0]
        rows.append([alias, len(scan.super_weights), ranks or "none confirmed",
                     " / ".join(f"{check.precision_at[k]:.2f}" for k in (1, 3, 10, 50)),
                     f"top: L{top.layer} [{top.row}, {top.col}], {result.timings['scan_s']:.0f} s"])  # fmt: skip
    return rows


def block(planted: list[list], builtin: list[list]) -> str:
    lines = ["| planted architecture | confirmed (activations) | rank in weight-only list | P@1 | note |",
             "|---|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in planted]
    lines += ["", "| built-in model (Q4_1 GGUF) | confirmed | rank of each | P@1 / P@3 / P@10 / P@50 | note |",
              "|---|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in builtin]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--planted-only", action="store_true")
    args = parser.parse_args()
    from superweight.progress import set_quiet

    set_quiet(True)
    text = block(planted_rows(), [] if args.planted_only else builtin_rows())
    print(text)
    if not args.no_docs:
        from superweight.io import atomic_write_text

        doc = REPO / "docs" / "scale.md"
        head, _, rest = doc.read_text().partition(START)
        _, _, tail = rest.partition(END)
        atomic_write_text(doc, f"{head}{START}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
