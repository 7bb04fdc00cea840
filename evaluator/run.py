"""One evaluation, top to bottom: load the model, validation loss, tasks, results.json, push.

results.json (format "diffar-results/v1") holds the run's identity and size (run, objective,
params, unique_tokens, epochs, tokens_seen, flops), `loss` (the headline validation loss: AR's
exact NLL, MDM's ELBO, as the paper compares them, with `loss_estimator` naming it), every
validation estimator with its standard error and bits per byte, and every task's accuracies with
their standard errors. `diffar fit` reads these files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from diffar.evaluator.config import EvalConfig
from diffar.evaluator.results import RESULTS_NAME, summary, training_summary
from diffar.evaluator.results import finite as _finite
from diffar.trainer.errors import UserError

RESULTS_FORMAT = "diffar-results/v1"


class _Autocast(torch.nn.Module):
    """Runs the model under bf16 autocast; logits stay fp32."""

    def __init__(self, model: torch.nn.Module, device_type: str):
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(tokens).float()


def use_bf16(precision: str, device: torch.device) -> bool:
    """auto: bf16 autocast on CUDA, fp32 elsewhere (as training's precision: auto)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def default_output_uri(model_uri: str) -> str:
    """results.json next to the checkpoint: in the checkpoint dir (the one holding export/)."""
    uri = model_uri.rstrip("/")
    if not uri.endswith(".pt"):
        return f"{uri}/{RESULTS_NAME}"
    parent = uri.rsplit("/", 1)[0] if "/" in uri else "."
    if parent.rsplit("/", 1)[-1] == "export":
        parent = parent.rsplit("/", 1)[0] if "/" in parent else "."
    return f"{parent}/{RESULTS_NAME}"


def fetch_model(model_uri: str, cache_dir: str) -> Path:
    """A local path for the model (a remote model.pt is downloaded into the cache)."""
    from diffar.trainer.storage import is_remote, local_path, open_store

    if not is_remote(model_uri):
        return local_path(model_uri)
    uri = model_uri.rstrip("/")
    root, key = (uri.rsplit("/", 1)) if uri.endswith(".pt") else (uri, "export/model.pt")
    dest = Path(cache_dir) / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16] / "model.pt"
    open_store(root).get_file(key, dest)
    return dest


def _training(train_log: str | None, tcfg) -> dict | None:
    """The training summary from the trainer's step log, when the config names one."""
    if not train_log:
        return None
    from diffar.evaluator.results import parse_log, read_uri_text

    try:
        text = read_uri_text(train_log)
    except UserError as e:
        print(f"diffar eval: no training summary: {e}", file=sys.stderr)
        return None
    return training_summary(parse_log(text), tcfg.global_batch * tcfg.model.seq_len)


def _load_model(load_export, path: Path, device: torch.device):
    """The exported model, or one line saying that the file is not one (torch.load of another
    file fails with whatever its unpickler tripped over)."""
    import pickle
    import zipfile

    try:
        return load_export(path, device=device)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a diffar model export ({reason}); give a checkpoint dir holding "
            "export/model.pt, or that model.pt"
        ) from None


def results_uri(uri: str) -> str:
    """A .json URI as is; anything else is a directory that gets results.json."""
    uri = uri.rstrip("/")
    return uri if uri.endswith(".json") else f"{uri}/{RESULTS_NAME}"


def write_output(uri: str, data: bytes) -> str:
    from diffar.trainer.storage import open_store

    root, key = uri.rsplit("/", 1) if "/" in uri else (".", uri)
    open_store(root or "/").put_bytes(key, data)
    return uri


def _unique_tokens(train_cfg, tokens_seen: int, epoch: float) -> int | None:
    if train_cfg.data.unique_tokens:
        return int(train_cfg.data.unique_tokens)
    try:
        from diffar.trainer.storage import read_manifest_uri

        return int(read_manifest_uri(train_cfg.data.train_uri).total_tokens)
    except (UserError, OSError, ImportError):
        return int(tokens_seen / epoch) if epoch else None


