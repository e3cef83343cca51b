"""Zero-shot accuracy with EleutherAI's lm-evaluation-harness, on local copies of the data sets.

Each task is a YAML written at run time that ``include:``s the harness's own task (so the prompt,
the choices and ``acc`` / ``acc_norm`` are exactly the harness's) and only swaps the data source for
a loader that reads ``DATA/<task>/...`` and reshapes it to the hub schema. A task with no local copy
runs the built-in (hub) task when online, and is skipped with a reason when offline. The harness's
response cache is never turned on: it would answer for the unedited model after a weight edit.

HellaSwag: the local copy is llama.cpp's 6-line text form; its contexts keep ``ctx_b`` lower-case where
the harness capitalises it, so accuracies are close to, not equal to, standard ``hellaswag``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import DataError

if TYPE_CHECKING:
    from torch import nn

PAPER_TASKS = ("arc_challenge", "arc_easy", "hellaswag", "lambada_openai", "piqa", "sciq", "winogrande")


def parse_tasks(text: str) -> list[str]:
    """``"a,b"`` as a list; ``paper`` stands for the paper's seven."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    return list(PAPER_TASKS) if tasks == ["paper"] else tasks


@dataclass(frozen=True)
class LocalTask:
    builtin: str  # harness YAML, relative to lm_eval/tasks
    split: str  # the split the harness evaluates
    files: tuple[str, ...]  # relative to the data folder; the first one is the examples


LOCAL_TASKS: dict[str, LocalTask] = {
    "arc_easy": LocalTask("arc/arc_easy.yaml", "test", ("arc_easy/ARC-Easy-Test.jsonl",)),
    "arc_challenge": LocalTask("arc/arc_challenge.yaml", "test", ("arc_challenge/ARC-Challenge-Test.jsonl",)),
    "hellaswag": LocalTask("hellaswag/hellaswag.yaml", "validation", ("hellaswag/hellaswag_val_full.txt",)),
    "lambada_openai": LocalTask("lambada/lambada_openai.yaml", "test", ("lambada/lambada_test.jsonl",)),
    "piqa": LocalTask("piqa/piqa.yaml", "validation", ("piqa/valid.jsonl", "piqa/valid-labels.lst")),
    "winogrande": LocalTask(
        "winogrande/default.yaml", "validation", ("winogrande/dev.jsonl", "winogrande/dev-labels.lst")
    ),
    "boolq": LocalTask("super_glue/boolq/default.yaml", "validation", ("boolq/val.jsonl",)),
}
HUB_ONLY = {"sciq": "sciq/sciq.yaml"}
ALL_TASKS = (*LOCAL_TASKS, *HUB_ONLY)


@dataclass
class TaskResult:
    task: str
    accuracy: float | None  # the harness's `acc`
    acc_norm: float | None
    samples: int
    source: str  # "local:<path>" or "hub"
    sha256: str
    seconds: float
    skipped: str | None = None  # why it was not run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------- local loaders


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
    return rows


def _labels(path: Path, count: int) -> list[str]:
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != count:
        raise DataError(f"{path} has {len(labels)} labels for {count} examples; the files do not belong together")
    return labels


def _need(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where} lacks field(s) {', '.join(missing)}: not the expected format (see its SOURCE.md)")


def _arc(path: Path) -> list[dict[str, Any]]:
    docs = []
    for i, row in enumerate(_jsonl(path), 1):
        _need(row, ("question", "answerKey"), f"{path}:{i}")
        q = row["question"]
        if not isinstance(q, dict) or "stem" not in q or "choices" not in q:
            raise DataError(f"{path}:{i}: question is not AI2's {{stem, choices}} form")
        docs.append(
            {
                "id": row.get("id", str(i)),
                "question": q["stem"],
                "choices": {
                    "text": [c["text"] for c in q["choices"]],
                    "label": [c["label"] for c in q["choices"]],
                },
                "answerKey": row["answerKey"],
            }
        )
    return docs


