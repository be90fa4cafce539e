"""Greedy accuracy, mean@n and unbiased pass@k over a list of problems, overall and per level."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any, Callable

import torch

from dynamo_cli.algo.pass_at_k import pass_at_k
from dynamo_cli.config.eval import EvalSettings
from dynamo_cli.rollout.episodes import EPISODES
from dynamo_cli.rollout.hf import PolicyRollouts, generate, stream_seed
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


def generation_batches(lengths: list[int], counts: list[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """The batches rollout/hf.py's `generate` makes of counts[i] rows of prompt i (lengths[i]: its prompt's tokens), each as
    runs (prompt, first sample, samples): the rows in prompt order, stably sorted by prompt length when they fill more than
    one batch, cut every batch_size rows. Generating these one at a time gives exactly the batches of one call, so the
    same completions to the bit, and eval can say how far it is between them.
    lengths [5, 3, 5], counts [2, 2, 2], batch_size 4: rows (1,0) (1,1) (0,0) (0,1) | (2,0) (2,1) ->
    [[(1, 0, 2), (0, 0, 2)], [(2, 0, 2)]]."""
    rows = [(i, j) for i, count in enumerate(counts) for j in range(count)]
    if len(rows) > batch_size:
        rows.sort(key=lambda row: lengths[row[0]])  # stable, as generate's torch.sort(stable=True)
    batches = []
    for start in range(0, len(rows), batch_size):
        runs: list[list[int]] = []
        for i, j in rows[start:start + batch_size]:
            if runs and runs[-1][0] == i and runs[-1][1] + runs[-1][2] == j:
                runs[-1][2] += 1
            else:
                runs.append([i, j, 1])
        batches.append([(i, j, k) for i, j, k in runs])
    return batches


def episodes_by_batch(episodes, problems: list, prompts: list[str], *, counts: list[int], first_streams: list[int] | None,
                      lengths: list[int] | None, batch_size: int, advance: Callable[[int], None], **generation
                      ) -> list[tuple[float, str, str, dict]]:
    """(reward, rule, text, per-row stats) of each of problem i's counts[i] rows, problem by problem, generated in
    generation_batches(lengths, ...) one call each (lengths None: all in one call), `advance(rows)` after each; row (i, j)
    samples from stream first_streams[i] + j."""
    batches = generation_batches(lengths, counts, batch_size) if lengths is not None else [[(i, 0, c) for i, c in enumerate(counts)]]
    rows: dict[tuple[int, int], tuple[float, str, str, dict]] = {}
    for batch in batches:
        keys = [(i, j + t) for i, j, k in batch for t in range(k)]
        out = episodes([problems[i] for i, _, _ in batch], [prompts[i] for i, _, _ in batch],
                       counts=torch.tensor([k for _, _, k in batch], dtype=torch.long),
                       streams=None if first_streams is None else torch.tensor([first_streams[i] + j for i, j in keys], dtype=torch.long),
                       max_batch_size=batch_size, **generation)
        for r, key in enumerate(keys):
            rows[key] = (float(out.rewards[r]), RULES[int(out.rules[r])], out.rollouts.texts[r],
                         {name: float(v[r]) for name, v in out.stats.items()})
        advance(len(keys))
    return [rows[(i, j)] for i, count in enumerate(counts) for j in range(count)]


@torch.no_grad()
def evaluate(model, tokenizer, task, problems, *, settings: EvalSettings, max_new_tokens: int, seed: int,
             batch_size: int, dp=None, engine=None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sampling is counter-based on (seed, problem, sample): the result does not depend on batch sizes or on
    how many processes share the work. With `dp` (several processes) each rank generates for its share of
    the problems and every rank returns the whole result. `engine`: the run's rollout engine (protocols.RolloutEngine:
    vLLM, or rollout=hf's copy in model.dtype) generates instead of `model`'s own loop. `progress(done, total)`: called
    as this rank's sequences are generated and judged (tracking/tracker.py EvalProgress), after each batch."""
    lo, hi = dp.shard(len(problems)) if dp is not None else (0, len(problems))
    mine = problems[lo:hi]
    prompts = [task.prompt_text(p, tokenizer) for p in mine]
    # a completion judged by the task, or (an environment task) a dialogue with it: rollout/episodes.py EPISODES
    generator = engine.generate if engine is not None else partial(generate, model, tokenizer)
    episodes = EPISODES.build(task, task=task, generate=generator, policy=model, tokenizer=tokenizer)
    # batch by batch where that changes nothing: single-turn on rollout/hf.py's generate (vLLM schedules its own batches and
    # seeds; a dialogue batches its running turns); elsewhere all rows in one call, with progress at its end
    by_batch = task.interaction == "single_turn" and (engine is None or isinstance(engine, PolicyRollouts))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if by_batch and prompts else []
    n = settings.n_samples
    done, total = 0, len(mine) * (1 + n)

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, total)

    def rows_of(counts: list[int], first_streams: list[int] | None, **generation) -> list[tuple[float, str, str, dict]]:
        return episodes_by_batch(episodes, mine, prompts, counts=counts, first_streams=first_streams, lengths=lengths if by_batch else None,
                                 batch_size=batch_size, advance=advance, max_new_tokens=max_new_tokens, **generation)

    greedy = rows_of([1] * len(mine), None, temperature=0.0, top_p=1.0, seed=None)
    greedy_ok, greedy_rules, greedy_texts = [g[0] for g in greedy], [g[1] for g in greedy], [g[2] for g in greedy]
    greedy_stats = [g[3] for g in greedy]  # multi-turn: turns, tool calls, ...
    correct = [0] * len(mine)
    if n > 0:
        sampled = rows_of([n] * len(mine), [(lo + i) * n for i in range(len(mine))], temperature=settings.temperature,
                          top_p=settings.top_p, seed=stream_seed(seed))
        for r, (reward, *_) in enumerate(sampled):
            correct[r // n] += int(reward > 0)
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
