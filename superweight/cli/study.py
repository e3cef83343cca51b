"""`superweight study recovery|prevention`: the two open questions as experiments (docs/study.md).

Both write a run folder (results.json, figures, report.html) and checkpoint into ``DIR/checkpoint``:
run the same command again with the same ``--out`` to resume where it stopped (or ``--restart``).
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from superweight.cli.options import add_model, add_output, add_scan, emit, load_from, scan_from, split_list

EXAMPLES = """examples:
  superweight study recovery --steps 20 --eval-every 5 --out runs/recovery
  superweight study recovery --method lora --lr 1e-3 --tasks piqa --limit 50 --out runs/recovery-lora
  superweight study prevention --out runs/prevention          (about 10 minutes on 2 CPU cores)
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "study",
        help="the open questions: recovery after a lost super weight, and preventing them",
        description="Run one of the studies of docs/study.md; each writes a resumable run folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", parser_class=type(p), required=True)
    _register_recovery(studies)
    _register_prevention(studies)


def _add_training(parser: argparse.ArgumentParser, defaults: Any) -> None:
    from superweight.study.training import OPTIMIZERS

    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    g.add_argument("--eval-every", type=int, default=defaults.eval_every, metavar="K",
                   help=f"evaluate and checkpoint every K steps (default {defaults.eval_every})")  # fmt: skip
    g.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=defaults.lr, help=f"learning rate (default {defaults.lr:g})")
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--train-batch", type=int, default=defaults.batch_size, metavar="N", help="sequences per step")
    g.add_argument("--seq-len", type=int, default=defaults.seq_len, help="training sequence length")
    g.add_argument("--train-data", default=defaults.source, metavar="SOURCE",
                   help=f"training text: wikitext2, c4 or a text file (default {defaults.source})")  # fmt: skip
    g.add_argument("--train-split", default=defaults.split, choices=("validation", "test"))
    g.add_argument("--seed", type=int, default=defaults.seed)
    g.add_argument("--data-dir", metavar="DIR", default=None, help="local data sets (default: $SUPERWEIGHT_DATA)")
    g.add_argument("--restart", action="store_true", help="discard the checkpoint in DIR/checkpoint and start over")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (on a busy shared machine, 1 is often several times faster)")  # fmt: skip


def _train_settings(args: argparse.Namespace, **extra: Any) -> Any:
    from superweight.study.training import TrainSettings

    return TrainSettings(
        steps=args.steps,
        eval_every=args.eval_every,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.train_batch,
        seq_len=args.seq_len,
        seed=args.seed,
        source=args.train_data,
        split=args.train_split,
        **extra,
    )


def _checkpoints(args: argparse.Namespace) -> Any:
    """The checkpoint folder (``--restart`` empties it); also applies ``--threads``."""
    from superweight.errors import SuperweightError

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise SuperweightError(f"must be at least 1 (got {args.threads})", option="threads")
        torch.set_num_threads(args.threads)

    if args.out is None:
        raise SuperweightError("a study needs an output folder: its checkpoints and results go there", option="out")
    folder = args.out / "checkpoint"
    if args.restart and folder.exists():
        shutil.rmtree(folder)
    return folder


# ------------------------------------------------------------------------------------------ recovery


def _register_recovery(studies: Any) -> None:
    from superweight.study.recovery import METHODS, RecoverySettings
    from superweight.study.training import TrainSettings

    d = RecoverySettings()
    p = studies.add_parser(
        "recovery",
        help="zero the super weights, fine-tune, and measure what comes back",
        description="Zero every confirmed super weight, fine-tune the damaged model (full or LoRA) on local text, "
        "and measure every K steps on the test split: perplexity, zero-shot accuracy, the super activation and "
        "the zeroed weights' values; against restoring the super activation, restoring the weights, and the "
        "undamaged model fine-tuned the same way.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    add_scan(p)
    _add_training(p, TrainSettings())
    g = p.add_argument_group("recovery")
    g.add_argument("--method", default=d.method, choices=METHODS, help="full fine-tuning or LoRA (peft)")
    g.add_argument("--lora-rank", type=int, default=d.lora_rank)
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    g.add_argument("--eval-tokens", type=int, default=d.eval_tokens, metavar="N",
                   help=f"test-split tokens per perplexity evaluation (default {d.eval_tokens})")  # fmt: skip
    g.add_argument("--eval-seq-len", type=int, default=d.eval_seq_len)
    g.add_argument(
        "--eval-data",
        default=d.eval_source,
        metavar="SOURCE",
        help="evaluation text: wikitext2 (test split), c4 or a text file other than the training one",
    )
    g.add_argument("--tasks", default=",".join(d.tasks), help="zero-shot tasks, comma-separated ('' for none)")
    g.add_argument("--limit", type=int, default=d.limit, metavar="N", help="first N examples of each task")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="zero-shot batch size")
    g.add_argument("--no-control", action="store_true", help="skip fine-tuning the undamaged model (halves the time)")
    p.set_defaults(func=run_recovery)


def run_recovery(args: argparse.Namespace) -> int:
    from superweight.report.study import recovery_text
    from superweight.study.recovery import RecoverySettings, run_recovery

    settings = RecoverySettings(
        train=_train_settings(args),
        method=args.method,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        eval_source=args.eval_data,
        eval_tokens=args.eval_tokens,
        eval_seq_len=args.eval_seq_len,
        tasks=tuple(split_list(args.tasks)),
        limit=args.limit,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        control=not args.no_control,
    )
    settings.check_data()
    folder = _checkpoints(args)
    lm = load_from(args)
    scan = scan_from(args, lm)
    emit(args, "study-recovery", run_recovery(lm, scan, settings, checkpoint_dir=folder), recovery_text)
    return 0


# ---------------------------------------------------------------------------------------- prevention


def _register_prevention(studies: Any) -> None:
    from superweight.study.prevention import VARIANTS, PreventionSettings

    d = PreventionSettings()
    p = studies.add_parser(
        "prevention",
        help="train small models with and without regularizers; scan their checkpoints",
        description="Train small Llama-architecture models from scratch with and without a regularizer meant to "
        "keep super weights from forming, scan every checkpoint, and report when massive activations and super "
        "weights appear and what each regularizer costs in perplexity. Variants: "
        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output(p)
    _add_training(p, d.train)
    g = p.add_argument_group("models")
    g.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated, of {', '.join(VARIANTS)}")
    g.add_argument("--hidden", type=int, default=d.hidden)
    g.add_argument("--layers", type=int, default=d.layers)
    g.add_argument("--heads", type=int, default=d.heads)
    g.add_argument("--intermediate", type=int, default=d.intermediate)
    g.add_argument("--penalty", type=float, default=d.penalty, help="weight of act_penalty's term")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps before cosine decay")
    g.add_argument("--eval-tokens", type=int, default=d.eval_tokens, metavar="N", help="test-split bytes evaluated")
    p.set_defaults(func=run_prevention)


def run_prevention(args: argparse.Namespace) -> int:
    from superweight.report.study import prevention_text
    from superweight.study.prevention import PreventionSettings, run_prevention

    settings = PreventionSettings(
        train=_train_settings(args),
        variants=tuple(split_list(args.variants)),
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        intermediate=args.intermediate,
        penalty=args.penalty,
        warmup=args.warmup,
        eval_tokens=args.eval_tokens,
        data_dir=args.data_dir,
    )
    settings.check_data()
    folder = _checkpoints(args)
    emit(args, "study-prevention", run_prevention(settings, checkpoint_dir=folder), prevention_text)
    return 0
