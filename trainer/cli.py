"""Trainer subcommands: `diffar train` and `diffar data ...`."""

from __future__ import annotations

import argparse

from diffar.trainer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_data(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an AR or MDM model from a TrainConfig",
        description="Train from a TrainConfig (YAML or JSON). Runs as one process or under "
        "torchrun (WORLD_SIZE/RANK/MASTER_ADDR from the environment, as a PyTorchJob sets them). "
        "Resumes from the newest checkpoint in checkpoint.dir.",
    )
    p.add_argument("--config", required=True, help="TrainConfig file (.yaml/.yml/.json)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved run size and exit")
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set epochs=4 --set optim.lr=1e-3 (repeatable)",
    )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from diffar.trainer.config import apply_overrides, load_mapping, parse_config

    raw = load_mapping(args.config)
    if "apiVersion" in raw or "kind" in raw:
        raise UserError(
            f"{args.config} is a run manifest ({raw.get('kind', 'kind unknown')}), not a "
            f"TrainConfig; use `diffar run {args.config} --local` to train it here, or "
            f"`diffar render {args.config}` to see the cluster objects"
        )
    cfg = apply_overrides(parse_config(raw), args.set)
    if args.dry_run:
        from diffar.trainer.plan import format_plan, plan_run

        print(format_plan(plan_run(cfg, unique_tokens=_dataset_size(cfg)), as_json=args.json))
        return 0
    from diffar.trainer.train import train

    train(cfg)
    return 0


def _dataset_size(cfg) -> int | None:
    """The training set's size for a dry run, when the config leaves unique_tokens unset."""
    if cfg.data.unique_tokens is not None:
        return None
    from diffar.trainer.storage import read_manifest_uri

    return read_manifest_uri(cfg.data.train_uri).total_tokens


def _register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare and inspect token shard datasets")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    prep = data_sub.add_parser(
        "prepare",
        help="tokenize text into GPT-2 token shards: a train set and a validation set",
        description="Tokenize text (.txt, .jsonl, .jsonl.gz with a 'text' field) with GPT-2 BPE "
        "into OUT/train (the first --unique-tokens tokens of the document stream) and OUT/val "
        "(--val-tokens tokens from the documents after the training ones; disjoint). OUT may be "
        "a path, file:// or s3:// URI. See docs/data.md.",
    )
    prep.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, in stream order")
    prep.add_argument("--out", required=True, help="output dataset root (path, file://, s3://)")
    prep.add_argument(
        "--unique-tokens", required=True, help="training tokens U, e.g. 100000000 or 100M"
    )
    prep.add_argument(
        "--val-tokens", default="0", help="validation tokens (0: no validation set); e.g. 1M"
    )
    prep.add_argument(
        "--shard-tokens", default=None, help="tokens per shard file (default 64Mi = 67108864)"
    )
    prep.add_argument(
        "--text-unit",
        choices=("file", "paragraph", "line"),
        default="file",
        help="what one document is in plain-text inputs (default: the whole file)",
    )
    prep.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2 (default), or a tokenizer.json from `diffar data tokenizer`",
    )
    prep.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    prep.add_argument("--quiet", action="store_true", help="no progress output")
    prep.set_defaults(handler=_data_prepare)

    bpe = data_sub.add_parser(
        "tokenizer",
        help="learn a small byte-level BPE from text (for tiny models)",
        description="Learn a byte-level BPE of --vocab-size ids (end-of-document included) from "
        "the inputs and write a tokenizer.json for `data prepare --tokenizer`. Use --max-chars "
        "to learn only from the start of the stream, where the training set comes from.",
    )
    bpe.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, in stream order")
    bpe.add_argument("--out", required=True, help="tokenizer.json to write")
    bpe.add_argument("--vocab-size", type=int, default=4096, help="ids in all (default 4096)")
    bpe.add_argument("--max-chars", default=None, help="learn from the first N characters only")
    bpe.add_argument(
        "--text-unit", choices=("file", "paragraph", "line"), default="file", help="as for prepare"
    )
    bpe.set_defaults(handler=_data_tokenizer)

    insp = data_sub.add_parser(
        "inspect",
        help="print a dataset's manifest summary; --verify checks every shard's sha256",
        description="Print the manifest summary of a dataset (path, file:// or s3:// URI). "
        "A root written by `data prepare` (with train/ and val/) shows both.",
    )
    insp.add_argument("uri", metavar="URI")
    insp.add_argument("--verify", action="store_true", help="check every shard's sha256")
    insp.add_argument("--json", action="store_true", help="print the manifest(s) as JSON")
    insp.set_defaults(handler=_data_inspect)

    fetch = data_sub.add_parser(
        "fetch",
        help="fetch a dataset's shards into the local cache (verified) and print its path",
        description="What the trainer does before training, as a command (e.g. for an init "
        "container): fetch the manifest and the shards holding the first --unique-tokens tokens "
        "into CACHE_DIR/s3/BUCKET/PREFIX, each verified against its sha256. Paths and file:// "
        "URIs are only checked. Prints the local dataset directory.",
    )
    fetch.add_argument("uri", metavar="URI")
    fetch.add_argument("--cache-dir", default=".diffar-cache", help="default: .diffar-cache")
    fetch.add_argument("--unique-tokens", default=None, help="only the shards for the first N")
    fetch.set_defaults(handler=_data_fetch)


def _data_prepare(args: argparse.Namespace) -> int:
    from diffar.trainer.prepare import DEFAULT_SHARD_TOKENS, parse_count, prepare

    result = prepare(
        args.inputs,
        args.out,
        parse_count(args.unique_tokens),
        parse_count(args.val_tokens),
        shard_tokens=parse_count(args.shard_tokens) if args.shard_tokens else DEFAULT_SHARD_TOKENS,
        text_unit=args.text_unit,
        overwrite=args.overwrite,
        progress=not args.quiet,
        tokenizer=args.tokenizer,
    )
    print(result.summary())
    return 0


def _data_tokenizer(args: argparse.Namespace) -> int:
    import itertools
    from pathlib import Path

    from diffar.trainer.bpe import BPETokenizer, train_bpe
    from diffar.trainer.prepare import iter_documents, parse_count

    budget = parse_count(args.max_chars) if args.max_chars else None

    def texts():
        seen = 0
        for doc in iter_documents(args.inputs, args.text_unit):
            if budget is not None and seen >= budget:
                return
            doc = doc if budget is None else doc[: budget - seen]
            seen += len(doc)
            yield doc

    sample = list(itertools.islice(texts(), 1))
    if not sample:
        from diffar.trainer.prepare import PrepareError

        raise PrepareError("the inputs hold no text to learn a tokenizer from")
    path = train_bpe(texts(), args.vocab_size, Path(args.out))
    tok = BPETokenizer.from_file(path)
    print(f"wrote {path}: byte-level BPE {tok.name}, vocab {tok.vocab_size}, EOD id {tok.eod_id}")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from diffar.trainer.storage import inspect_datasets

    text, ok = inspect_datasets(args.uri, verify=args.verify, as_json=args.json)
    print(text)
    return 0 if ok else 1


def _data_fetch(args: argparse.Namespace) -> int:
    from diffar.trainer.prepare import parse_count
    from diffar.trainer.storage import resolve_dataset

    unique = parse_count(args.unique_tokens) if args.unique_tokens else None
    print(resolve_dataset(args.uri, args.cache_dir, unique_tokens=unique))
    return 0
