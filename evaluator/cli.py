"""Evaluator subcommands: `diffar eval`, `diffar compare` and `diffar fit`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    _register_eval(sub)
    _register_compare(sub)
    _register_fit(sub)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="validation loss and downstream tasks of a trained model -> results.json",
        description="Evaluate a trained model: validation loss (AR exact NLL; MDM ELBO with "
        "stratified t and the exact chain-rule NLL; bits per byte), zero-shot downstream tasks, "
        "results.json next to the checkpoint, and a push to a Prometheus Pushgateway when one "
        "is configured. Flags override the config file's fields.",
    )
    p.add_argument("--config", help="EvalConfig file (.yaml/.yml/.json)")
    p.add_argument("--model", dest="model_uri", help="checkpoint dir or model.pt (path/file/s3)")
    p.add_argument("--data", dest="data_uri", help="validation shards (path, file:// or s3://)")
    p.add_argument("--name", help="run name (default: the training config's)")
    p.add_argument(
        "--tasks",
        help="comma-separated tasks or JSONL task files; 'none' for none "
        "(default: arc_easy,boolq,copa,hellaswag,piqa,winogrande,sciq,lambada)",
    )
    p.add_argument("--limit", type=int, help="at most N instances per task")
    p.add_argument("--samples", type=int, help="Monte Carlo samples for MDM ELBOs (default 32)")
    p.add_argument("--val-sequences", type=int, help="validation windows to score (default 256)")
    p.add_argument("--chain-rule-sequences", type=int, help="windows for the MDM chain rule")
    p.add_argument("--mdm-scoring", choices=["elbo", "chain_rule"], help="MDM answer scoring")
    p.add_argument(
        "--elbo-masking",
        choices=["rate", "count"],
        help="MDM ELBO masks: rate (training's, default) or count (lower variance)",
    )
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default 16)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default auto")
    p.add_argument(
        "--tokenizer",
        help="gpt2, bytes or a tokenizer.json (default: the dataset's tokenizer.json, else by vocab)",
    )
    p.add_argument("--output", dest="output_uri", help="where results.json goes")
    p.add_argument("--pushgateway", help="Pushgateway URL (default: $DIFFAR_PUSHGATEWAY_URL)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.set_defaults(handler=_eval)


def eval_config_from_args(args: argparse.Namespace):
    from diffar.evaluator.config import load_eval_raw, parse_eval_config

    raw = load_eval_raw(args.config) if args.config else {}
    for key in (
        "model_uri",
        "data_uri",
        "name",
        "limit",
        "samples",
        "val_sequences",
        "chain_rule_sequences",
        "mdm_scoring",
        "elbo_masking",
        "batch_size",
        "device",
        "precision",
        "tokenizer",
        "output_uri",
        "pushgateway",
        "seed",
    ):
        value = getattr(args, key, None)
        if value is not None:
            raw[key] = value
    if args.tasks is not None:
        raw["tasks"] = [] if args.tasks in ("", "none") else args.tasks.split(",")
    if args.no_progress:
        raw["progress"] = False
    if "model_uri" not in raw:
        from diffar.evaluator.config import EvalConfigError

        raise EvalConfigError("no model to evaluate: give --model or model_uri in --config")
    return parse_eval_config(raw)


def _eval(args: argparse.Namespace) -> int:
    import json

    from diffar.evaluator.run import evaluate

    results = evaluate(eval_config_from_args(args))
    if args.json:
        from diffar.evaluator.results import finite as _finite

        print(json.dumps(_finite(results), indent=2))
    return 0


def _register_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs: one table, and a plot of validation loss against epochs",
        description="Compare finished runs side by side: size, validation losses with their "
        "standard errors, bits per byte, best and final validation loss during training, wall "
        "time, tokens/s and task accuracies, and a PNG of each run's validation loss against "
        "epochs. Each RUN is a local run folder (runs/<name>), a results.json, or an s3:// URI "
        "of either.",
    )
    p.add_argument("inputs", nargs="+", metavar="RUN", help="run folders, results.json, s3://")
    p.add_argument(
        "--plot",
        default="compare-val-loss.png",
        help="where the plot goes (default compare-val-loss.png)",
    )
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffar.evaluator.compare import compare

    print(compare(args.inputs, None if args.no_plot else Path(args.plot), as_json=args.json))
    return 0


def _register_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="fit the data-constrained scaling law to results (R_D*, R_N*, C_crit)",
        description="Fit L = E + A/N'^alpha + B/D'^beta with D' = U + U R_D* (1 - exp(-(epochs-1)"
        "/R_D*)) and N' likewise with R_N* (Muennighoff et al. 2023) per objective, from "
        "results.json files or a CSV (objective, params, unique_tokens, epochs, loss). Huber "
        "loss on log loss, L-BFGS from a grid of starts; bootstrap standard errors.",
    )
    p.add_argument("inputs", nargs="+", metavar="RESULTS", help="results.json files or CSVs")
    p.add_argument(
        "--unique-tokens",
        type=float,
        action="append",
        default=[],
        metavar="U",
        help="report the critical compute C_crit(U) for these U (repeatable; default 1e8)",
    )
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap refits for stderrs")
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="OBJ.PARAM=VALUE",
        help="hold a constant fixed, e.g. mdm.R_N=5.31 (repeatable)",
    )
    p.add_argument(
        "--paper-constants",
        action="store_true",
        help="hold alpha, beta (0.353), R_N* (5.31) and R_D* (AR 31, MDM 500) at the paper's "
        "values and fit E, A, B: for a handful of runs (4 points per objective)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(handler=_fit)


def _fit(args: argparse.Namespace) -> int:
    from diffar.evaluator.scaling import fit_command

    return fit_command(
        args.inputs,
        unique_tokens=args.unique_tokens or [1e8],
        plots=args.plots,
        bootstrap=args.bootstrap,
        fixed=args.fix,
        seed=args.seed,
        as_json=args.json,
        paper_constants=args.paper_constants,
    )
