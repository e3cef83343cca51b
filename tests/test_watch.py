"""The checkpoint watcher on tiny real checkpoints: files replaced under a running watcher, a file caught
mid-write, --once for cron with its exit codes and hook, and a folder that disappears."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import assert_one_line_error, cli
from tiny import Plant, save_planted

from superweight.guard.journal import read_records
from superweight.guard.watch import Watcher
from superweight.model.files import resolve_model_files

PLANT = Plant(layer=1, row=5, col=17)
OTHER = "model.layers.2.mlp.up_proj.weight"  # a tensor without a super weight


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny checkpoint with a planted super weight, and its manifest (file offsets, exact bytes)."""
    from superweight.coordinates import SuperWeight
    from superweight.detect.result import DetectionConfig, ScanResult
    from superweight.guard.fingerprint import fingerprint
    from superweight.guard.manifest import save_manifest

    root = tmp_path_factory.mktemp("release")
    model = save_planted(root / "model", where=PLANT)
    sw = SuperWeight(PLANT.layer, f"model.layers.{PLANT.layer}.mlp.down_proj", PLANT.row, PLANT.col, 2.0, 0, 0, [0])
    scan = ScanResult("tiny", "LlamaForCausalLM", 0, [], [sw], [], [], [], {}, 0.0, DetectionConfig())
    manifest = fingerprint(str(model), scan_result=scan, canary=False)
    assert manifest.super_weights[0].byte_offset > 0
    return model, save_manifest(manifest, root / "m.json"), manifest


def tampered_bytes(model, manifest, tensor: str | None = None) -> bytes:
    """The model file's bytes with one bit flipped: in the super weight, or in ``tensor``."""
    data = bytearray((model / "model.safetensors").read_bytes())
    if tensor is None:
        offset = manifest.super_weights[0].byte_offset + 3
    else:
        offset = resolve_model_files(str(model)).span(tensor).offset + 7
    data[offset] ^= 0x40
    return bytes(data)