def _hellaswag(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path} has {len(lines)} lines, not a multiple of 6: not llama.cpp's HellaSwag text form")
    docs = []
    for i in range(0, len(lines), 6):
        head, label, *endings = lines[i : i + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise DataError(f"{path}:{i + 2} should be the gold index 0-3, found {label[:20]!r}")
        activity, _, ctx = head.partition(": ")
        # the harness builds query = activity + ": " + ctx_a + " " + ctx_b.capitalize(), then strips
        docs.append(
            {
                "activity_label": activity,
                "ctx_a": ctx,
                "ctx_b": "",
                "endings": endings,
                "label": label.strip(),
            }
        )
    return docs


def _piqa(path: Path, labels: Path) -> list[dict[str, Any]]:
    rows = _jsonl(path)
    for i, (row, label) in enumerate(zip(rows, _labels(labels, len(rows)), strict=True), 1):
        _need(row, ("goal", "sol1", "sol2"), f"{path}:{i}")
        row["label"] = int(label)
    return rows


def _winogrande(path: Path, labels: Path) -> list[dict[str, Any]]:
    rows = _jsonl(path)
    for i, (row, label) in enumerate(zip(rows, _labels(labels, len(rows)), strict=True), 1):
        _need(row, ("sentence", "option1", "option2"), f"{path}:{i}")
        row["answer"] = label
    return rows


def _boolq(path: Path) -> list[dict[str, Any]]:
    rows = _jsonl(path)
    for i, row in enumerate(rows, 1):
        _need(row, ("passage", "question", "label"), f"{path}:{i}")
        value = row["label"]
        row["label"] = int(value.lower() == "true") if isinstance(value, str) else int(bool(value))
    return rows


def local_docs(task: str, data_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The examples of ``task`` from its local copy, in the hub schema the harness's YAML expects."""
    spec = LOCAL_TASKS[task]
    paths = [Path(data_dir) / f for f in spec.files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"no local copy of {task}: {p} is missing")
    if task.startswith("arc_"):
        docs = _arc(paths[0])
    elif task == "hellaswag":
        docs = _hellaswag(paths[0])
    elif task == "piqa":
        docs = _piqa(*paths)
    elif task == "winogrande":
        docs = _winogrande(*paths)
    elif task == "boolq":
        docs = _boolq(paths[0])
    else:
        docs = [{"text": r["text"]} for r in _jsonl(paths[0]) if _need(r, ("text",), str(paths[0])) is None]
    if not docs:
        raise DataError(f"{paths[0]} holds no examples")
    return docs


def load_local(task: str, data_dir: str, split: str, **_metadata: Any) -> Any:
    """``custom_dataset`` entry point for the harness (it passes metadata kwargs too)."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(local_docs(task, data_dir))})


# --------------------------------------------------------------------------------------- harness glue


def _online() -> bool:
    from superweight.measure.corpus import hub_reachable

    return hub_reachable()


def _file_sha(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest() if len(paths) > 1 else hashlib.sha256(paths[0].read_bytes()).hexdigest()


def _write_yaml(folder: Path, task: str, data_dir: Path) -> str:
    import lm_eval.tasks

    spec = LOCAL_TASKS[task]
    builtin = Path(lm_eval.tasks.__file__).parent / spec.builtin
    splits = {s: (spec.split if s == spec.split else None) for s in ("training", "validation", "test")}
    name = f"sw_local_{task}"
    lines = [
        f"include: {json.dumps(str(builtin))}",
        f"task: {name}",
        "tag: []",
        "dataset_path: json",
        "dataset_name: null",
        "custom_dataset: !function sw_loaders.load_local",
        f"dataset_kwargs: {json.dumps({'task': task, 'data_dir': str(data_dir), 'split': spec.split})}",
        *(f"{s}_split: {json.dumps(splits[s])}" for s in splits),
    ]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def plan_tasks(tasks: list[str], data_dir: str | os.PathLike | None) -> tuple[dict[str, Any], dict[str, TaskResult]]:
    """Which tasks run from local files, which from the hub, and which are skipped (with why)."""
    from superweight.measure.corpus import resolve_data_dir

    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(ALL_TASKS)}")
    root = resolve_data_dir(data_dir)
    runnable: dict[str, Any] = {}
    skipped: dict[str, TaskResult] = {}
    online: bool | None = None
    for task in tasks:
        if root is not None and task in LOCAL_TASKS:
            paths = [root / f for f in LOCAL_TASKS[task].files]
            if all(p.is_file() for p in paths):
                runnable[task] = ("local", root, paths)
                continue
        online = _online() if online is None else online
        if online:
            runnable[task] = ("hub", None, [])
        else:
            where = f"in {root}" if root is not None else "(no data folder given)"
            reason = f"no local copy {where} and offline"
            skipped[task] = TaskResult(task, None, None, 0, "none", "", 0.0, skipped=reason)
    return runnable, skipped


class TaskSuite:
    """The harness set up once (task YAMLs, task index, model wrapper), evaluated once per model condition.

    The wrapper holds a reference to the model, so weight edits made between calls are seen.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        tasks: list[str] | tuple[str, ...] = PAPER_TASKS,
        *,
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
    ) -> None:
        import logging

        from superweight.progress import log

        self.tasks = list(tasks)
        self.runnable, self.skipped = plan_tasks(self.tasks, data_dir)
        for task, result in self.skipped.items():
            log(f"zero-shot: skipping {task}: {result.skipped}")
        self._tmp = tempfile.TemporaryDirectory(prefix="superweight-tasks-")
        self.names: dict[str, str] = {}
        self.lm = self.manager = None
        if not self.runnable:
            return
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        folder = Path(self._tmp.name)
        (folder / "sw_loaders.py").write_text("from superweight.measure.zeroshot import load_local  # noqa: F401\n")
        for task, (kind, root, _) in self.runnable.items():
            self.names[task] = _write_yaml(folder, task, root) if kind == "local" else task
        self.manager = TaskManager(include_path=str(folder), verbosity="ERROR")
        # built once: loading a task (reading, reshaping the data) costs more than a small --limit run
        self.built = self.manager.load([self.names[t] for t in self.runnable])["tasks"]
        device = str(next(model.parameters()).device)
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        self.hashes = {t: _file_sha(paths) if paths else "" for t, (_, _, paths) in self.runnable.items()}

    def evaluate(self, limit: int | None = None, desc: str = "") -> dict[str, TaskResult]:
        from lm_eval import simple_evaluate

        from superweight.progress import log

        results = dict(self.skipped)
        for task, (kind, _, paths) in self.runnable.items():
            start = time.perf_counter()
            log(f"zero-shot {task}{' ' + desc if desc else ''} (limit {limit}) ...")
            out = simple_evaluate(
                model=self.lm,
                tasks=[self.built[self.names[task]]],
                task_manager=self.manager,
                limit=limit,
                use_cache=None,
                bootstrap_iters=0,
                log_samples=False,
                verbosity="ERROR",
            )
            name = self.names[task]
            metrics = out["results"][name]
            n = out.get("n-samples", {}).get(name, {}).get("effective", limit or 0)
            results[task] = TaskResult(
                task=task,
                accuracy=metrics.get("acc,none"),
                acc_norm=metrics.get("acc_norm,none"),
                samples=int(n),
                source=f"local:{paths[0].parent}" if kind == "local" else "hub",
                sha256=self.hashes[task],
                seconds=time.perf_counter() - start,
            )
        return {t: results[t] for t in self.tasks if t in results}

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> TaskSuite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str] | tuple[str, ...] = PAPER_TASKS,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, TaskResult]:
    """``acc`` / ``acc_norm`` of an in-memory model on each task (limit: first N examples per task)."""
    with TaskSuite(model, tokenizer, tasks, data_dir=data_dir, batch_size=batch_size) as suite:
        return suite.evaluate(limit)
