"""Watch a model folder and verify every new or changed checkpoint against a manifest.

Deployments that pull checkpoints automatically need the check where the files land. The watcher
polls file sizes and modification times every ``interval`` seconds (a sleep, never a busy loop; a
stat of a few files costs microseconds, and inotify would only shorten the wait by one interval: a
checkpoint must be seen unchanged for one interval anyway before it is trusted to be complete).

A checkpoint is the folder itself when it holds weight files, and every sub-folder that does
(``checkpoint-500/``, as ``Trainer`` writes them). One is verified once its files have kept the same
sizes and times across two polls: first the fast super-weight check (bytes at the recorded offsets),
then the tensor hashes (skipped when the fast check already failed). A file caught mid-write (a
truncated safetensors header, data shorter than the header says) is retried on later polls and only
reported, as ``incomplete`` (never ``tampered``), if it stays that way for ``max_wait`` seconds.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from superweight.errors import ManifestError, ModelNotFoundError, SuperweightError
from superweight.guard.journal import append_record
from superweight.model.files import CorruptModelError

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
STATUSES = ("ok", "tampered", "incomplete", "mismatch")

Snapshot = tuple[tuple[str, int, int, int], ...]  # (file name, size, mtime_ns, inode) of each weight file


class WatchError(SuperweightError):
    """The watched folder is missing or disappeared, or the watch settings are invalid."""


@dataclass
class Verdict:
    """What one verification of one checkpoint found."""

    checkpoint: str
    status: str  # one of STATUSES
    ok: bool
    checks: dict[str, str] = field(default_factory=dict)
    changed_tensors: list[str] = field(default_factory=list)
    changed_super_weights: list[str] = field(default_factory=list)
    detail: str = ""
    files: list[list[Any]] = field(default_factory=list)  # the snapshot that was verified
    seconds: float = 0.0
    hook: dict[str, Any] | None = None  # the --on-fail command's outcome

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WatchSummary:
    """Every verdict of one watch (``--once``: one look at the folder), for a results document."""

    verdicts: list[Verdict]
    polls: int
    directory: str = ""
    manifest: str = ""

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "directory": self.directory, "manifest": self.manifest, "polls": self.polls,
                "verdicts": [v.to_dict() for v in self.verdicts]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatchSummary:
        verdicts = [Verdict(**v) for v in data["verdicts"]]
        return cls(verdicts, int(data["polls"]), str(data.get("directory", "")), str(data.get("manifest", "")))


# ------------------------------------------------------------------------------------- looking


def find_checkpoints(root: Path) -> list[Path]:
    """The folder itself if it holds weight files, and each immediate sub-folder that does."""
    if not root.is_dir():
        raise WatchError(f"the watched folder {root} does not exist (or is not a folder)")
    found = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        try:
            if any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in folder.iterdir()):
                found.append(folder)
        except FileNotFoundError:  # a sub-folder removed between the listing and now
            continue
    return found


def snapshot(folder: Path) -> Snapshot:
    """Sizes, modification times and inodes of the weight files: any write or replacement changes it."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix in WEIGHT_SUFFIXES:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns, st.st_ino))  # a rename changes the inode
    return tuple(out)


# ------------------------------------------------------------------------------------- checking


def verify_checkpoint(folder: Path, manifest: Any, manifest_path: str = "") -> Verdict:
    """Fast super-weight check, then tensor hashes. Raises CorruptModelError for a partial file."""
    from superweight.guard.verify import verify_model

    start = time.perf_counter()
    reports = []
    try:
        reports.append(verify_model(str(folder), manifest, manifest_path=manifest_path, fast=True))
    except ManifestError as exc:
        if "no super weights" not in exc.message:
            return Verdict(str(folder), "mismatch", False, detail=exc.message, seconds=time.perf_counter() - start)
    if not reports or reports[0].ok:
        try:
            reports.append(verify_model(str(folder), manifest, manifest_path=manifest_path))
        except ManifestError as exc:
            return Verdict(str(folder), "mismatch", False, detail=exc.message, seconds=time.perf_counter() - start)
    report = reports[-1]
    checks = dict(report.checks)
    if len(reports) == 1 and not report.ok:
        checks["hash"] = "skipped: the super weights already changed"
    swaps = [f"{s.module}[{s.row}, {s.col}] {s.old_value:.6g} -> {s.new_value}" for s in report.super_weights
             if s.status != "same"]  # fmt: skip
    changed = [c.name for c in report.changed]
    detail = "; ".join(report.notes)
    if not report.ok:
        detail = "; ".join(x for x in (
            f"super weights changed: {', '.join(swaps)}" if swaps else "",
            f"{len(changed)} tensor(s) changed: {', '.join(changed[:5])}" if changed else "", detail) if x)  # fmt: skip
    return Verdict(str(folder), "ok" if report.ok else "tampered", report.ok, checks, changed, swaps, detail,
                   seconds=time.perf_counter() - start)  # fmt: skip


