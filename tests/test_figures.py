"""Figures checked for their content: axis labels, data drawn, and marks where the results put them.

The scan figures are drawn from a real SmolLM2 scan; the other commands' figures from payloads in
the JSON schemas of their issues, checking that what is drawn is exactly what the payload says.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from superweight.measure.ablation import (
    AblationResult,
    ConditionResult,
    ScalePoint,
    ScalingResult,
    TokenShift,
)
from superweight.measure.runner import Provenance
from superweight.quant.result import Baseline, QuantizationResult, QuantPlan, Variant
from superweight.report.figures import draw_all, render
from superweight.report.guard import attack_damage
from superweight.report.measure import ablate_metrics, ablate_super_activation, ablate_token_shift, scale_curve
from superweight.report.pages import PAGE_MODULES, page_for
from superweight.report.quant import quantize_activation, quantize_block_size, quantize_pareto
from superweight.report.scan import max_activations as scan_max_activations
from superweight.report.scan import residual as scan_residual
from superweight.report.scan import row_heatmap as scan_row_heatmap
from superweight.report.style import CANDIDATE_GID, MARK_GID, MissingData, marked_layers


@pytest.fixture(scope="module")
def scan_payload(smollm2_scan):
    """What `superweight scan` writes, read back the way the report reads it (rows included)."""
    from superweight.detect.result import ScanResult

    return ScanResult.from_dict(json.loads(json.dumps(smollm2_scan.to_dict())))


def _data_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() is None]


def test_scan_maxima_marks_the_detected_layer(scan_payload, smollm2_scan):
    fig = scan_max_activations(scan_payload)
    layer = smollm2_scan.super_weights[0].layer
    top, bottom = fig.axes
    assert top.get_ylabel() == "max |input|"
    assert bottom.get_ylabel() == "max |output|"
    assert bottom.get_xlabel() == "layer"
    assert "smollm2-135m" in top.get_title()
    assert marked_layers(fig) == [[layer], [layer]]
    for ax, key in ((top, "max_input"), (bottom, "max_output")):
        (line,) = _data_lines(ax)
        ys = np.asarray(line.get_ydata())
        assert np.allclose(ys, [abs(s.max_input if key == "max_input" else s.max_output) for s in smollm2_scan.layers])
        # the mark sits on the spike: the detected layer is where the drawn maximum is
        assert int(np.asarray(line.get_xdata())[ys.argmax()]) == layer
    candidates = {sw.layer for sw in smollm2_scan.unconfirmed} - {sw.layer for sw in smollm2_scan.super_weights}
    drawn = {line.get_xdata()[0] for line in top.get_lines() if line.get_gid() == CANDIDATE_GID}
    assert drawn == candidates


def test_scan_residual_draws_the_super_activation(scan_payload, smollm2_scan):
    fig = scan_residual(scan_payload)
    (ax,) = fig.axes
    act = smollm2_scan.super_activations[0]
    assert ax.get_xlabel().startswith("layer")
    assert ax.get_ylabel() == "|residual[channel]|"
    assert ax.get_yscale() == "log"  # it spans orders of magnitude on SmolLM2
    (line,) = _data_lines(ax)
    assert np.allclose(line.get_ydata(), np.abs(act.residual))
    assert f"channel {act.channel}" in line.get_label()
    assert marked_layers(fig) == [[smollm2_scan.super_weights[0].layer]]


def test_row_heatmap_shows_the_model_row_and_circles_the_super_weight(scan_payload, smollm2, smollm2_scan):
    from superweight.model.interventions import refs_for

    sw = smollm2_scan.super_weights[0]
    ref = refs_for(smollm2.model, [sw])[0]
    fig = scan_row_heatmap(scan_payload)
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    row = ref.site.weight[sw.row].detach().float().numpy()
    labels = [r.label for r in scan_payload.rows]
    index = next(i for i, label in enumerate(labels) if f"layer {sw.layer} row {sw.row}" in label)
    assert np.allclose(image[index], np.maximum(np.abs(row), image.min()), rtol=1e-4)
    circles = [
        (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_gid() == "marked-column"
    ]
    assert (sw.col, index) in circles
    assert ax.get_xlabel() == "column (intermediate channel)"
    assert fig.axes[1].get_ylabel() == "|weight| (log scale)"  # the colour bar


def test_scan_without_rows_skips_only_the_heat_map(scan_payload):
    payload = replace(scan_payload, rows=[])
    drawn = {d.spec.name: d for d in draw_all(page_for("scan"), payload)}
    assert drawn["scan_row_heatmap"].figure is None
    assert "no row to draw" in drawn["scan_row_heatmap"].skipped
    assert drawn["scan_max_activations"].figure is not None
    assert drawn["scan_residual"].figure is not None


def test_rendered_files_carry_the_figure(scan_payload):
    fig = scan_max_activations(scan_payload)
    png = render(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = render(fig, "svg").decode()
    assert "max |input|" in svg and "super weight (layer" in svg  # text stays text (svg.fonttype none)
    # deterministic: the same payload gives the same file (ids are salted, the date is left out)
    assert render(scan_max_activations(scan_payload), "svg") == render(scan_max_activations(scan_payload), "svg")


PROVENANCE = Provenance({}, {}, {}, {}, [], {}, 0.0)


def ablation(conditions: list[ConditionResult], shift: list[TokenShift] = ()) -> AblationResult:
    return AblationResult("m", "LlamaForCausalLM", [], [], conditions, 0.7, "nll:wikitext2", 7000, "down_proj",
                          PROVENANCE, token_shift=list(shift))  # fmt: skip


ABLATE = ablation(
    [
        ConditionResult("original", 0, {"wikitext2": 24.3}, {"piqa": 0.62, "arc_easy": 0.5}, {}, 2300.0),
        ConditionResult("no-sw", 1, {"wikitext2": 3.1e3}, {"piqa": 0.51, "arc_easy": 0.3}, {}, 41.0),
        ConditionResult("no-sw+sa", 1, {"wikitext2": 60.0}, {"piqa": 0.58, "arc_easy": 0.45}, {}, 2300.0),
    ],
    [TokenShift(13, ".", 0.01, 0.09, 9.0), TokenShift(262, " the", 0.02, 0.07, 3.5)],
)


def test_ablate_bars_are_the_payload_numbers():
    fig = ablate_metrics(ABLATE)
    ppl_ax, acc_ax = fig.axes
    assert ppl_ax.get_yscale() == "log"
    assert ppl_ax.get_ylabel().startswith("perplexity")
    assert acc_ax.get_ylabel().startswith("accuracy")
    assert [t.get_text() for t in ppl_ax.get_xticklabels()] == ["original", "no-sw", "no-sw+sa"]
    assert [p.get_height() for p in ppl_ax.patches] == [24.3, 3.1e3, 60.0]
    # grouped: piqa bars for the 3 conditions, then arc_easy
    assert [p.get_height() for p in acc_ax.patches] == [0.62, 0.51, 0.58, 0.5, 0.3, 0.45]
    shift = ablate_token_shift(ABLATE).axes[0]
    ticks = {t.get_text(): y for t, y in zip(shift.get_yticklabels(), shift.get_yticks(), strict=True)}
    assert ticks["'.'"] > ticks["' the'"]  # listed first (largest gain) means drawn on top
    assert [p.get_width() for p in shift.patches] == [0.01, 0.02, 0.09, 0.07]
    sa = ablate_super_activation(ABLATE)
    assert [p.get_height() for p in sa.axes[0].patches] == [2300.0, 41.0, 2300.0]
    assert sa.axes[0].get_yscale() == "linear"  # 2300 / 41 < 100


def test_scale_curve_marks_the_best_alpha():
    points = [
        ScalePoint(a, {"wikitext2": 20 + (a - 1.5) ** 2}, {}, {}, 20 + (a - 1.5) ** 2) for a in (0, 0.5, 1, 1.5, 2, 3)
    ]
    result = ScalingResult("m", "LlamaForCausalLM", [], "perplexity:wikitext2", points, 1.5, 20.0, 20.25,
                           20.25 / 20 - 1, "relative perplexity reduction over alpha=1", PROVENANCE)  # fmt: skip
    fig = scale_curve(result)
    ax = fig.axes[0]
    best = [line for line in ax.get_lines() if line.get_gid() == "best-alpha"]
    assert len(best) == 1 and best[0].get_xdata()[0] == 1.5
    (curve,) = [line for line in ax.get_lines() if line.get_label() == "wikitext2"]
    assert list(curve.get_xdata()) == [0, 0.5, 1, 1.5, 2, 3]
    assert ax.get_xlabel().startswith("alpha")


def quantization(variants: list[Variant]) -> QuantizationResult:
    return QuantizationResult("m", "x", QuantPlan(), Baseline({"wikitext2": 24.3}), variants, "wikitext2", 0, [], [],
                              {}, PROVENANCE)  # fmt: skip


QUANT = quantization([
    Variant(m, 4, b, bpw, {"wikitext2": p})
    for m, b, p, bpw in [
        ("naive", "128", 42.8, 4.25), ("naive", "channel", 75.8, 4.02), ("naive", "tensor", 4.3e6, 4.0),
        ("sparse:0.005", "channel", 49.2, 4.2), ("sparse:0.005", "tensor", 69.8, 4.18),
        ("naive", "512", 50.0, 4.06),
    ]
] + [
    Variant(f"w8a8:{m}", 8, "tensor", 8.0, {"wikitext2": p}, activation={})
    for m, p in (("naive", 31.1), ("sa", 30.6), ("smoothquant", 34.1))
])  # fmt: skip


def test_quantize_block_size_orders_blocks_and_uses_log_scale():
    fig = quantize_block_size(QUANT)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "512", "channel", "tensor"]
    naive = next(line for line in ax.get_lines() if line.get_label() == "naive (4-bit)")
    assert list(naive.get_ydata()) == [42.8, 50.0, 75.8, 4.3e6]
    assert ax.get_xlabel().startswith("block size")


def test_quantize_pareto_front_is_the_non_dominated_points():
    fig = quantize_pareto(QUANT)
    ax = fig.axes[0]
    (front,) = [line for line in ax.get_lines() if line.get_gid() == "pareto-front"]
    points = [(r.bits_per_weight, r.perplexity["wikitext2"]) for r in QUANT.weight_only()]
    expected = sorted(
        (x, y) for x, y in points if not any((x2 <= x and y2 < y) or (x2 < x and y2 <= y) for x2, y2 in points)
    )
    assert list(zip(front.get_xdata(), front.get_ydata(), strict=True)) == expected
    assert ax.get_xlabel().startswith("bits per weight")
    assert sorted(t.get_text() for t in ax.get_legend().get_texts())[:3] == ["Pareto front", "naive", "sparse:0.005"]


def test_w8a8_rows_get_their_own_figure():
    fig = quantize_activation(QUANT)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["naive", "sa", "smoothquant"]
    assert [p.get_height() for p in ax.patches] == [31.1, 30.6, 34.1]
    (base,) = [line for line in ax.get_lines() if "unquantized" in line.get_label()]
    assert base.get_ydata()[0] == 24.3
    with pytest.raises(MissingData, match="W8A8"):
        quantize_activation(quantization([r for r in QUANT.variants if r.bits == 4]))


def test_attack_bars_are_coloured_by_the_checks_that_caught_them():
    from superweight.guard.attacks import AttackReport, AttackResult, AttackSpec

    def row(attack, ratio, caught):
        spec = AttackSpec("zero", "sw")
        return AttackResult(attack, spec, 1, 24.0 * ratio, ratio, [], False, caught, True, 0.0)

    payload = AttackReport("m", 512, 24.0, [], [], [
        row("flip exponent bit of 1 sw weight", 900.0, {"hash": True, "fast": True, "canary": True}),
        row("flip mantissa bit of 1000 random weights", 1.01, {"hash": True, "fast": False, "canary": False}),
        row("zero 1 random weight", 1.0, {"hash": False, "fast": False, "canary": False}),
    ])  # fmt: skip
    fig = attack_damage(payload)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [900.0, 1.01, 1.0]
    assert [b.get_gid() for b in bars] == ["caught by hash, fast, canary", "caught by hash", "not caught"]
    assert bars[0].get_facecolor() != bars[1].get_facecolor()
    assert bars[2].get_facecolor()[:3] == pytest.approx((0.6, 0.6, 0.6), abs=0.01)  # grey: not caught
    assert ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["caught by hash", "caught by hash, fast, canary", "not caught"]


@pytest.mark.parametrize("command", ["attack", "diff", "verify", "fingerprint"])
@pytest.mark.parametrize(
    "payload",
    [{}, {"layers": "nonsense", "super_weights": 3}, {"conditions": [{"name": "x"}], "results": [1, 2]}],
)
def test_missing_or_malformed_data_skips_with_a_reason(command, payload):
    for drawn in draw_all(page_for(command), payload):
        assert drawn.figure is None
        assert drawn.skipped and len(drawn.skipped.splitlines()) == 1


@pytest.mark.parametrize(
    "command", ["scan", "ablate", "scale", "quantize", "compare", "attack", "diff", "verify", "fingerprint"]
)
@pytest.mark.parametrize("doc", [{}, {"layers": "nonsense", "super_weights": 3}, {"conditions": [{"name": "x"}]}])
def test_a_malformed_typed_result_is_one_clear_error(command, doc):
    from superweight.errors import ResultFileError
    from superweight.report.pages import read_result

    with pytest.raises(ResultFileError, match=f"not a valid {command} result|not a superweight scan result"):
        read_result(page_for(command), {"command": command, **doc})


def test_absent_data_skips_only_that_figure():
    bare = ablation([ConditionResult("original", 0, {"wikitext2": 24.0}, {}, {}, None)])
    drawn = {d.spec.name: d for d in draw_all(page_for("ablate"), bare)}
    assert drawn["ablate_metrics"].figure is not None
    assert (
        drawn["ablate_super_activation"].figure is None
        and "no super activation" in drawn["ablate_super_activation"].skipped
    )
    assert drawn["ablate_token_shift"].figure is None


def test_non_finite_numbers_from_json_do_not_break_figures():
    from superweight.io import from_json, to_json

    result = ablation([
        ConditionResult("original", 0, {"wikitext2": 24.0}, {}, {}),
        ConditionResult("no-sw", 1, {"wikitext2": math.inf}, {}, {}),  # io.to_json writes inf as "inf"
    ])  # fmt: skip
    assert '"inf"' in to_json(result.to_dict())
    fig = ablate_metrics(AblationResult.from_dict(from_json(to_json(result.to_dict()))))
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[0] == 24.0 and math.isnan(heights[1])  # no bar ...
    assert [t.get_text() for t in fig.axes[0].texts] == ["∞"]  # ... but a mark that says why
    assert render(fig, "png")[:4] == b"\x89PNG"


def test_every_command_has_a_page():
    from superweight.cli.main import COMMANDS

    pages = {c.split("-")[0] for c in PAGE_MODULES}  # a command may have several pages (study-recovery, ...)
    assert {c for c in COMMANDS if c != "report"} <= pages
    for command in PAGE_MODULES:
        assert page_for(command).command == command


def test_marked_layers_reads_only_marks(scan_payload):
    from superweight.report.style import mark_layers, new_figure, style

    with style():
        fig = new_figure()
        ax = fig.subplots()
        ax.plot([0, 1, 2], [1, 5, 1])
        ax.axvline(2)  # not a mark
        mark_layers(ax, [1])
    assert marked_layers(fig) == [[1]]
    assert [line.get_gid() for line in ax.get_lines()].count(MARK_GID) == 1
    with pytest.raises(MissingData):
        scan_max_activations(replace(scan_payload, layers=[]))
