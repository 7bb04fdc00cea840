"""Trainer step throughput and MFU, ours vs a reference implementation, side by side.

    python bench/bench_trainer.py [--preset tiny] [--seq-len 256] [--batch 4] [--reps 7] [--json]

One training step is forward + backward + gradient clipping (1.0) + AdamW (the paper's betas,
eps and weight decay), on the same batch, in the same precision (fp32 on CPU), for both
objectives (AR: causal; MDM: bidirectional attention, the paper's masking and loss). Four sides:

  engine     our trainer's step: diffar's Transformer inside the DeepSpeed engine that
             `diffar train` builds (ZeRO 1, torch AdamW), `objective.loss` / `engine.backward` /
             `engine.step`, exactly as trainer/train.py calls them (the fused loss);
  model      diffar's Transformer with a plain torch loop (the same loss, clip and AdamW);
  unfused    the same model with the loss taken from its full logits: the step before the fused
             unembedding + cross-entropy (trainer/fused_ce.py), measured beside it;
  reference  Hugging Face transformers' LlamaForCausalLM configured to the same dims, with our
             weights copied in (logits checked equal before timing), the same loss from its
             logits, clip, AdamW;
  compiled   (--compile) `model` under torch.compile (inductor), compiled during the warm-up.

The machine is shared and noisy (2 cores, other jobs): by default torch runs one thread and each
step is timed in CPU seconds of this process (`time.process_time`), which other jobs' load barely
moves, beside the wall clock; the sides are interleaved step by step (the order rotates every
round) and medians are reported. tokens/s and MFU are per CPU-second of one thread. MFU = tokens/s x FLOPs/token / peak, with FLOPs/token =
6N + 12 * n_layers * L * h (N: the weight matrices, tied unembedding included) and the peak a
dense fp32 matmul measured in the same run. Writes bench/results/trainer-cpu-<preset>.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

sys.path.insert(0, str(HERE))
import stepbench as common  # noqa: E402
import torch  # noqa: E402
from benchio import stamp, write_report  # noqa: E402
from stepbench import LossFromLogits, ModelConfig, Stepper, Transformer  # noqa: E402

SIDES = ("engine", "model", "unfused", "reference")  # plus "compiled" with --compile


class EngineStepper:
    """The trainer's own step: DeepSpeed engine as `diffar.trainer.engine.build_engine` makes it."""

    def __init__(self, model, objective: str, cfg: ModelConfig, batch: int, zero_stage: int = 1):
        from diffar.trainer.config import TrainConfig
        from diffar.trainer.distributed import init_distributed
        from diffar.trainer.engine import build_engine
        from diffar.trainer.plan import plan_run

        env = init_distributed()
        train_cfg = TrainConfig(
            objective=objective,
            model=cfg,
            data={"train_uri": "file:///unused", "unique_tokens": 1000 * batch * cfg.seq_len},
            global_batch=batch,
            micro_batch=batch,
            precision="fp32" if env.device.type == "cpu" else "bf16",
            zero_stage=zero_stage,
        )
        plan = plan_run(train_cfg)
        self.engine = build_engine(model, train_cfg, plan, env)
        self.obj = common.objective_for(cfg, objective)
        self.gen = torch.Generator(device=env.device)
        self.gen.manual_seed(0)

    def step(self, windows: torch.Tensor) -> torch.Tensor:
        loss = self.obj.loss(self.engine, windows, self.gen)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()


