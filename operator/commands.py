"""Operator subcommands: `diffar crds`, `diffar render RUN.yaml`, `diffar operator`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffar.trainer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crds",
        help="print (or write) the DiffusionRun and ARRun CustomResourceDefinitions",
        description="Print the CRDs generated from the run API's models. With --out DIR "
        "(repeatable), write one file per CRD into each DIR instead (make manifests).",
    )
    p.add_argument(
        "--out",
        action="append",
        default=[],
        metavar="DIR",
        help="write <plural>.diffar.io.yaml files into DIR (repeatable)",
    )
    p.add_argument(
        "--reference",
        metavar="FILE",
        help="also write the Markdown field reference (docs/crd-reference.md) to FILE",
    )
    p.set_defaults(handler=_crds)

    p = sub.add_parser(
        "render",
        help="print every object the operator would create for a run manifest",
        description="A dry run of the operator: validate RUN.yaml as the operator does and "
        "print the ConfigMap, PyTorchJob (or, with --backend trainjob, TrainJob) and evaluator "
        "Job it would create, as YAML.",
    )
    p.add_argument(
        "manifest",
        help="a DiffusionRun or ARRun manifest, or a ScalingStudy (its child runs are printed); "
        "YAML, '-' for stdin",
    )
    p.add_argument("--namespace", "-n", default=None, help="namespace if the manifest has none")
    p.add_argument(
        "--no-eval", action="store_true", help="leave out the evaluator Job (created later)"
    )
    _backend_arguments(p)
    p.set_defaults(handler=_render)

    p = sub.add_parser(
        "operator",
        help="run the operator (kopf) against the current cluster",
        description="Reconcile DiffusionRuns and ARRuns into PyTorchJobs (or TrainJobs) and "
        "evaluator Jobs. Settings from the environment: DIFFAR_PUSHGATEWAY_URL, "
        "DIFFAR_METRICS_URL_TEMPLATE, DIFFAR_PROGRESS_INTERVAL, DIFFAR_BACKEND.",
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs allowed); default: cluster-wide",
    )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (empty: off)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=9401, help="Prometheus metrics port (0: off)"
    )
    p.add_argument(
        "--standalone", action="store_true", help="no peering with other operator replicas"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    _backend_arguments(p)
    p.set_defaults(handler=_operator)


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    from diffar.operator.runs import BACKENDS, RUNTIME_KINDS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="what trains: a Kubeflow training operator PyTorchJob, or a Kubeflow Trainer v2 "
        "TrainJob (default: DIFFAR_BACKEND, else pytorchjob)",
    )
    p.add_argument(
        "--training-runtime",
        metavar="NAME",
        default=None,
        help="the TrainJobs' runtime (default: DIFFAR_TRAINING_RUNTIME, else diffar-torch)",
    )
    p.add_argument(
        "--training-runtime-kind",
        choices=RUNTIME_KINDS,
        default=None,
        help="ClusterTrainingRuntime (default) or a TrainingRuntime in each run's namespace",
    )


def _apply_backend(args: argparse.Namespace) -> None:
    """The flags win over the environment; the operator's handlers module, which registers its
    watches when kopf imports it, reads the same variables (runs.Settings.from_env)."""
    import os

    for flag, var in (
        ("backend", "DIFFAR_BACKEND"),
        ("training_runtime", "DIFFAR_TRAINING_RUNTIME"),
        ("training_runtime_kind", "DIFFAR_TRAINING_RUNTIME_KIND"),
    ):
        value = getattr(args, flag)
        if value:
            os.environ[var] = value


def _crds(args: argparse.Namespace) -> int:
    from diffar.operator import crdgen

    if args.out:
        for path in crdgen.write([Path(d) for d in args.out]):
            print(f"wrote {path}", file=sys.stderr)
    if args.reference:
        Path(args.reference).parent.mkdir(parents=True, exist_ok=True)
        Path(args.reference).write_text(crdgen.reference_markdown())
        print(f"wrote {args.reference}", file=sys.stderr)
    if not args.out and not args.reference:
        sys.stdout.write(crdgen.render_yaml())
    return 0


def load_manifest(path: str) -> dict:
    """The run manifest in `path` ('-': stdin), read by `diffar.operator.safeyaml`."""
    from diffar.operator.safeyaml import load_manifest_text
    from diffar.trainer.errors import read_text

    text = sys.stdin.read() if path == "-" else read_text(path, "run manifest")
    return load_manifest_text(text, path)


def _render(args: argparse.Namespace) -> int:
    from diffar.operator.builders import backend_problems, render
    from diffar.operator.runs import Run, Settings, SpecError, validate

    _apply_backend(args)
    manifest = load_manifest(args.manifest)
    if isinstance(manifest, dict) and manifest.get("kind") == "ScalingStudy":
        from diffar.operator.study import render_study

        sys.stdout.write(dump_yaml(render_study(manifest, namespace=args.namespace)))
        return 0
    settings = Settings.from_env()
    run = Run.from_body(manifest, namespace=args.namespace)
    problems = validate(run) + backend_problems(run, settings)
    if problems:
        raise SpecError(problems)
    objs = render(run, settings, include_eval=not args.no_eval)
    sys.stdout.write(dump_yaml(objs))
    return 0


def dump_yaml(objs: list[dict]) -> str:
    """YAML documents, multi-line strings (the ConfigMap's JSON) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(objs, Dumper=Dumper, sort_keys=False, width=100)


def _check_cluster_credentials() -> None:
    """Fail in one line when no cluster can be reached at all: without credentials kopf would
    retry its login forever, printing a traceback each time."""
    from kubernetes import config

    try:
        config.load_incluster_config()
        return
    except config.ConfigException:
        pass
    try:
        config.load_kube_config()
    except (config.ConfigException, OSError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(
            f"no Kubernetes credentials ({reason}); set KUBECONFIG or ~/.kube/config, or run "
            "in a pod with a service account. To try runs without a cluster: diffar run RUN.yaml --local"
        ) from None


def _operator(args: argparse.Namespace) -> int:
    _apply_backend(args)
    from diffar.operator.runs import Settings

    Settings.from_env()  # a bad backend or runtime name: one line, before kopf starts
    from diffar.operator.handlers import run_operator

    _check_cluster_credentials()

    return run_operator(
        namespaces=args.namespace,
        liveness=args.liveness or None,
        metrics_port=args.metrics_port,
        standalone=args.standalone,
        verbose=args.verbose,
    )
