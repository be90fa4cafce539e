"""`dynamo train`: RL from verifiable rewards with DynaMO allocation and modulation.

One step, as in algorithm.md:
    draw P prompts -> allocator: n_i per prompt, Σ n_i = B -> generate Σ n_i completions -> verify rewards
    -> group advantages (groups of unequal size) -> old log-probs and entropies -> for each PPO epoch and
    mini-batch: modulator -> PPO-clip loss -> optimiser step -> update the allocator's statistics -> log,
    eval, checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from dynamo_cli import checkpoint
from dynamo_cli.advantages import ADVANTAGE_ESTIMATORS
from dynamo_cli.allocators import bernoulli_variance
from dynamo_cli.builders import build_allocator, build_modulator, build_rollout_engine, build_task
from dynamo_cli.errors import DynamoError
from dynamo_cli.config import AlgorithmConfig, TrainConfig
from dynamo_cli.distributed import DataParallel, shard_counts
from dynamo_cli.evaluation import eval_metrics, eval_subset, evaluate, plan_eval_batch
from dynamo_cli.losses import aggregate, kl_k3, ppo_clip_loss
from dynamo_cli.models import count_parameters, load_policy, reference_policy
from dynamo_cli.optim import make_optimizer
from dynamo_cli.policy import batched_token_stats, completion_token_stats
from dynamo_cli.resources import longest_prompt, plan_batch_sizes
from dynamo_cli.rollout import Rollouts, stream_seed
from dynamo_cli.rollout_vllm import VLLMUnavailable
from dynamo_cli.tracking import (
    BudgetRow,
    Tracker,
    TrainView,
    eval_table,
    make_console,
    quantiles,
    truncate_jsonl,
    write_json_atomically,
)


# ------------------------------------------------------------------------------------- data order
def step_prompt_indices(step: int, *, num_problems: int, per_step: int, seed: int) -> list[int]:
    """The training problems of `step` (1-based): consecutive slices of per-epoch permutations.

    A pure function of (step, seed), so resuming needs no data-loader state.
    """
    first = (step - 1) * per_step
    permutations: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(first, first + per_step):
        epoch, offset = divmod(position, num_problems)
        if epoch not in permutations:
            permutations[epoch] = torch.randperm(num_problems, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(permutations[epoch][offset]))
    return indices


# ------------------------------------------------------------------------------------- the batch
@dataclass
class StepBatch:
    """Everything the policy update needs, one row per completion."""

    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    mask: torch.Tensor  # (N, Tc) bool: completion tokens in the loss
    advantages: torch.Tensor  # (N,) sequence advantages
    old_logprobs: torch.Tensor  # (N, Tc)
    old_entropy: torch.Tensor  # (N, Tc)
    ref_logprobs: Optional[torch.Tensor]  # (N, Tc) or None without a KL term
    prompt_width: int

    def select(self, rows: torch.Tensor) -> "StepBatch":
        return StepBatch(**{f.name: (v[rows] if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                            for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def score(task, problems, rollouts: Rollouts) -> torch.Tensor:
    """(N,) rewards. Completion r is verified against *its own* prompt's problem, problems[prompt_index[r]]."""
    return torch.tensor([task.verify(text, problems[i]) for i, text in zip(rollouts.prompt_index.tolist(), rollouts.texts, strict=True)],
                        dtype=torch.float32)


def scope_index(size: int, *, scope: str, micro_batch_size: int) -> torch.Tensor:
    """The normalisation group of each sequence for the modulator's min/max (algorithm.md: our choice)."""
    if scope == "sequence":
        return torch.arange(size)
    if scope == "micro_batch":
        return torch.arange(size) // micro_batch_size
    return torch.zeros(size, dtype=torch.long)