def run_hook(command: str, verdict: Verdict, log: Path | None) -> dict[str, Any]:
    """Run the on-fail command (a shell line) with the verdict in its environment."""
    env = {**os.environ, "SUPERWEIGHT_CHECKPOINT": verdict.checkpoint, "SUPERWEIGHT_STATUS": verdict.status,
           "SUPERWEIGHT_DETAIL": verdict.detail, "SUPERWEIGHT_LOG": str(log or "")}  # fmt: skip
    try:
        proc = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"command": command, "returncode": None, "error": "timed out after 300 s"}
    return {"command": command, "returncode": proc.returncode, "stderr": proc.stderr[-500:]}


@dataclass
class _Pending:
    seen: Snapshot  # the snapshot at the previous poll
    since: float  # when it was first seen in this state (monotonic)
    reason: str = ""  # why the last attempt could not verify it


class Watcher:
    """Poll a folder; verify each checkpoint once its files are stable; report each verdict once."""

    def __init__(
        self,
        directory: str | Path,
        manifest: Any,
        *,
        manifest_path: str = "",
        interval: float = 5.0,
        max_wait: float = 600.0,
        log: str | Path | None = None,
        on_fail: str | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise WatchError(f"must be > 0 seconds (got {interval})", option="interval")
        if not max_wait >= 0:
            raise WatchError(f"must be >= 0 seconds (got {max_wait})", option="max_wait")
        self.root = Path(directory)
        find_checkpoints(self.root)  # a missing folder is an error now, not at the first poll
        self.manifest, self.manifest_path = manifest, manifest_path
        self.interval, self.max_wait = interval, max_wait
        self.log = Path(log) if log is not None else None
        self.on_fail, self.on_verdict = on_fail, on_verdict
        self.verified: dict[Path, Snapshot] = {}
        self.pending: dict[Path, _Pending] = {}
        self.verdicts: list[Verdict] = []
        self.polls = 0
        self.once = False

    def poll(self) -> list[Verdict]:
        """One look at the folder: verify what has settled, remember what is still being written."""
        if not self.root.is_dir():
            if self.log is not None:
                append_record(self.log, {"record": "gone", "directory": str(self.root)})
            raise WatchError(f"the watched folder {self.root} disappeared")
        self.polls += 1
        now = time.monotonic()
        found = find_checkpoints(self.root)
        out = []
        for folder in found:
            snap = snapshot(folder)
            if self.verified.get(folder) == snap:
                continue
            pending = self.pending.get(folder)
            if pending is None or pending.seen != snap:  # new, or still changing: look again next poll
                self.pending[folder] = _Pending(snap, now if pending is None else pending.since)
                if self.once and pending is not None and now - pending.since >= self.max_wait:
                    del self.pending[folder]  # --once cannot wait for ever: say so instead
                    detail = f"still being written after {self.max_wait:g} s"
                    out.append(self._record(folder, snap, Verdict(str(folder), "incomplete", False, detail=detail)))
                continue
            verdict = self._verify(folder, snap, pending, now)
            if verdict is not None:
                out.append(verdict)
        for folder in [f for f in self.verified if f not in found]:
            del self.verified[folder]
            if self.log is not None:
                append_record(self.log, {"record": "removed", "checkpoint": str(folder)})
        return out

    def _verify(self, folder: Path, snap: Snapshot, pending: _Pending, now: float) -> Verdict | None:
        try:
            verdict = verify_checkpoint(folder, self.manifest, self.manifest_path)
        except (CorruptModelError, ModelNotFoundError, OSError) as exc:  # mid-write, or gone meanwhile
            pending.reason = getattr(exc, "message", str(exc))
            if now - pending.since < self.max_wait:
                return None
            verdict = Verdict(str(folder), "incomplete", False,
                              detail=f"still unreadable after {self.max_wait:g} s: {pending.reason}")  # fmt: skip
        del self.pending[folder]
        if snapshot(folder) != snap:  # written to while it was being verified: judge the new files
            self.pending[folder] = _Pending(snapshot(folder), now)
            return None
        return self._record(folder, snap, verdict)

    def _record(self, folder: Path, snap: Snapshot, verdict: Verdict) -> Verdict:
        """Remember, hook, log and report one verdict."""
        self.verified[folder] = snap
        verdict.files = [list(f) for f in snap]
        if not verdict.ok and self.on_fail:
            verdict.hook = run_hook(self.on_fail, verdict, self.log)
        if self.log is not None:
            append_record(self.log, {"record": "verdict", **verdict.to_dict()})
        self.verdicts.append(verdict)
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        return verdict

    def run(self, *, once: bool = False, stop: threading.Event | None = None) -> WatchSummary:
        """Poll until ``stop`` is set (or, with ``once``, until every checkpoint has a verdict)."""
        stop = stop or threading.Event()
        self.once = once
        while True:
            self.poll()
            if once and self.polls > 1 and not self.pending:
                break
            if stop.wait(self.interval if not once else min(self.interval, 1.0)):
                break
        return WatchSummary(list(self.verdicts), self.polls, str(self.root), self.manifest_path)


def watch(directory: str | Path, manifest: Any, *, once: bool = False, stop: threading.Event | None = None,
          **options: Any) -> WatchSummary:  # fmt: skip
    """Watch ``directory`` and verify its checkpoints against ``manifest`` (see :class:`Watcher`).

    Example:
        >>> summary = watch("deploy/model", load_manifest("m.json"), once=True, log="watch.jsonl")
    """
    return Watcher(directory, manifest, **options).run(once=once, stop=stop)
