"""Bench d: the rollout engine against the bound of a bare batched forward-pass loop.

Engine: `dynamo_cli.rollout.hf.generate` (KV cache, counter-based sampling, EOS tracking, early stop) on a
fixed prompt batch with the counts a warmed-up VarianceAllocator gives (mixed group sizes), and with uniform
counts for comparison; throughput = valid completion tokens / seconds.
Bound: the same model, the same rows (same chunks, same left-padded prompts) and the same completion width Tc,
run as prefill + Tc − 1 cached decode steps feeding back the argmax, with no sampling, EOS handling or
bookkeeping; every one of its N × Tc slots counts as a token.
Padding waste: 1 − valid completion tokens / (N × Tc), the share of decode slots spent on finished rows.

    python -m bench.rollout_engine [--checkpoint DIR] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import (
    BenchResult,
    checkpoint,
    from_tree,
    load,
    print_result,
    prompt_batch,
    shown,
    warm_history,
)


@torch.no_grad()
def bare_loop(model, rows: list[list[int]], *, pad_id: int, steps: int, max_batch_size: int) -> float:
    """Seconds for prefill + (steps − 1) cached decode steps over `rows`, chunked like generate()."""
    cache_kwarg, cache_of, position_ids_from_mask = (from_tree(f"dynamo_cli.rollout.hf:{name}", f"dynamo_cli.rollout:{name}")
                                                     for name in ("cache_kwarg", "cache_of", "position_ids_from_mask"))

    model.eval()
    cache_key = cache_kwarg(model)
    start = time.perf_counter()
    for first in range(0, len(rows), max_batch_size):
        chunk = rows[first:first + max_batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        positions = position_ids_from_mask(mask)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        position = positions[:, -1:] + 1  # (B, 1)
        for _ in range(steps - 1):
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, position_ids=position, use_cache=True,
                        **{cache_key: cache_of(out)})
            position = position + 1
    return time.perf_counter() - start


def measure(model, tokenizer, prompts, counts: torch.Tensor, *, max_new_tokens: int, repeats: int, seed: int) -> dict:
    from dynamo_cli.rollout.hf import generate

    max_batch = 512  # sequences per chunk, as an explicit rollout.max_batch_size=512
    engine, bound, valid, slots = [], [], [], []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [encoded[i] for i in torch.repeat_interleave(torch.arange(len(prompts)), counts).tolist()]
    for r in range(repeats):
        t0 = time.perf_counter()
        rollouts = generate(model, tokenizer, prompts, counts=counts, max_new_tokens=max_new_tokens, temperature=1.0,
                            top_p=1.0, seed=seed + r, max_batch_size=max_batch)
        seconds = time.perf_counter() - t0
        width = rollouts.completion_mask.shape[1]  # Tc of this draw
        engine.append(int(rollouts.completion_mask.sum()) / seconds)
        valid.append(int(rollouts.completion_mask.sum()))
        slots.append(rollouts.completion_mask.numel())
        bound.append(len(rows) * width / bare_loop(model, rows, pad_id=tokenizer.pad_token_id, steps=width, max_batch_size=max_batch))
    return {"N": len(rows), "engine": statistics.median(engine), "bound": statistics.median(bound),
            "waste": 1 - sum(valid) / sum(slots), "width": slots[-1] // len(rows)}


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SFT checkpoint dir (default: the latest under outputs/, else train one)")
    parser.add_argument("--prompts", type=int, help="P (default 64; quick 8)")
    parser.add_argument("--n", type=int, help="mean rollouts per prompt (default 8; quick 4)")
    parser.add_argument("--repeats", type=int, help="timed repeats, median reported (default 5; quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    args = parser.parse_args(argv)
    P, n = args.prompts or (8 if args.quick else 64), args.n or (4 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 5)
    ckpt, how = checkpoint(args.checkpoint, quick=args.quick)
    torch.manual_seed(args.seed)
    model, tokenizer, task = load(ckpt)
    from dynamo_cli.config.task import MathTaskConfig

    max_new_tokens = MathTaskConfig().max_new_tokens
    problems = prompt_batch(task, P, seed=args.seed)
    allocator, prompts = warm_history(model, tokenizer, task, problems, n=n, rollouts_per_prompt=8, seed=args.seed,
                                      max_new_tokens=max_new_tokens)
    mixed = allocator.allocate([p.id for p in problems]).counts
    results = {}
    for name, counts in (("uniform", torch.full((P,), n, dtype=torch.long)), ("allocator (mixed)", mixed)):
        measure(model, tokenizer, prompts, counts, max_new_tokens=max_new_tokens, repeats=1, seed=args.seed)  # warm-up
        results[name] = measure(model, tokenizer, prompts, counts, max_new_tokens=max_new_tokens, repeats=repeats, seed=args.seed)
    m = results["allocator (mixed)"]
    ratio = m["engine"] / m["bound"]
    command = "python -m bench.rollout_engine" + (" --quick" if args.quick else "")
    lines = [
        (f"Checkpoint `{shown(ckpt)}` ({how}); {P} prompts, budget {n}·{P} = {n * P} rollouts, task max_new_tokens "
        f"{max_new_tokens}; allocator counts {int(mixed.min())}–{int(mixed.max())}; median of {repeats} runs, CPU, "
        f"{torch.get_num_threads()} torch thread(s)."), "",
        "| counts | rows N | width Tc | engine tokens/s | bound tokens/s | engine / bound | padding waste |",
        "|---|--:|--:|--:|--:|--:|--:|",
        *[f"| {name} | {r['N']} | {r['width']} | {r['engine']:,.0f} | {r['bound']:,.0f} | {r['engine'] / r['bound']:.3f} | "
          f"{r['waste']:.3f} |" for name, r in results.items()], "",
        (f"**Engine / bound throughput under mixed group sizes: {ratio:.3f}; padding waste {m['waste']:.3f}.** The bound "
        "counts every slot as a token, so the ratio folds in both the sampling/bookkeeping cost and the padding waste."),
    ]
    result = BenchResult(name="d. Rollout engine", command=command, lines=lines,
                         ratios={"engine_over_bound_mixed": ratio, "padding_waste_mixed": m["waste"],
                                 "engine_over_bound_uniform": results["uniform"]["engine"] / results["uniform"]["bound"]})
    print_result(result)
    return result


if __name__ == "__main__":
    main()
