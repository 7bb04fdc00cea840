"""The DeepSpeed engine: ZeRO stage, precision, optimizer and schedule from a TrainConfig."""

from __future__ import annotations

import torch
from torch import nn

from diffar.trainer.config import TrainConfig
from diffar.trainer.distributed import DistEnv
from diffar.trainer.plan import RunPlan
from diffar.trainer.schedule import lr_multiplier


def use_bf16(cfg: TrainConfig, env: DistEnv) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")


def deepspeed_config(cfg: TrainConfig, env: DistEnv) -> dict:
    micro = cfg.micro_batch_for(env.world_size)
    return {
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": cfg.global_batch // (micro * env.world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": use_bf16(cfg, env)},
        "zero_optimization": {"stage": cfg.zero_stage},
        # We hand DeepSpeed torch's AdamW: DeepSpeed's own Adam ops are JIT-compiled C++/CUDA,
        # minutes of build on every fresh node, and fused torch AdamW is as fast on H100.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices (including the tied embedding), not the norms' gains: Megatron's rule.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(model: nn.Module, cfg: TrainConfig, plan: RunPlan, env: DistEnv):
    import deepspeed

    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay),
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=env.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(o, plan.warmup_steps, plan.scheduled_steps)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model.to(env.device),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, env),
    )
    return engine