# ----------------------------------------------------------------------------------- the update
def policy_update(model, optimizer, scheduler, batch: StepBatch, *, dp: DataParallel, modulator, algo: AlgorithmConfig,
                  micro_batch_size: int, modulator_scope: str, temperature: float, grad_clip: float, generator: torch.Generator):
    """PPO epochs × mini-batches × micro-batches over this rank's rows. Returns (metrics, modulation factors).

    A mini-batch is every rank's chunk of the same index; its loss is a mean over the *global* mini-batch
    (token or sequence counts summed over ranks) and the engine averages gradients over ranks, so each rank
    scales its share by the number of ranks: one process and N processes take the same gradient step.
    """
    policy = dp.unwrap(model)  # gradient-free forwards (the modulator's look at the current policy) run rank-locally
    device = dp.device
    token_advantages = batch.advantages[:, None] * batch.mask  # (N, Tc): the sequence advantage on every token
    sums = {"loss": 0.0, "pg_loss": 0.0, "clip_frac": 0.0, "kl_ref": 0.0, "approx_kl": 0.0, "entropy_bonus": 0.0}
    grad_norm_sum = 0.0
    modulation_metrics: dict[str, float] = {}
    distributions: dict[str, list[torch.Tensor]] = {}
    updates, modulate_seconds = 0, 0.0
    scope_sync = dp.scope_sync() if modulator_scope == "mini_batch" else None  # a mini-batch spans the ranks
    for epoch in range(algo.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator)
        for mb_index, rows in enumerate(order.chunk(algo.mini_batches)):
            mb = batch.select(rows)
            num_tokens, num_seqs = int(dp.sum(int(mb.mask.sum()))), int(dp.sum(len(mb)))
            t0 = time.perf_counter()
            if modulator.needs_policy_stats and (epoch, mb_index) != (0, 0):
                # the policy moved since the rollouts: entropy and log-probs of the *current* policy
                logprobs_now, entropy_now = batched_token_stats(
                    policy, input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device),
                    prompt_width=mb.prompt_width, temperature=temperature, micro_batch_size=micro_batch_size)
            else:  # first mini-batch of the first epoch: the current policy *is* the old one
                logprobs_now, entropy_now = mb.old_logprobs.to(device), mb.old_entropy.to(device)
            shaping = modulator(advantages=token_advantages[rows].to(device), mask=mb.mask.to(device),
                                entropy=entropy_now, logprobs=logprobs_now, old_logprobs=mb.old_logprobs.to(device),
                                scope_index=scope_index(len(mb), scope=modulator_scope, micro_batch_size=micro_batch_size).to(device),
                                scope_sync=scope_sync)
            modulate_seconds += time.perf_counter() - t0
            for key, value in shaping.metrics.items():
                modulation_metrics[key] = modulation_metrics.get(key, 0.0) + value
            for key, value in shaping.distributions.items():
                distributions.setdefault(key, []).append(value.cpu())

            starts = range(0, len(mb), micro_batch_size)
            for start in starts:
                micro = slice(start, start + micro_batch_size)
                loss_mask = shaping.loss_mask[micro]
                with dp.accumulate(model, sync=start == starts[-1]):  # gradients cross ranks once per mini-batch
                    logprobs, entropy = completion_token_stats(
                        model, input_ids=mb.input_ids[micro].to(device), attention_mask=mb.attention_mask[micro].to(device),
                        prompt_width=mb.prompt_width, temperature=temperature, with_entropy=algo.entropy_coef > 0)
                    old = mb.old_logprobs[micro].to(device)
                    per_token, clipped = ppo_clip_loss(logprobs=logprobs, old_logprobs=old, advantages=shaping.advantages[micro],
                                                       mask=loss_mask, eps_low=algo.eps_low, eps_high=algo.eps_high)
                    pg_loss = aggregate(per_token=per_token, mask=loss_mask, mode=algo.loss_agg, num_tokens=num_tokens, num_sequences=num_seqs)
                    loss = pg_loss
                    if algo.kl_coef > 0:
                        kl = aggregate(per_token=kl_k3(logprobs=logprobs, ref_logprobs=mb.ref_logprobs[micro].to(device)),
                                       mask=loss_mask, mode=algo.loss_agg, num_tokens=num_tokens, num_sequences=num_seqs)
                        loss = loss + algo.kl_coef * kl
                        sums["kl_ref"] += kl.item()
                    if algo.entropy_coef > 0:
                        bonus = aggregate(per_token=entropy, mask=loss_mask, mode=algo.loss_agg, num_tokens=num_tokens, num_sequences=num_seqs)
                        loss = loss - algo.entropy_coef * bonus
                        sums["entropy_bonus"] += bonus.item()
                    dp.backward(loss * dp.world_size)  # the engine averages over ranks; the global mean wants their sum
                sums["loss"] += loss.item()
                sums["pg_loss"] += pg_loss.item()
                sums["clip_frac"] += float((clipped & loss_mask).sum()) / max(num_tokens, 1)
                sums["approx_kl"] += float(((old - logprobs.detach()) * loss_mask).sum()) / max(num_tokens, 1)
            grad_norm_sum += dp.clip_gradients(model, grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
    # each rank summed its share of every global mean: the sum over ranks is the mean over the global batch
    metrics = {f"train/{k}": dp.sum(v) / updates for k, v in sums.items()}
    metrics["train/grad_norm"] = grad_norm_sum / updates  # of the all-reduced gradient: the same on every rank
    metrics.update(dp.mean({k: v / updates for k, v in modulation_metrics.items()}))
    metrics["train/lr"] = scheduler.get_last_lr()[0]
    metrics["time/modulate_s"] = modulate_seconds
    return metrics, {k: dp.gather_rows(torch.cat(v)) for k, v in distributions.items()}


# -------------------------------------------------------------------------------------- the run
def check_batch_layout(*, rollouts_per_step: int, world_size: int, mini_batches: int) -> None:
    """Every rank gets the same number of rollouts, and at least one per mini-batch: then every rank runs the
    same sequence of forward/backward calls, which the engines' collectives require."""
    if rollouts_per_step % world_size:
        raise DynamoError(f"trainer.prompts_per_step x rollout.n = {rollouts_per_step} rollouts per step do not split "
                          f"evenly over {world_size} processes; choose a multiple of {world_size}")
    if rollouts_per_step // world_size < mini_batches:
        raise DynamoError(f"algorithm.mini_batches={mini_batches} needs at least {mini_batches} rollouts per process; "
                          f"each of the {world_size} processes has {rollouts_per_step // world_size}")


def run(cfg: TrainConfig, run_dir: Path) -> None:
    dp = DataParallel.start(cfg.device)
    dp.check_engine()
    run_dir = dp.agree_on_run_dir(run_dir)
    P, max_new_tokens = cfg.trainer.prompts_per_step, cfg.rollout.max_new_tokens or cfg.task.max_new_tokens
    check_batch_layout(rollouts_per_step=P * cfg.rollout.n, world_size=dp.world_size, mini_batches=cfg.algorithm.mini_batches)
    checkpoints = run_dir / "checkpoints"
    resume_from = find_resume_checkpoint(cfg.trainer.resume, checkpoints)
    if resume_from is None and (run_dir / "metrics.jsonl").exists() and cfg.trainer.resume == "never":
        raise DynamoError(f"{run_dir} already holds a run (metrics.jsonl): continue it with trainer.resume=auto "
                          "or choose another hydra.run.dir")
    dp.barrier()  # every rank has read the run dir before rank 0 writes to it
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            for name in ("metrics.jsonl", "rollouts.jsonl"):  # an attempt that died before its first checkpoint
                truncate_jsonl(run_dir / name, max_step=-1)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config_dict))
    console = make_console(cfg.logger, quiet=not dp.is_main)
    device = dp.device
    torch.manual_seed(cfg.seed)

    model, tokenizer = load_policy(cfg.model, device, resume_from=resume_from)
    reference = (reference_policy(model, cfg=cfg.model, device=device, resumed=resume_from is not None)
                 if cfg.algorithm.kl_coef > 0 else None)
    total, trainable = count_parameters(model)
    task = build_task(cfg.task)
    train_problems, test_problems = task.train_problems(), task.test_problems()
    test_problems = eval_subset(test_problems, cfg.eval.max_problems)
    allocator, modulator = build_allocator(cfg), build_modulator(cfg)
    estimate_advantages = ADVANTAGE_ESTIMATORS[cfg.algorithm.advantage]
    updates_per_step = cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps=cfg.trainer.steps * updates_per_step)
    eval_max_new_tokens = cfg.eval.max_new_tokens or cfg.task.max_new_tokens
    rollouts_per_rank = P * cfg.rollout.n // dp.world_size
    prompt_tokens = longest_prompt(tokenizer, task, train_problems)
    try:  # the generator (the policy itself, or vLLM holding a copy), before the batch plan sees what memory is left
        engine = build_rollout_engine(cfg, model, tokenizer, max_model_len=prompt_tokens + max_new_tokens)
    except VLLMUnavailable as error:
        raise DynamoError(str(error)) from error
    plan = plan_batch_sizes(  # `auto` batch sizes from the memory free now (before the optimiser allocates its state)
        model, device, generation=cfg.rollout.max_batch_size, training=cfg.algorithm.micro_batch_size,
        prompt_tokens=prompt_tokens,
        new_tokens=max_new_tokens, most_generation=rollouts_per_rank,
        most_training=-(-rollouts_per_rank // cfg.algorithm.mini_batches), memory_fraction=cfg.memory_fraction)
    eval_plan = plan_eval_batch(model, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                                device=device, memory_fraction=cfg.memory_fraction, world_size=dp.world_size)
    model, optimizer = dp.prepare(model, optimizer, micro_batch_size=plan.training)  # DDP / DeepSpeed ZeRO-2; nothing with one process
    policy = dp.unwrap(model)  # full weights on every rank: generation, old log-probs, eval, checkpoints

    totals = {"step": 0, "rollouts": 0, "tokens": 0, "seconds": 0.0}
    if resume_from:
        state = checkpoint.load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        allocator.load_state_dict(state["allocator"])
        checkpoint.restore_rng(state["rng"])
        totals = state["totals"]
        console.print(f"resumed from {resume_from} at step {totals['step']}")

    tracker = Tracker(run_dir=run_dir, cfg=cfg.logger, config=config_dict, job_type="train",
                      resume_step=totals["step"] if resume_from else None, enabled=dp.is_main)
    rollouts_file = (run_dir / "rollouts.jsonl") if cfg.trainer.dump_rollouts and dp.is_main else None
    if rollouts_file and resume_from:
        truncate_jsonl(rollouts_file, max_step=totals["step"])
    processes = f", {dp.world_size} processes ({dp.accelerator.distributed_type.value})" if dp.distributed else ""
    console.print(f"train: {cfg.model.name} ({total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable), "
                  f"allocator={cfg.allocator.name} modulator={cfg.modulator.name} advantage={cfg.algorithm.advantage}, "
                  f"{P} prompts x {cfg.rollout.n} = {P * cfg.rollout.n} rollouts per step, {cfg.trainer.steps} steps{processes}")
    console.print(plan.note)
    console.print(f"eval {eval_plan.note}")

    def run_eval(step: int) -> dict[str, Any]:
        result = evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                          seed=cfg.seed, batch_size=eval_plan.generation, dp=dp)
        tracker.log({**eval_metrics(result), **plan.metrics(), "rollout/total_rollouts": totals["rollouts"],
                     "rollout/total_tokens": totals["tokens"], "time/elapsed_s": totals["seconds"]}, step=step)
        return result

    def save(directory: Path) -> Path:
        """Everything an exact resume needs: weights, optimiser, scheduler, allocator statistics, RNG, totals.
        Rank 0 writes (the replicas are identical, see dist/replica_param_diff); the others wait for it."""
        if dp.is_main:
            checkpoint.save_checkpoint(directory, model=policy, tokenizer=tokenizer, trainer_state={
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "allocator": allocator.state_dict(), "rng": checkpoint.rng_state(), "totals": totals})
        dp.barrier()
        return directory

    last_eval = None
    if totals["step"] == 0:
        first = run_eval(0)
        console.print(f"before RL: test greedy pass@1 {first['overall']['greedy']:.3f}")

    with TrainView(console, total=cfg.trainer.steps, start=totals["step"], rows=cfg.trainer.live_rows) as view:
        for step in range(totals["step"] + 1, cfg.trainer.steps + 1):
            step_start = time.perf_counter()
            # 1. draw P prompts; the allocator splits the budget B = n·P among them. Every rank draws the same
            #    prompts and allocates from its copy of the global statistics (checked: dist/replica_alloc_diff)
            problems = [train_problems[i] for i in step_prompt_indices(step, num_problems=len(train_problems), per_step=P, seed=cfg.seed)]
            prompt_ids = [p.id for p in problems]
            t0 = time.perf_counter()
            allocation = allocator.allocate(prompt_ids)
            group_index = torch.repeat_interleave(torch.arange(P), allocation.counts)  # (B,): the prompt of each rollout
            alloc_seconds = time.perf_counter() - t0

            # 2. generate this rank's share [lo, hi) of the Σ n_i completions; row r answers problems[prompt_index[r]].
            #    Sampling is counter-based on (seed, step, global row): the same completions on 1 or N processes.
            t0 = time.perf_counter()
            lo, hi = dp.shard(len(group_index))
            prompts = [task.prompt_text(p, tokenizer) for p in problems]
            rollouts = engine.generate(prompts, counts=shard_counts(allocation.counts, lo=lo, hi=hi), max_new_tokens=max_new_tokens,
                                       temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                       seed=stream_seed(cfg.seed, step), streams=torch.arange(lo, hi), max_batch_size=plan.generation)
            generate_seconds = time.perf_counter() - t0

            # 3. verify, gather the rewards, group advantages (unequal group sizes), old log-probs and entropies
            t0 = time.perf_counter()
            rewards = dp.gather_rows(score(task, problems, rollouts))  # (B,), global row order
            all_advantages, zero_signal = estimate_advantages(rewards=rewards, group_index=group_index, num_groups=P)
            advantages = all_advantages[lo:hi]
            old_logprobs, old_entropy = batched_token_stats(
                policy, input_ids=rollouts.input_ids.to(device), attention_mask=rollouts.attention_mask.to(device),
                prompt_width=rollouts.prompt_width, temperature=cfg.rollout.temperature, micro_batch_size=plan.training)
            ref_logprobs = None
            if reference is not None:
                ref_logprobs, _ = batched_token_stats(
                    reference, input_ids=rollouts.input_ids.to(device), attention_mask=rollouts.attention_mask.to(device),
                    prompt_width=rollouts.prompt_width, temperature=cfg.rollout.temperature,
                    micro_batch_size=plan.training, with_entropy=False)
            batch = StepBatch(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask, mask=rollouts.completion_mask,
                              advantages=advantages, old_logprobs=old_logprobs.cpu(), old_entropy=old_entropy.cpu(),
                              ref_logprobs=None if ref_logprobs is None else ref_logprobs.cpu(), prompt_width=rollouts.prompt_width)
            score_seconds = time.perf_counter() - t0

            # 4. modulate and update the policy
            t0 = time.perf_counter()
            update_metrics, distributions = policy_update(
                model, optimizer, scheduler, batch, dp=dp, modulator=modulator, algo=cfg.algorithm, micro_batch_size=plan.training,
                modulator_scope=getattr(cfg.modulator, "scope", "mini_batch"), temperature=cfg.rollout.temperature,
                grad_clip=cfg.optim.grad_clip, generator=torch.Generator().manual_seed(stream_seed(cfg.seed, step, dp.rank)))
            engine.sync(policy)  # vLLM: copy the new weights in (hf: nothing, it generates with the policy)
            update_seconds = time.perf_counter() - t0

            # 5. the allocator learns from this step's rewards (every step, not once an epoch)
            successes = torch.zeros(P).index_add_(0, group_index, (rewards > 0).float())
            t0 = time.perf_counter()
            allocator.update(prompt_ids, successes=successes, attempts=allocation.counts.float())
            alloc_seconds += time.perf_counter() - t0

            # 6. log, dump, eval, checkpoint
            replicas = dp.check_replicas(model, allocation.counts)
            if replicas and (replicas["dist/replica_param_diff"] > 0 or replicas["dist/replica_alloc_diff"] > 0):
                raise DynamoError(f"the processes diverged at step {step}: {replicas}")
            lengths, finished = dp.gather_rows(rollouts.completion_lengths), dp.gather_rows(rollouts.finished)
            entropy_sum = dp.sum(float((old_entropy.cpu() * rollouts.completion_mask).sum()))
            generated_tokens = int(lengths.sum())
            step_seconds = time.perf_counter() - step_start
            totals = {"step": step, "rollouts": totals["rollouts"] + len(rewards),
                      "tokens": totals["tokens"] + generated_tokens, "seconds": totals["seconds"] + step_seconds}
            metrics = {
                "rollout/reward_mean": rewards.mean().item(),
                "rollout/pass_rate": (successes > 0).float().mean().item(),
                "rollout/zero_signal_frac": zero_signal.float().mean().item(),
                "rollout/zero_signal_groups": int(torch.zeros(P).index_add_(0, group_index, zero_signal.float()).gt(0).sum()),
                "rollout/response_length": lengths.float().mean().item(),
                "rollout/truncated_frac": (~finished).float().mean().item(),
                "rollout/count": len(rewards),
                "rollout/total_rollouts": totals["rollouts"],
                "rollout/total_tokens": totals["tokens"],
                "train/entropy": entropy_sum / max(generated_tokens, 1),
                **allocation.metrics,
                **update_metrics,
                **replicas,
                "time/alloc_s": alloc_seconds, "time/generate_s": generate_seconds, "time/score_s": score_seconds,
                "time/update_s": update_seconds, "time/step_s": step_seconds, "time/elapsed_s": totals["seconds"],
                "time/tokens_per_s": generated_tokens / max(generate_seconds, 1e-9),
            }
            distributions["alloc/counts"] = allocation.counts.float()
            for name, values in distributions.items():
                metrics.update(quantiles(name, values))
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.steps:
                tracker.log(metrics, step=step)
                tracker.log_distributions(distributions, step=step)
            if cfg.trainer.dump_rollouts:
                texts = [text for share in dp.gather_objects(rollouts.texts) for text in share]
                if rollouts_file:
                    dump_rollouts(rollouts_file, step=step, problems=problems, prompts=prompts, prompt_index=group_index,
                                  texts=texts, rewards=rewards, counts=allocation.counts, advantages=all_advantages)
            if step == cfg.trainer.steps or (cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0):
                last_eval = run_eval(step)
                metrics["eval/greedy_pass1"] = last_eval["overall"]["greedy"]
            view.update(step, budget_rows(allocator, problems, allocation.counts, successes), metrics)
            if cfg.trainer.save_every and step % cfg.trainer.save_every == 0 and step != cfg.trainer.steps:
                save(checkpoints / f"step-{step}")
                if dp.is_main:
                    checkpoint.prune(checkpoints, cfg.trainer.keep_last)

    final = save(checkpoints / "final")
    result = last_eval or evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                                   seed=cfg.seed, batch_size=eval_plan.generation, dp=dp)
    if dp.is_main:
        write_json_atomically(run_dir / "eval.json", result)
    tracker.summary({**eval_metrics(result), "rollout/total_rollouts": totals["rollouts"], "rollout/total_tokens": totals["tokens"]})
    tracker.close()
    console.print(eval_table(result, title=f"test split after {totals['step']} RL steps"))
    console.print(f"final checkpoint: {final}")
    dp.close()