def replace(path, data: bytes) -> None:
    """Replace a file the way a deployment does: write beside it, rename over it."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def wait_for(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def copy_checkpoint(model, dest):
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("tokenizer*"))
    return dest


def test_running_watcher_sees_replacements_and_waits_out_a_partial_write(release, tmp_path):
    model, _, manifest = release
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    copy_checkpoint(model, deploy / "checkpoint-1")
    log = tmp_path / "watch.jsonl"
    watcher = Watcher(deploy, manifest, interval=0.05, log=log, max_wait=60)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(watcher.verdicts) == 1)
        first = watcher.verdicts[0]
        assert first.status == "ok" and first.checks == {"fast": "pass", "hash": "pass"}

        # a second checkpoint arrives in pieces: half a file first, the rest much later
        clean = (model / "model.safetensors").read_bytes()
        (deploy / "checkpoint-2").mkdir()
        for name in ("config.json", "generation_config.json"):
            shutil.copy(model / name, deploy / "checkpoint-2" / name)
        part = deploy / "checkpoint-2" / "model.safetensors"
        part.write_bytes(clean[: len(clean) // 2])
        polls = watcher.polls
        wait_for(lambda: watcher.polls >= polls + 10)  # many polls with the partial file: no verdict
        assert len(watcher.verdicts) == 1
        with part.open("ab") as fh:
            fh.write(clean[len(clean) // 2 :])
        wait_for(lambda: len(watcher.verdicts) == 2)
        assert watcher.verdicts[1].checkpoint.endswith("checkpoint-2") and watcher.verdicts[1].status == "ok"

        # a tampered file replaces checkpoint-1's: a tensor without a super weight (the hashes catch it) ...
        replace(deploy / "checkpoint-1" / "model.safetensors", tampered_bytes(model, manifest, OTHER))
        wait_for(lambda: len(watcher.verdicts) == 3)
        v = watcher.verdicts[2]
        assert v.status == "tampered" and v.checks["fast"] == "pass" and v.checks["hash"] == "FAIL"
        assert v.changed_tensors == [OTHER]
        # ... then the super weight itself (the fast check catches it; no need to hash)
        replace(deploy / "checkpoint-1" / "model.safetensors", tampered_bytes(model, manifest))
        wait_for(lambda: len(watcher.verdicts) == 4)
        v = watcher.verdicts[3]
        assert v.status == "tampered" and v.checks["fast"] == "FAIL" and v.checks["hash"].startswith("skipped")
        assert v.changed_super_weights and "model.layers.1.mlp.down_proj[5, 17]" in v.changed_super_weights[0]
    finally:
        stop.set()
        thread.join(10)
    records = [r for r in read_records(log) if r["record"] == "verdict"]
    assert [r["status"] for r in records] == ["ok", "ok", "tampered", "tampered"]
    assert all(r["status"] != "incomplete" for r in records)


def test_stays_truncated_is_incomplete_and_another_model_is_a_mismatch(release, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, _, manifest = release
    ckpt = copy_checkpoint(model, tmp_path / "deploy" / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=256)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "deploy" / "other")
    summary = Watcher(tmp_path / "deploy", manifest, interval=0.05, max_wait=0.3).run(once=True)
    verdicts = {v.checkpoint.rsplit("/", 1)[-1]: v for v in summary.verdicts}
    assert {k: v.status for k, v in verdicts.items()} == {"ckpt": "incomplete", "other": "mismatch"}
    assert "truncated" in verdicts["ckpt"].detail and "another model" in verdicts["other"].detail
    assert not summary.ok

    busy = copy_checkpoint(model, tmp_path / "busy")  # --once on a file that grows before every poll
    watcher = Watcher(busy, manifest, interval=0.05, max_wait=0.3)
    watcher.once = True
    with (busy / "model.safetensors").open("ab") as fh:
        for _ in range(200):
            fh.write(b"\0" * 64)
            fh.flush()
            if watcher.poll():
                break
            time.sleep(0.02)
    assert [(v.status, v.detail) for v in watcher.verdicts] == [("incomplete", "still being written after 0.3 s")]


def test_once_for_cron_exit_codes_log_and_hook(release, tmp_path):
    model, manifest_path, manifest = release
    ckpt = copy_checkpoint(model, tmp_path / "model")
    log, marker = tmp_path / "watch.jsonl", tmp_path / "hook.txt"
    hook = f"echo $SUPERWEIGHT_STATUS $SUPERWEIGHT_CHECKPOINT > {marker}"
    args = ["watch", str(ckpt), "--manifest", str(manifest_path), "--once", "--log", str(log), "--on-fail", hook]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK ") and not marker.exists()
    replace(ckpt / "model.safetensors", tampered_bytes(model, manifest))
    proc = cli(*args, "--json", "--out", str(tmp_path / "run"))
    assert proc.returncode == 1, proc.stderr
    verdict = json.loads(proc.stdout.splitlines()[0])
    assert verdict["status"] == "tampered" and verdict["hook"]["returncode"] == 0
    assert marker.read_text().split() == ["tampered", str(ckpt)]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert doc["command"] == "watch" and [v["status"] for v in doc["verdicts"]] == ["tampered"]
    assert "1 tampered" in (tmp_path / "run" / "report.html").read_text()
    assert [r["status"] for r in read_records(log)] == ["ok", "tampered"]  # appended, the first line kept


def test_missing_or_disappearing_folder_is_one_line_exit_2(release, tmp_path):
    _, manifest_path, _ = release
    assert_one_line_error(cli("watch", str(tmp_path / "nowhere"), "--manifest", str(manifest_path)), "does not exist")
    assert_one_line_error(
        cli("watch", str(tmp_path), "--manifest", str(manifest_path), "--interval", "0"), "--interval"
    )
    assert_one_line_error(cli("watch", str(tmp_path), "--manifest", str(manifest_path), "--out", "x"), "--once")
    gone = tmp_path / "gone"
    gone.mkdir()
    command = [sys.executable, "-m", "superweight.cli.main", "watch", str(gone), "--manifest", str(manifest_path),
               "--interval", "0.1"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = proc.stderr.readline()
        assert started.startswith("watching") and proc.poll() is None  # an empty folder: still watching
        gone.rmdir()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert_one_line_error(subprocess.CompletedProcess(command, proc.returncode, "", err), "disappeared")
