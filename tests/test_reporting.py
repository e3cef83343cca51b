"""Run folders and reports: what write_run and `superweight report` write, from a real SmolLM2 scan."""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import replace

import pytest

from superweight.cli.main import main
from superweight.errors import SuperweightError
from superweight.io import write_json
from superweight.report.html import build_report, report_html
from superweight.report.pages import page_for
from superweight.report.runs import write_run
from superweight.results import document, read_document

SCAN_FIGURES = ("scan_max_activations", "scan_residual", "scan_row_heatmap")


@pytest.fixture(scope="module")
def scan_payload(smollm2_scan):
    return smollm2_scan.to_dict()


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory, smollm2_scan):
    return write_run(tmp_path_factory.mktemp("runs") / "smollm2", "scan", smollm2_scan)


def _inline_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_run_folder_has_results_figures_and_a_self_contained_report(scan_run, scan_payload, smollm2_scan):
    results = json.loads((scan_run / "results.json").read_text())
    assert results["command"] == "scan" and results["schema_version"] >= 2
    assert results["super_weights"] == json.loads(json.dumps(scan_payload["super_weights"]))
    for name in SCAN_FIGURES:
        assert (scan_run / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (scan_run / "figures" / f"{name}.svg").read_text().startswith("<?xml")
    html = (scan_run / "report.html").read_text()
    # self-contained: every resource inline, nothing fetched, no script
    assert not re.search(r'(?:src|href)="(?!data:|#)', html)
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org", "")
    pngs = _inline_pngs(html)
    assert pngs == [(scan_run / "figures" / f"{name}.png").read_bytes() for name in SCAN_FIGURES]
    # each result explained in a sentence, with the detected numbers
    sw = smollm2_scan.super_weights[0]
    assert f"{sw.module} [row {sw.row}, column {sw.col}]" in html
    assert f"The spike at layer {sw.layer} is where the super weight" in html
    act = smollm2_scan.super_activations[0]
    assert f"hidden channel {act.channel}" in html


def test_report_rebuilds_identically_from_results_json(scan_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(scan_run, copy)
    original = (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "figures")
    assert main(["report", str(copy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "scan" and out["skipped"] == {}
    assert (copy / "report.html").read_text() == original
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(
        f"{n}.{ext}" for n in SCAN_FIGURES for ext in ("png", "svg")
    )


def test_report_out_writes_elsewhere_and_leaves_the_run_alone(scan_run, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in scan_run.rglob("*")}
    assert main(["report", str(scan_run), "--out", str(tmp_path / "elsewhere"), "-q"]) == 0
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    assert json.loads((tmp_path / "elsewhere" / "results.json").read_text())["command"] == "scan"
    assert {p: p.stat().st_mtime_ns for p in scan_run.rglob("*")} == before
    assert "report: " in capsys.readouterr().out


def test_a_figure_without_data_is_skipped_with_a_sentence_and_its_old_file_removed(scan_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scan_run, run)
    doc = read_document(run)
    doc["rows"] = []
    report = build_report(run, doc)
    assert "no row to draw" in report.skipped["scan_row_heatmap"]
    assert not (run / "figures" / "scan_row_heatmap.png").exists()
    html = (run / "report.html").read_text()
    assert "The super weight&#x27;s row” was skipped" in html or "row” was skipped" in html
    assert len(_inline_pngs(html)) == 2


def test_compare_page_puts_runs_side_by_side(scan_run, tmp_path, capsys, smollm2_scan):
    other = tmp_path / "no-super-weight"
    doc = {**read_document(scan_run), "model": "another-model", "super_weights": []}  # none found there
    write_json(other / "results.json", doc)
    out = tmp_path / "compare"
    assert main(["report", str(scan_run), str(other), "--out", str(out), "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "compare"
    first, second = (run["scan"] for run in results["runs"])
    confirmed = [(w["layer"], w["row"], w["col"]) for w in first["super_weights"] if w["confirmed"]]
    assert confirmed == [(w.layer, w.row, w.col) for w in smollm2_scan.super_weights]
    assert second["super_weights"] == []
    assert [m["super weights"] for m in results["models"]] == [len(smollm2_scan.super_weights), 0]
    html = (out / "report.html").read_text()
    assert "another-model: no super weight confirmed" in html
    sw = smollm2_scan.super_weights[0]
    assert (
        f"smollm2-135m: {len(smollm2_scan.super_weights)} super weight(s): {sw.module} [row {sw.row}, column {sw.col}]"
        in html
    )
    assert len(_inline_pngs(html)) == 1
    assert main(["report", str(scan_run), str(other), "--out", str(other)]) == 2  # never overwrite an input
    assert "is one of the compared runs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "has no results.json"),
        (lambda d: (d.mkdir(), (d / "results.json").write_text("{not json")), "is not JSON"),
        (lambda d: (d.mkdir(), (d / "results.json").write_text('{"model": "m"}')), "no 'command' field"),
        (
            lambda d: (d.mkdir(), (d / "results.json").write_text('{"command": "scan", "schema_version": 99}')),
            "newer than this superweight",
        ),
        (
            lambda d: (d.mkdir(), (d / "results.json").write_text('{"command": "scan", "model": "m"}')),
            "not a superweight scan result",
        ),
    ],
)
def test_bad_run_folders_are_one_line_errors(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    setup(run)
    if "scan result" not in message:
        with pytest.raises(SuperweightError, match=message):
            read_document(run)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("superweight report: error:") and message in err[0]


def test_write_run_keeps_results_when_the_report_fails(tmp_path, capsys, monkeypatch, smollm2_scan):
    import superweight.report.html

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(superweight.report.html, "build_report", broken)
    out = write_run(tmp_path / "run", "scan", smollm2_scan)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(document("scan", smollm2_scan)))
    err = capsys.readouterr().err
    assert "warning: results.json was written but the report was not (RuntimeError: disk full)" in err
    assert f"superweight report {out}" in err


def test_write_run_refuses_a_file(tmp_path, smollm2_scan):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SuperweightError, match="exists and is not a folder"):
        write_run(tmp_path / "file", "scan", smollm2_scan)


def test_text_from_the_payload_is_escaped(smollm2_scan):
    scan = replace(smollm2_scan, model="<script>alert(1)</script>")
    html = report_html(page_for("scan"), scan, document("scan", scan), [])
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_sentences_are_computed_from_the_numbers():
    from superweight.measure.ablation import AblationResult, ConditionResult, ScalePoint, ScalingResult
    from superweight.measure.runner import Provenance
    from superweight.quant.result import Baseline, QuantizationResult, QuantPlan, Variant
    from superweight.report.measure import ablate_summary, scale_summary
    from superweight.report.quant import quantize_summary

    prov = Provenance({}, {}, {}, {}, [], {}, 1.0)
    conditions = [
        ConditionResult("original", 0, {"wikitext2": 20.0}, {"piqa": 0.6}, {}),
        ConditionResult("no-sw", 1, {"wikitext2": 3000.0}, {"piqa": 0.5}, {}),
        ConditionResult("no-sw+sa", 1, {"wikitext2": 50.0}, {}, {}),
    ]
    ablate = AblationResult("m", "x", [], [], conditions, 0.99, "nll:wikitext2", 7000, "down_proj", prov)
    text = " ".join(ablate_summary(ablate))
    assert "from 20 to 3e+03 (150 times)" in text
    assert "brings it to 50" in text and "recovers 99% of the damage" in text
    assert "0.600 originally, 0.500 without" in text
    points = [ScalePoint(a, {"wikitext2": p}, {}, {}, p) for a, p in ((0.5, 30.0), (1.0, 20.0), (2.0, 18.0))]
    scale = ScalingResult("m", "x", [], "perplexity:wikitext2", points, 2.0, 18.0, 20.0, 20 / 18 - 1,
                          "relative perplexity reduction over alpha=1", prov)  # fmt: skip
    assert "is 18 at alpha = 2, against 20 at alpha = 1: gain +11.1%" in " ".join(scale_summary(scale))
    variants = [Variant("naive", 4, "128", 4.25, {"wikitext2": 42.8}), Variant("sw", 4, "128", 4.26, {"wikitext2": 41}),
                Variant("w8a8:sa", 8, "tensor", 8.0, {"wikitext2": 30.6}, activation={})]  # fmt: skip
    quant = QuantizationResult("m", "x", QuantPlan(), Baseline({"wikitext2": 24.3}), variants, "wikitext2", 7, [], [],
                               {}, prov)  # fmt: skip
    text = quantize_summary(quant)
    assert text[0] == "Unquantized wikitext2 perplexity: 24.3."
    assert "At 4 bits the lowest perplexity is 41: method sw, block 128, 4.26 bits per weight." in text
    assert "4-bit, block 128: naive 42.8, best other sw 41." in text
    assert text[-1] == "W8A8 (weights and activations in INT8): w8a8:sa 30.6."  # never among the weight-only rows


def test_every_command_explains_itself_with_an_example(capsys):
    """Polish: `superweight CMD --help` ends with runnable examples of CMD, and --version works."""
    from superweight.cli.main import COMMANDS, build_parser

    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text, name
        assert f"superweight {name}" in text.split("examples:", 1)[1], name
        assert text.split("\n\n")[1].strip(), name  # a description
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report"])  # RUN_DIR missing
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "--help" in err[0]
