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
        "print the ConfigMap, PyTorchJob and evaluator Job it would create, as YAML.",
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
    p.set_defaults(handler=_render)

    p = sub.add_parser(
        "operator",
        help="run the operator (kopf) against the current cluster",
        description="Reconcile DiffusionRuns and ARRuns into PyTorchJobs and evaluator Jobs. "
        "Settings from the environment: DIFFAR_PUSHGATEWAY_URL, DIFFAR_METRICS_URL_TEMPLATE, "
        "DIFFAR_PROGRESS_INTERVAL.",
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
    p.set_defaults(handler=_operator)


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
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if len(docs) != 1:
        raise UserError(f"{path} must hold exactly one run manifest, found {len(docs)}")
    return docs[0]


def _render(args: argparse.Namespace) -> int:
    from diffar.operator.builders import render
    from diffar.operator.runs import Run, Settings, SpecError, validate

    manifest = load_manifest(args.manifest)
    if isinstance(manifest, dict) and manifest.get("kind") == "ScalingStudy":
        from diffar.operator.study import render_study

        sys.stdout.write(dump_yaml(render_study(manifest, namespace=args.namespace)))
        return 0
    run = Run.from_body(manifest, namespace=args.namespace)
    problems = validate(run)
    if problems:
        raise SpecError(problems)
    objs = render(run, Settings.from_env(), include_eval=not args.no_eval)
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


def _operator(args: argparse.Namespace) -> int:
    from diffar.operator.handlers import run_operator

    return run_operator(
        namespaces=args.namespace,
        liveness=args.liveness or None,
        metrics_port=args.metrics_port,
        standalone=args.standalone,
        verbose=args.verbose,
    )
