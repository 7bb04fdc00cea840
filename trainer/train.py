"""The training run, top to bottom: data, model, engine, resume, loop, checkpoints, export."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffar.trainer import checkpoint
from diffar.trainer.config import TrainConfig
from diffar.trainer.distributed import DistEnv, init_distributed
from diffar.trainer.engine import build_engine
from diffar.trainer.export import EXPORT_NAME, save_export
from diffar.trainer.loader import DevicePrefetcher
from diffar.trainer.metrics import ConsoleProgress, LossLog, StepReport, TrainMetrics, peak_flops
from diffar.trainer.model import Transformer
from diffar.trainer.objectives import build_objective
from diffar.trainer.plan import RunPlan, plan_run
from diffar.trainer.sampler import EpochSampler
from diffar.trainer.shards import load_tokens, read_manifest
from diffar.trainer.validation import validation_loss, validation_windows


def load_unique_tokens(cfg: TrainConfig):
    """The first U training tokens, fetched and verified into the cache when remote."""
    from diffar.trainer.storage import resolve_dataset

    directory = resolve_dataset(
        cfg.data.train_uri,
        cfg.data.cache_dir,
        unique_tokens=cfg.data.unique_tokens,
        vocab_size=cfg.model.vocab_size,
    )
    return load_tokens(directory, cfg.data.unique_tokens)


def load_validation_windows(cfg: TrainConfig) -> torch.Tensor | None:
    if cfg.validation.interval is None:
        return None
    from diffar.trainer.storage import resolve_dataset

    directory = resolve_dataset(
        cfg.data.val_uri, cfg.data.cache_dir, vocab_size=cfg.model.vocab_size
    )
    total = read_manifest(directory).total_tokens
    tokens = load_tokens(directory, min(total, cfg.validation.max_tokens))
    return validation_windows(tokens, cfg.model.seq_len)


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    # Every source of randomness in a micro-step (dropout, MDM's t and mask) is derived from
    # (seed, step, rank, micro): a resumed run replays exactly what the uninterrupted one drew.
    # SeedSequence hashes the tuple, so no two (step, rank, micro) share a stream at any scale.
    return int(
        np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0] >> 1
    )


def train(cfg: TrainConfig) -> RunPlan:
    env = init_distributed()
    cfg.check_world_size(env.world_size)
    tokens = load_unique_tokens(cfg)
    plan = plan_run(cfg, unique_tokens=len(tokens))
    objective = build_objective(cfg)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = Transformer(cfg.model, causal=objective.causal)
    engine = build_engine(model, cfg, plan, env)

    sampler = EpochSampler(
        tokens, cfg.model.seq_len, cfg.global_batch, cfg.seed, env.rank, env.world_size
    )
    place = checkpoint.place_for(cfg)
    ckpt_dir = place.local if place else None
    if place:
        checkpoint.pull(place)
    position = checkpoint.load_latest(engine, ckpt_dir) if ckpt_dir else None
    step, tokens_seen = 0, 0
    if position is not None:
        checkpoint.check_resumable(position, cfg, place.uri)
        sampler.load_state_dict(position.sampler)
        step, tokens_seen = position.step, position.tokens_seen

    metrics = progress = loss_log = None
    if env.is_main:
        metrics = TrainMetrics(cfg.name, cfg.objective, cfg.metrics.port)
        metrics.total_steps.set(plan.total_steps)
        progress = ConsoleProgress(plan.total_steps, step)
        loss_log = LossLog(cfg.metrics.log_file, step)
        where = f", metrics on :{metrics.port}" if metrics.port else ""
        resumed = f"resumed at step {step}" if position else "from scratch"
        if step >= plan.total_steps:
            resumed = f"already complete at step {step}, nothing to train"
        progress.message(
            f"diffar train {cfg.name}: {cfg.objective} {plan.params / 1e6:.1f}M params, "
            f"{plan.total_steps} steps on {env.world_size} rank(s), {resumed}{where}"
        )

    val_windows = load_validation_windows(cfg)
    batches = DevicePrefetcher(sampler, env.device)  # runs the sampler one batch ahead
    micro = cfg.micro_batch_for(env.world_size)
    tokens_per_step = plan.tokens_per_step
    peak = peak_flops(env.device) * env.world_size
    pending: list[tuple[int, torch.Tensor, float]] = []  # losses stay on device until logged
    window_start, window_steps = time.perf_counter(), 0
    gen = torch.Generator(device=env.device)

    while step < plan.total_steps:
        batch = batches.next_batch()
        lr = engine.get_lr()[0]
        step_loss = torch.zeros((), device=env.device)
        for i, mb in enumerate(batch.split(micro)):
            seed = step_seed(cfg.seed, step, env.rank, i)
            torch.manual_seed(seed)
            gen.manual_seed(seed)
            loss = objective.loss(engine, mb, gen)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach()
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1
        pending.append((step, step_loss / (len(batch) // micro), lr))

        last = step == plan.total_steps
        validate_now = val_windows is not None and (step % cfg.validation.interval == 0 or last)
        if (
            step % cfg.metrics.log_interval == 0
            or last
            or validate_now
            or (ckpt_dir and step % cfg.checkpoint.interval == 0)
        ):
            losses = _mean_over_ranks(torch.stack([loss for _, loss, _ in pending]), env)
            elapsed = time.perf_counter() - window_start
            tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
            if env.is_main:
                grad_norm = engine.get_global_grad_norm()
                report = StepReport(
                    step=step,
                    total_steps=plan.total_steps,
                    epoch=batches.epoch,
                    loss=float(losses[-1]),
                    lr=pending[-1][2],
                    # DeepSpeed keeps the norm only with ZeRO or mixed precision (not stage-0 fp32).
                    grad_norm=float(grad_norm) if grad_norm is not None else None,
                    tokens_seen=tokens_seen,
                    tokens_per_second=tps,
                    mfu=tps * plan.flops_per_token / peak,
                    eta_seconds=(plan.total_steps - step) * elapsed / window_steps,
                )
                metrics.update(report, window_steps * tokens_per_step)
                progress.report(report, window_steps)
                rows = [
                    {"step": s, "loss": float(v), "lr": lr}
                    for (s, _, lr), v in zip(pending, losses, strict=True)
                ]
                # The window's training time (validation excluded): summed over the log it
                # is the run's training wall time, resumes included (evaluator/results.py).
                rows[-1]["seconds"] = round(elapsed, 4)
                loss_log.write(rows)
            pending, window_start, window_steps = [], time.perf_counter(), 0

        if validate_now:
            total = validation_loss(
                engine,
                objective,
                val_windows,
                cfg.validation.batch_size,
                env.rank,
                env.world_size,
                env.device,
            )
            if env.world_size > 1:
                import deepspeed

                deepspeed.comm.all_reduce(total)
            if env.is_main:
                val = float(total[0] / total[1])
                metrics.val_loss.set(val)
                loss_log.write([{"step": step, "epoch": batches.epoch, "val_loss": val}])
                progress.message(
                    f"step {step} epoch {batches.epoch:.2f}: validation loss {val:.4f}"
                )
            window_start = time.perf_counter()  # validation time is not training throughput

        if ckpt_dir and (step % cfg.checkpoint.interval == 0 or last):
            position = checkpoint.RunPosition(
                step, tokens_seen, batches.state_dict(), checkpoint.fingerprint(cfg)
            )
            tag = checkpoint.save(engine, ckpt_dir, position, cfg.checkpoint.keep, env.is_main)
            checkpoint.push(place, tag, cfg.checkpoint.keep, env.local_rank, env.is_main, _barrier)
            if env.is_main:
                metrics.last_ckpt.set_to_current_time()
                progress.message(f"checkpoint {tag} saved to {place.uri}")

    if place:
        _export(engine, cfg, ckpt_dir / EXPORT_NAME, step, tokens_seen, batches.epoch, env)
        if env.is_main:
            checkpoint.push_file(place, EXPORT_NAME)
    if env.is_main:
        progress.close()
        progress.message(f"diffar train {cfg.name}: done, {step} steps, {tokens_seen:,} tokens")
    _shutdown()
    return plan


def _shutdown() -> None:
    """Leave the process group together: a rank that exits while a peer's gloo threads still
    talk to it can abort that peer ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _barrier() -> None:
    import deepspeed

    deepspeed.comm.barrier()


def _mean_over_ranks(losses: torch.Tensor, env: DistEnv) -> list[float]:
    if env.world_size > 1:
        import deepspeed

        deepspeed.comm.all_reduce(losses)
        losses = losses / env.world_size
    return losses.tolist()


def _export(
    engine, cfg: TrainConfig, path: Path, step: int, tokens_seen: int, epoch: float, env: DistEnv
) -> None:
    if cfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank gathers
    else:
        state = engine.module.state_dict()
    if env.is_main:
        save_export(path, state, cfg, step, tokens_seen, epoch)
