"""Bench a: variance of the policy-gradient estimate across independent rollout draws, variance vs uniform allocation.

Fixed: one checkpoint, one batch of P prompts, one budget B = n·P, one success history (a shared warm-up draw
that the variance allocator reads, so its counts are fixed too). Then R independent rollout draws per
allocation; for each, the flattened gradient of the GRPO loss (PPO-clip at ratio 1, token mean, no modulation)
exactly as `dynamo train` computes it. The total variance is the trace of the gradients' covariance,

    tr Cov = Σ_r ||g_r − ḡ||² / (R − 1) = (tr G − 1ᵀG1 / R) / (R − 1),   G = g gᵀ (the R×R Gram matrix),

and a bootstrap over draws (resampling rows/columns of G) gives a 95% interval for the ratio.
The two allocations weight prompts differently, so their mean gradients differ too: the relative noise
tr Cov / ||ḡ||² is reported beside the raw ratio.

    python -m bench.grad_variance [--checkpoint DIR] [--draws R] [--quick]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.common import (
    BenchResult,
    checkpoint,
    fmt,
    load,
    print_result,
    prompt_batch,
    shown,
    warm_history,
)


def flat_gradient(model, tokenizer, task, problems, prompts, counts: torch.Tensor, *, seed: int,
                  max_new_tokens: int, micro_batch_size: int) -> tuple[torch.Tensor, float]:
    """One draw: generate Σ counts rollouts, GRPO advantages, the loss's gradient flattened (D,). And the
    fraction of groups with zero signal (all rewards equal)."""
    from dynamo_cli.algo.advantages.grpo import grpo_advantages
    from dynamo_cli.algo.terms.base import aggregate
    from dynamo_cli.algo.terms.ppo_clip import ppo_clip_loss
    from dynamo_cli.config.algorithm import AlgorithmConfig
    from dynamo_cli.rollout.episodes import score
    from dynamo_cli.rollout.hf import generate
    from dynamo_cli.rollout.policy_stats import completion_token_stats

    algo = AlgorithmConfig()
    rollouts = generate(model, tokenizer, prompts, counts=counts, max_new_tokens=max_new_tokens, temperature=1.0,
                        top_p=1.0, seed=seed, max_batch_size=512)
    rewards = score(task, problems, rollouts)[0]  # (rewards, rules[, faults]): also the baseline tree's score (bench f)
    advantages, zero = grpo_advantages(rewards=rewards, group_index=rollouts.prompt_index, num_groups=len(problems))
    num_tokens, num_seqs = int(rollouts.completion_mask.sum()), len(rollouts)
    model.zero_grad(set_to_none=True)
    model.train()
    for start in range(0, num_seqs, micro_batch_size):  # gradient accumulation, as in stages/update.py
        rows = slice(start, start + micro_batch_size)
        mask = rollouts.completion_mask[rows]
        logprobs, _ = completion_token_stats(model, input_ids=rollouts.input_ids[rows], attention_mask=rollouts.attention_mask[rows],
                                             prompt_width=rollouts.prompt_width, temperature=1.0, with_entropy=False)
        per_token, _ = ppo_clip_loss(logprobs=logprobs, old_logprobs=logprobs.detach(), advantages=advantages[rows, None] * mask,
                                     mask=mask, eps_low=algo.eps_low, eps_high=algo.eps_high)
        aggregate(per_token=per_token, mask=mask, mode="token_mean", num_tokens=num_tokens, num_sequences=num_seqs).backward()
    grad = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])
    zero_groups = torch.zeros(len(problems)).index_add_(0, rollouts.prompt_index, zero.float()).gt(0).float().mean().item()
    return grad, zero_groups


def trace_cov(gram: torch.Tensor) -> float:
    """tr Cov of the R draws from their Gram matrix (R, R)."""
    r = gram.shape[0]
    return float((gram.trace() - gram.sum() / r) / (r - 1))


def mean_sq_norm(gram: torch.Tensor) -> float:
    """||ḡ||² = 1ᵀG1 / R²."""
    return float(gram.sum() / gram.shape[0] ** 2)


def bootstrap_ratio(num: torch.Tensor, den: torch.Tensor, *, stat, samples: int, seed: int) -> tuple[float | None, float | None]:
    """95% percentile interval of stat(num)/stat(den), resampling each method's draws independently."""
    g = torch.Generator().manual_seed(seed)
    ratios = []
    for _ in range(samples):
        i = torch.randint(num.shape[0], (num.shape[0],), generator=g)
        j = torch.randint(den.shape[0], (den.shape[0],), generator=g)
        d = stat(den[j][:, j])
        if d > 0:
            ratios.append(stat(num[i][:, i]) / d)
    if not ratios:
        return None, None
    q = torch.quantile(torch.tensor(ratios, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(q[0]), float(q[1])


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.grad_variance", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SFT checkpoint dir (default: the latest under outputs/, else train one)")
    parser.add_argument("--prompts", type=int, help="P, prompts in the fixed batch (default 64; quick 8)")
    parser.add_argument("--n", type=int, help="mean rollouts per prompt: budget B = n·P (default 8; quick 4)")
    parser.add_argument("--draws", type=int, help="R, independent rollout draws per allocation (default 24; quick 4)")
    parser.add_argument("--warmup", type=int, help="warm-up rollouts per prompt for the success history (default 16; quick 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    args = parser.parse_args(argv)
    P = args.prompts or (8 if args.quick else 64)
    n = args.n or (4 if args.quick else 8)
    R = args.draws or (4 if args.quick else 24)
    warmup = args.warmup or (8 if args.quick else 16)
    ckpt, how = checkpoint(args.checkpoint, quick=args.quick)
    torch.manual_seed(args.seed)
    model, tokenizer, task = load(ckpt)
    max_new_tokens = task_max_new_tokens()
    problems = prompt_batch(task, P, seed=args.seed)
    allocator, prompts = warm_history(model, tokenizer, task, problems, n=n, rollouts_per_prompt=warmup, seed=args.seed,
                                      max_new_tokens=max_new_tokens)
    allocations = {"uniform": torch.full((P,), n, dtype=torch.long), "variance": allocator.allocate([p.id for p in problems]).counts}

    start = time.perf_counter()
    grams, zero = {}, {}
    for name, counts in allocations.items():
        grads, zeros = [], []
        for r in range(R):  # the same R sampling seeds for both allocations
            grad, z = flat_gradient(model, tokenizer, task, problems, prompts, counts,
                                    seed=10_000 * (args.seed + 1) + r,
                                    max_new_tokens=max_new_tokens, micro_batch_size=64)
            grads.append(grad.double())
            zeros.append(z)
        g = torch.stack(grads)  # (R, D)
        grams[name], zero[name] = g @ g.T, sum(zeros) / R  # (R, R): everything below needs only inner products
    seconds = time.perf_counter() - start

    stats = {name: {"trace": trace_cov(G), "mean_sq": mean_sq_norm(G)} for name, G in grams.items()}
    signal = stats["uniform"]["trace"] > 0  # 0: every group of every draw had equal rewards, no gradient at all
    ratio = stats["variance"]["trace"] / stats["uniform"]["trace"] if signal else None
    rel = {name: s["trace"] / s["mean_sq"] if s["mean_sq"] > 0 else None for name, s in stats.items()}
    rel_ratio = rel["variance"] / rel["uniform"] if rel["variance"] is not None and rel["uniform"] else None
    low, high = bootstrap_ratio(grams["variance"], grams["uniform"], stat=trace_cov, samples=2000, seed=args.seed) if signal else (None, None)
    counts = allocations["variance"]
    command = "python -m bench.grad_variance" + (" --quick" if args.quick else "")
    lines = [
        (f"Checkpoint `{shown(ckpt)}` ({how}); {P} prompts, budget B = {n}·{P} = {n * P} rollouts, {R} independent draws per "
        f"allocation after a shared warm-up of {warmup} rollouts per prompt; variance allocation gave counts "
        f"{int(counts.min())}–{int(counts.max())} ({int((counts == counts.min()).sum())} prompts at the minimum). "
        f"{seconds:.0f} s."), "",
        "| allocation | tr Cov(g) | ‖mean g‖² | tr Cov / ‖mean g‖² | groups with zero signal |",
        "|---|--:|--:|--:|--:|",
        *[f"| {name} | {stats[name]['trace']:.4g} | {stats[name]['mean_sq']:.4g} | {fmt(rel[name], 2)} | {zero[name]:.2f} |"
          for name in allocations],
        "",
        f"**Gradient variance, variance / uniform allocation: {fmt(ratio)}** (bootstrap 95% interval over draws "
        f"{fmt(low)}–{fmt(high)}); relative noise (tr Cov / ‖mean g‖²) ratio {fmt(rel_ratio)}. Below 1 means variance "
        "allocation gives a less noisy gradient at the same budget."
        + ("" if signal else " n/a here: no draw had a group with unequal rewards (the checkpoint solves none or all)."),
    ]
    result = BenchResult(name="a. Gradient variance", command=command, lines=lines,
                         ratios={"grad_variance_variance_over_uniform": ratio, "relative_noise_variance_over_uniform": rel_ratio})
    print_result(result)
    return result


def task_max_new_tokens() -> int:
    from dynamo_cli.config.task import MathTaskConfig

    return MathTaskConfig().max_new_tokens


if __name__ == "__main__":
    main()
