"""collect: a step's prompts, their rollouts and rewards, as Trajectories with the rollout policy's log-probs.

    sampler (which prompts) -> allocator (n_i per prompt, Σ n_i = B) -> rollout engine (this process's share of
    the Σ n_i completions) -> verifier (rewards, every process's) -> reward shaping (what the estimator learns
    from: DAPO's overlong penalty) -> old (and reference) log-probs

`mask_truncated` (algorithm.mask_truncated) drops completions cut at max_new_tokens from the loss mask (DAPO's
overlong filtering): they still count in their group's statistics, but no loss term sees their tokens.

Every process draws the same prompts and allocates from its copy of the global statistics (checked each step:
dist/replica_alloc_diff). Sampling is counter-based on (seed, step, global row): the same completions on 1 or
N processes. An allocator implementing protocols.RoundAllocator sees each round's rewards and may ask for
another round of rollouts for the step's prompts or for fresh ones from the sampler (allocator=dapo|greso), and
name the groups that enter the loss (the others keep their rows, with an empty loss mask: counted, not learnt).
Rows are in rank-major order: every process's rows of every round, process by process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamo_cli.allocation.base import Allocation
from dynamo_cli.config.recipes import TrainConfig
from dynamo_cli.errors import DynamoError
from dynamo_cli.protocols import Allocator, RolloutEngine, RoundAllocator, Sampler
from dynamo_cli.rollout.episodes import SingleTurnEpisodes, merge_stats, pad_turns
from dynamo_cli.rollout.hf import Rollouts, stream_seed
from dynamo_cli.rollout.padding import padding_waste
from dynamo_cli.rollout.policy_stats import batched_token_stats
from dynamo_cli.rollout.trajectory import Trajectories
from dynamo_cli.runtime.distributed import DataParallel, shard_counts
from dynamo_cli.runtime.resources import BatchPlan
from dynamo_cli.stages import rollout_stats
from dynamo_cli.verify.verifiers import add_metrics


def prompt_pool(problems: list, size: Optional[int]) -> list:
    """The first `size` distinct problems (by id): the fixed pool RL revisits over epochs. None: the task's whole
    training list as it stands (a task may repeat the problems of a small level)."""
    if size is None:
        return problems
    return list({p.id: p for p in problems}.values())[:size]  # a dict keeps the first occurrence's order


def merge_rollouts(parts: list[Rollouts], *, pad_id: int) -> Rollouts:
    """Rounds of rollouts as one batch: prompts left-padded, completions right-padded to the widest round
    (padding has attention 0 and no loss; positions come from the attention mask, so nothing moves)."""
    if len(parts) == 1:
        return parts[0]
    pw, cw = max(p.prompt_width for p in parts), max(p.input_ids.shape[1] - p.prompt_width for p in parts)

    def widen(t: Tensor, p: Rollouts, value) -> Tensor:  # (n, Tp + Tc) -> (n, pw + cw)
        return F.pad(t, (pw - p.prompt_width, cw - (t.shape[1] - p.prompt_width)), value=value)

    return Rollouts(prompt_index=torch.cat([p.prompt_index for p in parts]),
                    input_ids=torch.cat([widen(p.input_ids, p, pad_id) for p in parts]),
                    attention_mask=torch.cat([widen(p.attention_mask, p, 0) for p in parts]),
                    completion_mask=torch.cat([F.pad(p.completion_mask, (0, cw - p.completion_mask.shape[1]), value=False) for p in parts]),
                    prompt_width=pw, texts=[t for p in parts for t in p.texts], finished=torch.cat([p.finished for p in parts]),
                    logprobs=(torch.cat([F.pad(p.logprobs, (0, cw - p.logprobs.shape[1])) for p in parts])
                              if all(p.logprobs is not None for p in parts) else None),
                    **_merge_turns(parts, cw))


def _merge_turns(parts: list[Rollouts], cw: int) -> dict:
    """Multi-turn rounds (policy_mask set): their policy masks, turn spans and transcripts; {} for single-turn ones."""
    if parts[0].policy_mask is None:
        return {}
    return {"policy_mask": torch.cat([F.pad(p.policy_mask, (0, cw - p.policy_mask.shape[1]), value=False) for p in parts]),
            "turns": pad_turns([p.turns for p in parts]), "transcripts": [t for p in parts for t in p.transcripts]}


@dataclass
class Collected:
    """One step's data. Global tensors (B,) hold every process's rows in rank order; `batch` is this process's."""

    problems: list  # (P) the drawn problems
    prompts: list[str]  # (P) their prompt texts
    allocation: Allocation  # counts (P,) sum to B
    group_index: Tensor  # (B,) the prompt of each rollout
    rewards: Tensor  # (B,) the verifier's: what the allocator, sampler and logs see
    train_rewards: Tensor  # (B,) the shaped rewards the estimator learns from (= rewards without shaping)
    rules: Tensor  # (B,) which extraction rule found each answer (index into tasks.answers.RULES)
    rollouts: Rollouts  # this process's rows [rows.start, rows.stop)
    rows: slice
    batch: Trajectories  # this process's rows, with old_logprobs / old_entropy (/ ref_logprobs)
    seconds: dict[str, float] = field(default_factory=dict)  # alloc, generate, score
    metrics: dict[str, float] = field(default_factory=dict)  # rollout/... of the reward shaping and the verifier's faults
    ids: list[str] | None = None  # (P) the problems' ids, the list the allocator saw last (its id lookup is cached by list)

    @property
    def prompt_ids(self) -> list[str]:
        return self.ids if self.ids is not None else [p.id for p in self.problems]

    @property
    def tags(self) -> list[str]:  # (P) difficulty tags: what allocator.prior=tag pools over
        return [p.level for p in self.problems]

    @property
    def successes(self) -> Tensor:  # (P,) rollouts with a positive reward, per prompt
        return torch.zeros(len(self.problems)).index_add_(0, self.group_index, (self.rewards > 0).float())