def budget_rows(allocator, problems, counts: torch.Tensor, successes: torch.Tensor) -> list[BudgetRow]:
    ids = [p.id for p in problems]
    lifetime_successes, lifetime_attempts = allocator.history(ids)
    variance = bernoulli_variance(successes=lifetime_successes, attempts=lifetime_attempts)
    rate = lifetime_successes / lifetime_attempts.clamp(min=1)
    return [BudgetRow(prompt_id=p.id, snippet=p.question, attempts=float(lifetime_attempts[i]), success_rate=float(rate[i]),
                      variance=float(variance[i]), allocated=int(counts[i]), successes=int(successes[i]))
            for i, p in enumerate(problems)]


def dump_rollouts(path: Path, *, step: int, problems, prompts, prompt_index, texts, rewards, counts, advantages) -> None:
    """One line per completion: anyone can re-check every reward and every allocation."""
    with path.open("a") as f:
        for r, i in enumerate(prompt_index.tolist()):
            f.write(json.dumps({"step": step, "prompt_id": problems[i].id, "prompt": prompts[i], "completion": texts[r],
                                "answer": problems[i].answer, "reward": float(rewards[r]), "n_alloc": int(counts[i]),
                                "advantage": float(advantages[r])}) + "\n")


def find_resume_checkpoint(resume: str, checkpoints: Path) -> Optional[Path]:
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest(checkpoints)  # None: nothing to resume, start fresh
    path = Path(resume)
    if not (path / checkpoint.TRAINER_STATE).is_file():
        raise DynamoError(f"trainer.resume={resume!r} holds no {checkpoint.TRAINER_STATE}: not a train checkpoint")
    return path