def evaluate(cfg: EvalConfig, log=None) -> dict:
    """Run the evaluation `cfg` describes; writes results.json (and pushes) and returns it."""
    from diffar.evaluator.downstream import score_task
    from diffar.evaluator.tasks import load_task
    from diffar.evaluator.tokenizers import resolve_tokenizer
    from diffar.evaluator.validation import evaluate_validation
    from diffar.trainer.export import load_export
    from diffar.trainer.sizing import count_parameters, flops_per_token

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    device = resolve_device(cfg.device)
    exported = _load_model(load_export, fetch_model(cfg.model_uri, cfg.cache_dir), device)
    tcfg = exported.config
    model = exported.model
    runner = _Autocast(model, device.type) if use_bf16(cfg.precision, device) else model
    tok = resolve_tokenizer(
        cfg.tokenizer,
        [tcfg.data.train_uri, cfg.data_uri or tcfg.data.val_uri],
        tcfg.model.vocab_size,
        cfg.cache_dir,
    )
    if tok.vocab_size != tcfg.model.vocab_size:
        raise UserError(
            f"tokenizer {tok.name!r} has vocab {tok.vocab_size} but the model has "
            f"{tcfg.model.vocab_size}"
        )
    name = cfg.name or tcfg.name
    objective = tcfg.objective
    mask_id = tcfg.model.mask_token_id
    eps = tcfg.diffusion.mask_eps
    log(
        f"diffar eval {name}: {objective} model, step {exported.step}, "
        f"{exported.tokens_seen:,} tokens seen, on {device}"
    )

    validation: dict = {}
    data_uri = cfg.data_uri or tcfg.data.val_uri
    if data_uri:
        from diffar.trainer.shards import load_tokens
        from diffar.trainer.storage import read_manifest_uri, resolve_dataset

        want = None if cfg.val_sequences is None else cfg.val_sequences * tcfg.model.seq_len + 1
        total = read_manifest_uri(data_uri).total_tokens
        want = total if want is None else min(want, total)
        # Only the shards holding the first `want` tokens are fetched from a remote store.
        directory = resolve_dataset(
            data_uri, cfg.cache_dir, unique_tokens=want, vocab_size=tcfg.model.vocab_size
        )
        tokens = load_tokens(directory, want)
        estimates = evaluate_validation(
            runner,
            objective,
            tokens,
            seq_len=tcfg.model.seq_len,
            vocab_size=tok.vocab_size,
            token_bytes=tok.token_bytes(),
            mask_id=mask_id,
            samples=cfg.samples,
            eps=eps,
            max_sequences=cfg.val_sequences,
            chain_rule_sequences=cfg.chain_rule_sequences,
            stratified=cfg.stratified,
            masking=cfg.elbo_masking,
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
            show_progress=cfg.progress,
        )
        validation = {k: v.to_dict() for k, v in estimates.items()}
        if "elbo" in validation:
            validation["elbo"].update(
                samples=cfg.samples, stratified=cfg.stratified, masking=cfg.elbo_masking
            )
        for k, v in estimates.items():
            log(
                f"  val {k}: {v.loss:.4f} ± {v.stderr:.4f} nats/token, "
                f"{v.bits_per_byte:.4f} bits/byte ({v.sequences} sequences)"
            )
    else:
        log("  no validation data (set data_uri or the training config's data.val_uri): skipped")

    tasks: dict = {}
    for task_name in cfg.tasks:
        task = load_task(task_name, cfg.limit)
        res = score_task(
            runner,
            objective,
            task,
            tok,
            seq_len=tcfg.model.seq_len,
            mask_id=mask_id,
            scoring=cfg.mdm_scoring,
            masking=cfg.elbo_masking,
            samples=cfg.samples,
            eps=eps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            show_progress=cfg.progress,
        )
        res["scoring"] = "exact" if objective == "ar" else cfg.mdm_scoring
        tasks[task.name] = res
        norm = f", acc_norm {res['acc_norm']:.4f}" if "acc_norm" in res else ""
        log(f"  {task.name}: acc {res['acc']:.4f} ± {res['acc_stderr']:.4f}{norm} (n={res['n']})")

    primary = "nll" if objective == "ar" else "elbo"
    unique = _unique_tokens(tcfg, exported.tokens_seen, exported.epoch)
    results = {
        "format": RESULTS_FORMAT,
        "run": name,
        "objective": objective,
        "params": count_parameters(tcfg.model),
        "unique_tokens": unique,
        "epochs": float(exported.epoch),
        "epochs_planned": float(tcfg.epochs),
        "step": exported.step,
        "tokens_seen": exported.tokens_seen,
        "flops": flops_per_token(tcfg.model) * exported.tokens_seen,
        "loss": validation.get(primary, {}).get("loss"),
        "loss_stderr": validation.get(primary, {}).get("stderr"),
        "loss_estimator": primary,
        "validation": validation,
        "tasks": tasks,
        "model_uri": cfg.model_uri,
        "data_uri": data_uri,
        "tokenizer": tok.name,
        "device": str(device),
        "precision": "bf16" if use_bf16(cfg.precision, device) else "fp32",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "eval_seconds": round(time.time() - started, 3),
        "training": _training(cfg.train_log, tcfg),
        "config": cfg.model_dump(mode="json"),
    }
    out = results_uri(cfg.output_uri or default_output_uri(cfg.model_uri))
    results["results_uri"] = out
    write_output(out, json.dumps(_finite(results), indent=2).encode())
    log(f"  results: {out}")
    termination_log = os.environ.get("DIFFAR_TERMINATION_LOG")
    if termination_log:
        write_summary(Path(termination_log), results)

    gateway = cfg.pushgateway or _env_gateway()
    if gateway:
        from diffar.evaluator.pushgateway import push_results

        if push_results(results, gateway):
            log(f"  pushed to {gateway} (job=diffar-eval, run={name})")
    return results


def write_summary(path: Path, results: dict) -> None:
    try:
        path.write_text(summary(results))
    except OSError as e:
        print(f"diffar eval: cannot write the summary to {path}: {e.strerror}", file=sys.stderr)


def _env_gateway() -> str | None:
    return os.environ.get("DIFFAR_PUSHGATEWAY_URL") or None