def run(args) -> dict:
    sides = SIDES + (("compiled",) if args.compile else ())
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = ModelConfig(preset=args.preset, seq_len=args.seq_len, dropout=args.dropout)
    ref_version = common.reference_available()
    if ref_version is None:
        sys.exit(
            "transformers is not installed (the reference): "
            ".venv/bin/pip install -c constraints.txt transformers"
        )
    fpt = common.model_flops_per_token(cfg)
    tokens = args.batch * args.seq_len
    print(f"model: {common.describe(cfg)}, dropout {args.dropout}")
    print(
        f"batch {args.batch} x {args.seq_len} = {tokens} tokens/step, fp32, {fpt:.4g} FLOPs/token"
    )
    peaks = [common.measure_peak(device, torch.float32, n=1024, cpu_time=True) for _ in range(3)]
    peak = statistics.median(peaks)
    print(
        f"measured fp32 matmul peak, {torch.get_num_threads()} thread(s) (1024^3, median of "
        f"3x10, CPU time): {peak / 1e9:.1f} GFLOP/s"
    )

    results = {}
    for objective in args.objectives:
        causal = objective == "ar"
        err = common.check_equivalent(cfg, causal, device)
        torch.manual_seed(args.seed)
        ours = Transformer(cfg, causal)
        ref = common.build_reference(cfg, causal)
        common.copy_weights(ours, ref)
        steppers = {
            "engine": EngineStepper(
                copy.deepcopy(ours), objective, cfg, args.batch, args.zero_stage
            ),
            "model": Stepper(ours, objective, cfg, device),
            "unfused": Stepper(LossFromLogits(copy.deepcopy(ours)), objective, cfg, device),
            "reference": Stepper(ref, objective, cfg, device),
        }
        if args.compile:
            twin = copy.deepcopy(ours)
            steppers["compiled"] = Stepper(torch.compile(twin), objective, cfg, device)
        gen = torch.Generator().manual_seed(args.seed)
        batches = [
            torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
            for _ in range(args.warmup + args.reps)
        ]
        first = {}
        for i in range(args.warmup):
            for side, s in steppers.items():
                loss = s.step(batches[i])
                first.setdefault(side, float(loss))
        cpu = {side: [] for side in sides}
        wall = {side: [] for side in sides}
        for r in range(args.reps):
            k = r % len(sides)
            order = sides[k:] + sides[:k]
            for side in order:
                t, c = time.perf_counter(), time.process_time()
                steppers[side].step(batches[args.warmup + r])
                cpu[side].append(time.process_time() - c)
                wall[side].append(time.perf_counter() - t)
        row = {"logit_max_abs_diff": err, "first_step_loss": first}
        for side in sides:
            med = statistics.median(cpu[side])
            tps = tokens / med
            row[side] = {
                "step_cpu_s_median": med,
                "step_cpu_s_all": cpu[side],
                "step_wall_s_median": statistics.median(wall[side]),
                "step_wall_s_all": wall[side],
                "tokens_per_s": tps,
                "tokens_per_s_wall": tokens / statistics.median(wall[side]),
                "mfu": tps * fpt / peak,
            }
        ref_tps = row["reference"]["tokens_per_s"]
        row["ratio_engine_vs_reference"] = row["engine"]["tokens_per_s"] / ref_tps
        row["ratio_model_vs_reference"] = row["model"]["tokens_per_s"] / ref_tps
        row["ratio_unfused_vs_reference"] = row["unfused"]["tokens_per_s"] / ref_tps
        row["ratio_fused_vs_unfused"] = (
            row["model"]["tokens_per_s"] / row["unfused"]["tokens_per_s"]
        )
        if args.compile:
            row["ratio_compiled_vs_reference"] = row["compiled"]["tokens_per_s"] / ref_tps
            row["ratio_compiled_vs_model"] = (
                row["compiled"]["tokens_per_s"] / row["model"]["tokens_per_s"]
            )
        results[objective] = row
        del steppers

    print()
    print(
        f"{'objective':<9} {'side':<10} {'tokens/s':>9} {'MFU':>7} {'cpu s':>7} {'ours/ref':>9}"
        f"   {'wall s':>7} {'ours/ref':>8}"
    )
    for objective, row in results.items():
        for side in sides:
            r = row[side]
            ref = row["reference"]
            ratio = wall_ratio = ""
            if side != "reference":
                ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.3f}"
                wall_ratio = f"{r['tokens_per_s_wall'] / ref['tokens_per_s_wall']:.3f}"
            print(
                f"{objective:<9} {side:<10} {r['tokens_per_s']:>9.0f} {r['mfu']:>7.2%} "
                f"{r['step_cpu_s_median']:>7.3f} {ratio:>9}   {r['step_wall_s_median']:>7.3f} "
                f"{wall_ratio:>8}"
            )
        losses = ", ".join(f"{k} {v:.5f}" for k, v in row["first_step_loss"].items())
        print(f"{'':<9} first-step loss: {losses}; logits max diff {row['logit_max_abs_diff']:.2g}")
        print(
            f"{'':<9} fused loss / loss from full logits (model / unfused): "
            f"{row['ratio_fused_vs_unfused']:.3f}x"
        )

    head = stamp("trainer")
    head["machine"].update(device="cpu", torch_threads=torch.get_num_threads())
    return {
        **head,
        "versions": {"torch": torch.__version__, "transformers": ref_version},
        "model": cfg.model_dump(),
        "params": common.count_parameters(cfg),
        "flops_per_token": fpt,
        "flops_formula": "6N + 12 * n_layers * L * h",
        "batch": args.batch,
        "seq_len": args.seq_len,
        "precision": "fp32",
        "reps": args.reps,
        "engine_zero_stage": args.zero_stage,
        "sides": list(sides),
        "timing": "median CPU seconds of this process per step (time.process_time), interleaved",
        "peak_flops": peak,
        "peak_flops_all": peaks,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0, help="0: HF Llama has no hidden dropout")
    ap.add_argument("--objectives", type=lambda s: s.split(","), default=["ar", "mdm"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zero-stage", type=int, default=1, help="the engine's (trainer default 1)")
    ap.add_argument(
        "--compile", action="store_true", help="add our model under torch.compile (slow start)"
    )
    ap.add_argument("--out", type=Path, help="default: bench/results/trainer-cpu-<preset>.json")
    ap.add_argument("--json", action="store_true", help="print the JSON too")
    args = ap.parse_args(argv)
    report = run(args)
    args.out = args.out or HERE / "results" / f"trainer-cpu-{args.preset}.json"
    write_report(report, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
