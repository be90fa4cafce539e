"""Greedy accuracy, mean@n and unbiased pass@k over a list of problems, overall and per level."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any

import torch

from dynamo_cli.algo.pass_at_k import pass_at_k
from dynamo_cli.config.eval import EvalSettings
from dynamo_cli.rollout.episodes import EPISODES
from dynamo_cli.rollout.hf import generate, stream_seed
from dynamo_cli.runtime.resources import BatchPlan, longest_prompt, plan_batch_sizes
from dynamo_cli.tasks.answers import RULES


def eval_subset(problems: list, max_problems: int | None) -> list:
    """At most `max_problems` problems, taken round-robin across levels so every level stays represented
    (test lists are grouped by level: a plain prefix would be the easiest level only). Order is kept."""
    if not max_problems or max_problems >= len(problems):
        return list(problems)
    by_level: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        by_level[p.level].append(i)
    queues = [list(reversed(rows)) for rows in by_level.values()]
    chosen: list[int] = []
    while len(chosen) < max_problems:
        for queue in queues:
            if queue and len(chosen) < max_problems:
                chosen.append(queue.pop())
    return [problems[i] for i in sorted(chosen)]


@torch.no_grad()
def evaluate(model, tokenizer, task, problems, *, settings: EvalSettings, max_new_tokens: int, seed: int,
             batch_size: int, dp=None) -> dict[str, Any]:
    """Sampling is counter-based on (seed, problem, sample): the result does not depend on batch sizes or on
    how many processes share the work. With `dp` (several processes) each rank generates for its share of
    the problems and every rank returns the whole result."""
    lo, hi = dp.shard(len(problems)) if dp is not None else (0, len(problems))
    mine = problems[lo:hi]
    prompts = [task.prompt_text(p, tokenizer) for p in mine]
    # a completion judged by the task, or (an environment task) a dialogue with it: rollout/episodes.py EPISODES
    episodes = EPISODES.build(task, task=task, generate=partial(generate, model, tokenizer), policy=model, tokenizer=tokenizer)
    greedy = episodes(mine, prompts, counts=torch.ones(len(prompts), dtype=torch.long),
                      max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=None,
                      max_batch_size=batch_size)
    greedy_ok, greedy_rules = greedy.rewards.tolist(), [RULES[k] for k in greedy.rules.tolist()]
    greedy_texts = greedy.rollouts.texts
    greedy_stats = [{name: float(v[i]) for name, v in greedy.stats.items()} for i in range(len(mine))]  # multi-turn: turns, ...
    n = settings.n_samples
    correct = [0] * len(mine)
    if n > 0:
        sampled = episodes(mine, prompts, counts=torch.full((len(prompts),), n, dtype=torch.long),
                           max_new_tokens=max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
                           seed=stream_seed(seed), streams=torch.arange(lo * n, hi * n), max_batch_size=batch_size)
        for i, reward in zip(sampled.rollouts.prompt_index.tolist(), sampled.rewards.tolist(), strict=True):
            correct[i] += int(reward > 0)
    if dp is not None and dp.distributed:
        shares = dp.gather_objects((greedy_ok, greedy_texts, greedy_rules, correct, greedy_stats))
        greedy_ok, greedy_texts, greedy_rules, correct, greedy_stats = ([x for share in shares for x in share[k]] for k in range(5))
    ks = sorted(k for k in settings.ks if k <= n)

    def summarise(rows: list[int]) -> dict[str, float]:
        stats: dict[str, float] = {"problems": len(rows), "greedy": sum(greedy_ok[i] for i in rows) / len(rows)}
        for name in greedy_stats[0] if greedy_stats else ():  # the greedy episodes' means: eval/turns, eval/tool_calls, ...
            stats[name] = sum(greedy_stats[i][name] for i in rows) / len(rows)
        if n > 0:
            stats["mean@n"] = sum(correct[i] for i in rows) / (n * len(rows))
            for k in ks:
                stats[f"pass@{k}"] = sum(pass_at_k(n, correct[i], k) for i in rows) / len(rows)
        return stats

    by_level = defaultdict(list)
    for i, p in enumerate(problems):
        by_level[p.level].append(i)
    return {
        "n_samples": n,
        "overall": summarise(list(range(len(problems)))),
        "levels": {level: summarise(rows) for level, rows in sorted(by_level.items())},
        "problems": [{"id": p.id, "level": p.level, "greedy": greedy_ok[i], "greedy_completion": greedy_texts[i],
                      "greedy_rule": greedy_rules[i], **greedy_stats[i],
                      **({"correct": correct[i]} if n else {})} for i, p in enumerate(problems)],
    }


def eval_metrics(result: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat, namespaced metrics for metrics.jsonl/W&B: eval/greedy_pass1, eval/mean@n, eval/pass@k, per level."""
    out = {}
    for scope, stats in [("", result["overall"]), *[(f"{lvl}/", s) for lvl, s in result["levels"].items()]]:
        out[f"{prefix}/{scope}greedy_pass1"] = stats["greedy"]
        for key, value in stats.items():
            if key not in ("problems", "greedy"):  # pass@k, mean@n and a multi-turn task's episode means (turns, ...)
                out[f"{prefix}/{scope}{key}"] = value
    return out


def plan_eval_batch(model, tokenizer, task, problems, *, settings: EvalSettings, max_new_tokens: int, device, memory_fraction: float,
                    world_size: int = 1) -> BatchPlan:
    """The eval's generation batch: `eval.batch_size`, or (auto) as many sequences as fit in memory."""
    most = -(-len(problems) // world_size) * max(1, settings.n_samples)
    return plan_batch_sizes(model, device, generation=settings.batch_size, training=None,
                            prompt_tokens=longest_prompt(tokenizer, task, problems),
                            new_tokens=max_new_tokens, most_generation=most, most_training=1, memory_fraction=memory_fraction)