class Collector:
    def __init__(self, *, task, problems: list, tokenizer, sampler: Sampler, allocator: Allocator, engine: RolloutEngine,
                 policy, reference, dp: DataParallel, per_step: int, seed: int, max_new_tokens: int, temperature: float,
                 top_p: float, generation_batch: int, logprob_batch: int, mask_truncated: bool, shape_rewards,
                 critic=None, defer_policy_stats: bool = False, episodes=None):
        self.task, self.problems, self.tokenizer = task, problems, tokenizer
        self.sampler, self.allocator, self.engine = sampler, allocator, engine
        self.policy, self.reference, self.critic, self.dp = policy, reference, critic, dp  # critic: models/critic.py's value function, or None
        self.per_step, self.seed, self.max_new_tokens = per_step, seed, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.generation_batch, self.logprob_batch = generation_batch, logprob_batch
        self.mask_truncated = mask_truncated
        self.shape_rewards = shape_rewards  # (rewards (B,), *, lengths (B,)) -> (shaped rewards (B,), metrics)
        self.defer_policy_stats = defer_policy_stats  # old log-probs / entropies left to the update (stages/rollout_stats.py)
        # what one rollout is (rollout/episodes.py): a completion judged by the task, or a dialogue with its environment
        self.episodes = episodes if episodes is not None else SingleTurnEpisodes(engine.generate, task)

    @classmethod
    def from_config(cls, cfg: TrainConfig, *, task, problems: list, tokenizer, sampler: Sampler, allocator: Allocator,
                    engine: RolloutEngine, policy, reference, critic, dp: DataParallel, plan: BatchPlan, shape_rewards, episodes,
                    defer_policy_stats: bool) -> "Collector":
        """The run's collect: the built parts, and from the config P prompts per step, the seed, the sampling settings and
        DAPO's overlong filtering; `plan`'s batch sizes (generation; training for the log-prob passes)."""
        return cls(task=task, problems=problems, tokenizer=tokenizer, sampler=sampler, allocator=allocator, engine=engine,
                   policy=policy, reference=reference, critic=critic, dp=dp, per_step=cfg.trainer.prompts_per_step, seed=cfg.seed,
                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                   generation_batch=plan.generation, logprob_batch=plan.training, mask_truncated=cfg.algorithm.mask_truncated,
                   shape_rewards=shape_rewards, defer_policy_stats=defer_policy_stats, episodes=episodes)

    def __call__(self, step: int) -> Collected:
        dp, P = self.dp, self.per_step
        indices = self.sampler.prompt_indices(step, num_problems=len(self.problems), per_step=P)
        problems = [self.problems[i] for i in indices]
        prompt_ids = [p.id for p in problems]
        prompts = [self.task.prompt_text(p, self.tokenizer) for p in problems]
        seconds = {"alloc": 0.0, "generate": 0.0, "score": 0.0}
        t0 = time.perf_counter()
        tags = [p.level for p in problems]
        allocation = first = self.allocator.allocate(prompt_ids, tags=tags)
        seconds["alloc"] += time.perf_counter() - t0
        parts, local_rewards, local_rules, local_stats, counts, rounds = [], [], [], [], torch.zeros(P, dtype=torch.long), 0
        faults: dict[str, float] = {}  # the verifier's fault counts over this step's rounds, this process
        priority, keep, last_metrics = first.priority, None, {}
        while allocation is not None:
            if rounds > 0 and int(allocation.counts.sum()) % dp.world_size:
                raise DynamoError(f"allocator={type(self.allocator).__name__} asked for {int(allocation.counts.sum())} more "
                                  f"rollouts, which do not split evenly over {dp.world_size} processes")
            # this process's share [lo, hi) of the round's completions; row r answers problems[prompt_index[r]]
            lo, hi = dp.shard(int(allocation.counts.sum()))
            seed = stream_seed(self.seed, step) if rounds == 0 else stream_seed(self.seed, step, rounds)
            if int(allocation.counts.sum()) > 0:  # a round may have nothing to generate (GRESO skipped every fresh prompt)
                episode = self.episodes(problems, prompts, counts=shard_counts(allocation.counts, lo=lo, hi=hi),
                                        max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                        seed=seed, streams=torch.arange(lo, hi), max_batch_size=self.generation_batch)
                parts.append(episode.rollouts)
                local_rewards.append(episode.rewards)
                local_rules.append(episode.rules)
                local_stats.append(episode.stats)
                faults = add_metrics(faults, episode.faults)
                seconds["generate"] += episode.seconds["generate"]
                seconds["score"] += episode.seconds["score"]
            counts, rounds = counts + allocation.counts, rounds + 1
            allocation = None
            if isinstance(self.allocator, RoundAllocator):  # sees every round so far, asks for more or stops
                t0 = time.perf_counter()
                allocation = self.allocator.next_round(prompt_ids, rewards=dp.gather_rows(torch.cat(local_rewards or [torch.zeros(0)])),
                                                       group_index=dp.gather_rows(torch.cat([p.prompt_index for p in parts]
                                                                                            or [torch.zeros(0, dtype=torch.long)])),
                                                       round=rounds)
                if allocation is not None and allocation.fresh:  # new prompts from the sampler, allocated by the allocator
                    fresh_indices = self.sampler.more(step, num_problems=len(self.problems), count=allocation.fresh)
                    fresh = [self.problems[i] for i in fresh_indices]
                    problems, tags = problems + fresh, tags + [p.level for p in fresh]
                    fresh_ids = [p.id for p in fresh]
                    prompt_ids = prompt_ids + fresh_ids
                    prompts = prompts + [self.task.prompt_text(p, self.tokenizer) for p in fresh]
                    fresh_allocation = self.allocator.allocate(fresh_ids, tags=[p.level for p in fresh])
                    allocation = Allocation(counts=torch.cat([allocation.counts, fresh_allocation.counts]), priority=priority,
                                            metrics=allocation.metrics, keep=allocation.keep)
                    counts, priority = torch.cat([counts, torch.zeros(len(fresh), dtype=torch.long)]), torch.cat([priority, fresh_allocation.priority])
                if allocation is not None:
                    keep, last_metrics = allocation.keep, allocation.metrics
                    if int(allocation.counts.sum()) == 0 and not allocation.fresh:  # asks for nothing: the rounds end here
                        allocation = None
                seconds["alloc"] += time.perf_counter() - t0

        if not parts:
            raise DynamoError(f"allocator={type(self.allocator).__name__} generated no rollouts in step {step}")
        t0 = time.perf_counter()
        rollouts = merge_rollouts(parts, pad_id=self.tokenizer.pad_token_id)
        rewards = dp.gather_rows(torch.cat(local_rewards))  # (B,), global (rank-major) row order
        rules = dp.gather_rows(torch.cat(local_rules))  # (B,)
        group_index = dp.gather_rows(rollouts.prompt_index)  # (B,): the prompt of each rollout
        lo = sum(dp.gather_objects(len(rollouts))[:dp.rank])  # this process's first row in the global order
        train_rewards, metrics = self.shape_rewards(rewards, lengths=dp.gather_rows(rollouts.completion_lengths))
        metrics = {**metrics, **{k: dp.sum(v) for k, v in sorted(faults.items())}}  # every process's faults
        if all(p.engine_tokens is not None for p in parts):  # the engine counted its token positions (hf does; vLLM: no padding to count)
            metrics["rollout/padding_waste"] = padding_waste(real=dp.sum(sum(p.engine_tokens[0] for p in parts)),
                                                             total=dp.sum(sum(p.engine_tokens[1] for p in parts)))
        for name, values in merge_stats(local_stats).items():  # multi-turn: rollout/turns, rollout/tool_calls, ...
            metrics[f"rollout/{name}"] = dp.gather_rows(values).mean().item()
        batch = Trajectories.from_rollouts(rollouts)  # loss mask: the policy's tokens only
        keep_rows = rollouts.finished | (not self.mask_truncated)  # (N,) with mask_truncated, only completions that ended
        if keep is not None:  # the round allocator's choice of groups (DAPO: the informative ones)
            keep_rows = keep_rows & keep[rollouts.prompt_index]
        batch = self.rollout_statistics(batch.replace(loss_mask=batch.loss_mask & keep_rows[:, None]))
        seconds["score"] += time.perf_counter() - t0
        if rounds > 1 or keep is not None or last_metrics:
            first = Allocation(counts=counts, priority=priority, metrics={**first.metrics, **last_metrics, "alloc/rounds": float(rounds)},
                               keep=keep)
        return Collected(problems=problems, prompts=prompts, allocation=first, group_index=group_index, rewards=rewards,
                         train_rewards=train_rewards, rules=rules, rollouts=rollouts, rows=slice(lo, lo + len(rollouts)), batch=batch,
                         seconds=seconds, metrics=metrics, ids=prompt_ids)

    def rollout_statistics(self, batch: Trajectories) -> Trajectories:
        """Log-probs and entropies of the policy that generated the batch (and the reference's, for a KL term; and the
        critic's values V_old, for GAE and the value clip)."""
        device, stats = self.dp.device, dict(prompt_width=batch.prompt_width, temperature=self.temperature,
                                             micro_batch_size=self.logprob_batch)
        input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        if self.defer_policy_stats:  # NaN buffers the update's first forward (and its pass over the other rows) fills
            old = rollout_stats.deferred(batch)
            old_logprobs, old_entropy = old.old_logprobs, old.old_entropy
        else:
            old_logprobs, old_entropy = batched_token_stats(self.policy, input_ids=input_ids, attention_mask=attention_mask, **stats)
        ref_logprobs = None
        if self.reference is not None:
            ref_logprobs, _ = batched_token_stats(self.reference, input_ids=input_ids, attention_mask=attention_mask,
                                                  with_entropy=False, **stats)
            ref_logprobs = ref_logprobs.cpu()
        values = None
        if self.critic is not None:
            values = self.critic.old_values(policy=self.policy, input_ids=input_ids, attention_mask=attention_mask,
                                            prompt_width=batch.prompt_width, micro_batch_size=self.logprob_batch).cpu()
        return batch.replace(old_logprobs=old_logprobs.cpu(), old_entropy=old_entropy.cpu(), ref_logprobs=ref_logprobs, values=values)

    def learn(self, collected: Collected) -> float:
        """The allocator (every step, not once an epoch) and the sampler learn from this step's rewards. Seconds."""
        t0 = time.perf_counter()
        self.allocator.update(collected.prompt_ids, successes=collected.successes, attempts=collected.allocation.counts.float(),
                              tags=collected.tags)
        self.sampler.update(collected.prompt_ids, rewards=collected.rewards, group_index=collected.group_index)
        return time.perf_counter() - t0
