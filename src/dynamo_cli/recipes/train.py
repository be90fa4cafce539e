"""`dynamo train`: RL from verifiable rewards with DynaMO allocation and modulation.

One step is three stages (stages/), each built once from the config:
    collect   draw P prompts -> allocator: n_i per prompt, Σ n_i = B -> generate -> verify -> old log-probs
    estimate  group advantages (groups of unequal size), or GAE on a critic's values -> per-token advantages
    update    for each PPO epoch and mini-batch: modulator -> loss terms (PPO-clip, KL, entropy, value) -> optimiser steps
then the allocator learns from the step's rewards, and the recipe logs, evaluates and checkpoints.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from dynamo_cli import builders
from dynamo_cli.algo.terms import build_loss
from dynamo_cli.config import TrainConfig
from dynamo_cli.errors import DynamoError, Preempted, warn
from dynamo_cli.models.load import count_parameters, load_policy, reference_policy
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.models.trainable import Trainable, load_trainables_state, trainables_state
from dynamo_cli.rollout.hf import stream_seed
from dynamo_cli.rollout.vllm import VLLMUnavailable
from dynamo_cli.runtime import checkpoint, faultpoints
from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.runtime.guard import NonFiniteGuard
from dynamo_cli.runtime.preempt import Preemption
from dynamo_cli.runtime.resources import longest_prompt, plan_batch_sizes
from dynamo_cli.runtime.runlock import RunLock
from dynamo_cli.stages import rollout_stats
from dynamo_cli.stages.collect import Collector, score  # noqa: F401 - score: `from dynamo_cli.recipes.train import score` keeps working
from dynamo_cli.stages.evaluate import eval_metrics, eval_subset, evaluate, plan_eval_batch
from dynamo_cli.stages.update import PolicyUpdate, check_batch_layout
from dynamo_cli.tasks.answers import RULES
from dynamo_cli.tracking.tracker import (
    Tracker,
    TrainView,
    budget_rows,
    eval_table,
    make_console,
    quantiles,
    truncate_jsonl,
    write_json_atomically,
)


def run(cfg: TrainConfig, run_dir: Path) -> None:
    dp = DataParallel.start(cfg.device)
    dp.check_engine(fsdp2=True)
    run_dir = dp.agree_on_run_dir(run_dir)
    lock, refused = None, None
    if dp.is_main:  # one run per run dir (runtime/runlock.py); rank 0 holds the lock for all processes
        try:
            lock = RunLock.acquire(run_dir)
        except DynamoError as error:
            refused = str(error)
    if refused := dp.broadcast_object(refused):
        raise DynamoError(refused)
    if lock and lock.previous:
        warn(f"took over the stale lock of pid {lock.previous.get('pid')} on {lock.previous.get('host')} (not running)")
    P, max_new_tokens = cfg.trainer.prompts_per_step, cfg.rollout.max_new_tokens or cfg.task.max_new_tokens
    check_batch_layout(rollouts_per_step=P * cfg.rollout.n, world_size=dp.world_size, mini_batches=cfg.algorithm.mini_batches)
    checkpoints = run_dir / "checkpoints"
    resume_from = checkpoint.find_resume_checkpoint(cfg.trainer.resume, checkpoints)
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

    # ---------------------------------------------------------------- the parts, each chosen once from the config
    model, tokenizer = load_policy(cfg.model, device, resume_from=resume_from)
    reference = (reference_policy(model, cfg=cfg.model, device=device, resumed=resume_from is not None)
                 if cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward > 0 else None)
    critic = builders.build_critic(cfg, model, device=device, resume_from=resume_from)  # the value function (critic=separate|shared) or None
    total, trainable = count_parameters(model)
    task = builders.build_task(cfg.task)
    train_problems = prompt_pool(task.train_problems(), cfg.trainer.prompt_pool)
    test_problems = eval_subset(task.test_problems(), cfg.eval.max_problems)
    sampler = builders.build_sampler(cfg, problems=train_problems)  # a curriculum orders the pool by its tags
    allocator, modulator = builders.build_allocator(cfg), builders.build_modulator(cfg)
    estimate = builders.build_estimator(cfg, dp)  # dp: GAE whitens its advantages over every process's tokens
    updates_per_step = cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps=cfg.trainer.steps * updates_per_step)
    eval_max_new_tokens = cfg.eval.max_new_tokens or cfg.task.max_new_tokens
    rollouts_per_rank = P * cfg.rollout.n // dp.world_size
    prompt_tokens = longest_prompt(tokenizer, task, train_problems)
    if cfg.rollout.one_step_off_policy and dp.sharded:
        raise DynamoError("rollout.one_step_off_policy=true under FSDP2: generating on gathered weights while the update runs "
                          "on the sharded ones is not built; use conf/accelerate/ddp.yaml or one_step_off_policy=false")
    behaviour = builders.behaviour_policy(cfg, model)  # what samples: the policy, or (one-step-off-policy) a copy of it
    try:  # the generator (the policy itself, or vLLM holding a copy), before the batch plan sees what memory is left
        engine = builders.build_rollout_engine(cfg, behaviour, tokenizer, max_model_len=prompt_tokens + max_new_tokens)
    except VLLMUnavailable as error:
        raise DynamoError(str(error)) from error
    plan = plan_batch_sizes(  # `auto` batch sizes from the memory free now (before the optimiser allocates its state)
        model, device, generation=cfg.rollout.max_batch_size, training=cfg.algorithm.micro_batch_size,
        prompt_tokens=prompt_tokens, new_tokens=max_new_tokens, most_generation=rollouts_per_rank,
        most_training=-(-rollouts_per_rank // cfg.algorithm.mini_batches), memory_fraction=cfg.memory_fraction)
    eval_plan = plan_eval_batch(model, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                                device=device, memory_fraction=cfg.memory_fraction, world_size=dp.world_size)
    model, optimizer = dp.prepare(model, optimizer, micro_batch_size=plan.training)  # DDP / DeepSpeed ZeRO-2; nothing with one process
    reference, engine = dp.prepare_frozen(reference), dp.sharded_generation(engine, model)  # FSDP2: sharded; generation on gathered weights
    policy = dp.unwrap(model)  # full weights on every rank: generation, old log-probs, eval, checkpoints
    trainables = [Trainable("policy", model, optimizer, scheduler, grad_clip=cfg.optim.grad_clip),  # then the critic, if any
                  *builders.critic_trainables(cfg, critic, dp=dp, total_steps=cfg.trainer.steps * updates_per_step,
                                              micro_batch_size=plan.training)]
    separate_pass = rollout_stats.separate_pass_reason(  # None: log pi_old from the first training forward (stages/rollout_stats.py)
        reuse_forward=cfg.algorithm.reuse_forward, estimator_reads_old_logprobs=cfg.algorithm.kl_in_reward > 0, model=policy,
        off_policy=cfg.rollout.one_step_off_policy)
    collect = Collector(task=task, problems=train_problems, tokenizer=tokenizer, sampler=sampler, allocator=allocator, engine=engine,
                        policy=behaviour, reference=reference, dp=builders.collect_parallel(cfg, dp), per_step=P, seed=cfg.seed, max_new_tokens=max_new_tokens,
                        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, generation_batch=plan.generation,
                        logprob_batch=plan.training, mask_truncated=cfg.algorithm.mask_truncated,
                        shape_rewards=builders.build_reward_shaping(cfg), critic=critic, defer_policy_stats=separate_pass is None,
                        episodes=builders.build_episodes(cfg, task, engine=engine, policy=behaviour, tokenizer=tokenizer))
    schedule = builders.build_schedule(cfg, collect, policy=policy, behaviour=behaviour)  # on-policy, or one step ahead
    update = PolicyUpdate(trainables=trainables, loss=build_loss(cfg), modulator=modulator, dp=dp, ppo_epochs=cfg.algorithm.ppo_epochs,
                          mini_batches=cfg.algorithm.mini_batches, micro_batch_size=plan.training,
                          modulator_scope=cfg.modulator.scope, temperature=cfg.rollout.temperature, reuse_forward=separate_pass is None,
                          guard=NonFiniteGuard(max_in_a_row=cfg.trainer.max_skipped_steps), value_function=critic)

    totals = {"step": 0, "rollouts": 0, "tokens": 0, "seconds": 0.0}
    if resume_from:
        state = checkpoint.load_trainer_state(resume_from)
        load_trainables_state(trainables, state)
        dp.load_optimizer_shards(trainables, resume_from)  # FSDP2: every rank reads its shard; nothing otherwise
        allocator.load_state_dict(state["allocator"])
        sampler.load_state_dict(state.get("sampler", {}))  # checkpoints from before the sampler group hold none
        checkpoint.restore_rng(state["rng"])
        update.guard.load_state_dict(state.get("guard", {"skipped": 0, "in_a_row": 0}))  # none before the guard
        schedule.load_state_dict(state.get("schedule", {}))  # one-step-off-policy: the next step's batch, collected ahead
        totals = state["totals"]
        console.print(f"resumed from {resume_from} at step {totals['step']}")

    tracker = Tracker(run_dir=run_dir, cfg=cfg.logger, config=config_dict, job_type="train",
                      resume_step=totals["step"] if resume_from else None, enabled=dp.is_main)
    rollouts_file = (run_dir / "rollouts.jsonl") if cfg.trainer.dump_rollouts and dp.is_main else None
    if rollouts_file and resume_from:
        truncate_jsonl(rollouts_file, max_step=totals["step"])
    processes = f", {dp.world_size} processes ({dp.engine})" if dp.distributed else ""
    console.print(f"train: {cfg.model.name} ({total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable), "
                  f"allocator={cfg.allocator.name} modulator={cfg.modulator.name} advantage={cfg.algorithm.advantage} critic={cfg.critic.name}, "
                  f"{P} prompts x {cfg.rollout.n} = {P * cfg.rollout.n} rollouts per step, {cfg.trainer.steps} steps{processes}")
    console.print(plan.note)
    if separate_pass and cfg.algorithm.reuse_forward:
        console.print(f"log pi_old by a separate pass: {separate_pass}")
    console.print(f"eval {eval_plan.note}")

    def run_eval(step: int) -> dict[str, Any]:
        with dp.full_weights(model):  # FSDP2: eval is rank-local, on the gathered weights
            result = evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                              seed=cfg.seed, batch_size=eval_plan.generation, dp=dp)
        faultpoints.reach("eval")
        tracker.log({**eval_metrics(result), **plan.metrics(), "rollout/total_rollouts": totals["rollouts"],
                     "rollout/total_tokens": totals["tokens"], "time/elapsed_s": totals["seconds"]}, step=step)
        return result

    def save(directory: Path) -> Path:
        """Everything an exact resume needs: weights, optimisers, schedulers, allocator and sampler state, RNG, totals.
        Rank 0 writes (the replicas are identical, see dist/replica_param_diff); the others wait for its verdict. Under
        FSDP2 every rank first helps gather the full weights and writes its optimiser shard (runtime/fsdp.py)."""
        full_model, staged = dp.checkpoint_model(policy), dp.stage_optimizer_shards(trainables, directory)
        schedule_state = schedule.state_dict()
        failed = None
        if dp.is_main:
            try:
                checkpoint.save_checkpoint(directory, model=full_model, tokenizer=tokenizer, staged=staged, trainer_state={
                    **trainables_state(trainables), "allocator": allocator.state_dict(), "sampler": sampler.state_dict(),
                    "rng": checkpoint.rng_state(), "totals": totals, "guard": update.guard.state_dict(), "schedule": schedule_state},
                    extra_models={t.name: dp.unwrap(t.model) for t in trainables[1:]})
            except DynamoError as error:  # a full disk: every process stops, not only rank 0
                failed = str(error)
        if failed := dp.broadcast_object(failed):
            raise DynamoError(failed)
        return directory

    # from here a SIGTERM/SIGUSR1 ends in a checkpoint after the step it arrives in; the `with` below gives the old handlers back
    preemption = Preemption(cfg.trainer.preempt_signals)
    last_eval = None
    if totals["step"] == 0:
        first = run_eval(0)
        console.print(f"before RL: test greedy pass@1 {first['overall']['greedy']:.3f}")

    with TrainView(console, total=cfg.trainer.steps, start=totals["step"], rows=cfg.trainer.live_rows) as view, preemption:
        for step in range(totals["step"] + 1, cfg.trainer.steps + 1):
            step_start = time.perf_counter()
            step_data = schedule.take(step)  # 1. prompts, allocation, rollouts, rewards, old log-probs
            alloc_seconds = step_data.seconds["alloc"] + collect.learn(step_data)  # 2. allocator and sampler learn, every step
            spent = cfg.trainer.rollout_budget is not None and totals["rollouts"] + len(step_data.rewards) >= cfg.trainer.rollout_budget
            if step < cfg.trainer.steps and not spent:
                schedule.prefetch(step + 1)  # one-step-off-policy: step + 1 generates during this update (on-policy: nothing)
            engine.release()  # vLLM: sleeps through the update (rollout.sleep_level); hf: nothing
            t0 = time.perf_counter()  # 3. advantages per token (timed with verification, as `score`)
            advantages, returns, sequence_advantages, zero_signal = estimate(
                step_data.batch, rewards=step_data.train_rewards, group_index=step_data.group_index,
                num_groups=len(step_data.problems), rows=step_data.rows)  # P, or more when a round allocator drew fresh prompts
            step_data.seconds["score"] += time.perf_counter() - t0
            t0 = time.perf_counter()  # 4. modulate and update the policy (and the critic)
            update_metrics, distributions = update(step_data.batch.replace(advantages=advantages, returns=returns), step=step,
                                                   generator=torch.Generator().manual_seed(stream_seed(cfg.seed, step, dp.rank)))
            engine.sync(policy)  # vLLM: copy the new weights in (hf: nothing, it generates with the policy)
            update_seconds = time.perf_counter() - t0
            schedule.settle()  # one-step-off-policy: the next step's batch is in before logs, eval and checkpoints

            # 5. log, dump, eval, checkpoint
            replicas = dp.check_replicas(model, step_data.allocation.counts)
            if replicas and (replicas.get("dist/replica_param_diff", 0.0) > 0 or replicas["dist/replica_alloc_diff"] > 0):
                raise DynamoError(f"the processes diverged at step {step}: {replicas}")
            rollouts, rewards, counts, group_index = step_data.rollouts, step_data.rewards, step_data.allocation.counts, step_data.group_index
            lengths, finished = dp.gather_rows(rollouts.completion_lengths), dp.gather_rows(rollouts.finished)
            entropy_sum = dp.sum(float((step_data.batch.old_entropy * rollouts.policy_tokens).sum()))  # policy tokens only
            generated_tokens = int(lengths.sum())
            step_seconds = time.perf_counter() - step_start
            totals = {"step": step, "rollouts": totals["rollouts"] + len(rewards),
                      "tokens": totals["tokens"] + generated_tokens, "seconds": totals["seconds"] + step_seconds}
            metrics = {
                "rollout/reward_mean": rewards.mean().item(),
                "rollout/pass_rate": (step_data.successes > 0).float().mean().item(),
                "rollout/zero_signal_frac": zero_signal.float().mean().item(),
                "rollout/zero_signal_groups": int(torch.zeros(len(step_data.problems)).index_add_(0, group_index, zero_signal.float()).gt(0).sum()),
                "rollout/response_length": lengths.float().mean().item(),
                "rollout/truncated_frac": (~finished).float().mean().item(),
                "rollout/count": len(rewards),
                **{f"rollout/extract_{rule}_frac": (step_data.rules == k).float().mean().item() for k, rule in enumerate(RULES)},
                "rollout/total_rollouts": totals["rollouts"],
                "rollout/total_tokens": totals["tokens"],
                "train/entropy": entropy_sum / max(generated_tokens, 1),
                **step_data.allocation.metrics,
                **step_data.metrics,
                **update_metrics,
                **replicas,
                "time/alloc_s": alloc_seconds, "time/generate_s": step_data.seconds["generate"], "time/score_s": step_data.seconds["score"],
                "time/update_s": update_seconds, "time/step_s": step_seconds, "time/elapsed_s": totals["seconds"],
                "time/tokens_per_s": generated_tokens / max(step_data.seconds["generate"], 1e-9),
            }
            distributions["alloc/counts"] = counts.float()
            for name, values in distributions.items():
                metrics.update(quantiles(name, values))
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.steps or spent:
                tracker.log(metrics, step=step)
                tracker.log_distributions(distributions, step=step)
            if cfg.trainer.dump_rollouts:
                texts = [text for share in dp.gather_objects(rollouts.texts) for text in share]
                transcripts = (None if rollouts.transcripts is None else  # multi-turn: every turn, with who said it
                               [t for share in dp.gather_objects(rollouts.transcripts) for t in share])
                if rollouts_file:
                    dump_rollouts(rollouts_file, step=step, problems=step_data.problems, prompts=step_data.prompts, prompt_index=group_index,
                                  texts=texts, rewards=rewards, rules=step_data.rules, counts=counts, advantages=sequence_advantages,
                                  transcripts=transcripts)
            if step == cfg.trainer.steps or spent or (cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0):
                last_eval = run_eval(step)
                metrics["eval/greedy_pass1"] = last_eval["overall"]["greedy"]
            view.update(step, budget_rows(allocator, step_data.problems, counts, step_data.successes), metrics)
            if skipped := update.guard.take_causes():
                console.print(f"step {step}: skipped {len(skipped)} optimiser step(s): {'; '.join(skipped)}", markup=False)
            faultpoints.reach("step_end")
            preempted = step != cfg.trainer.steps and preemption.requested(dp)  # the last step ends the run anyway
            if preempted or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0 and step != cfg.trainer.steps):
                save(checkpoints / f"step-{step}")
                if dp.is_main:
                    checkpoint.prune(checkpoints, cfg.trainer.keep_last)
            if spent:  # trainer.rollout_budget reached: the final eval ran above, the final checkpoint follows
                break
            if preempted:
                schedule.close()
                tracker.close()
                if lock:
                    lock.release()
                dp.close()
                raise Preempted(f"{preemption.received or 'a preemption signal'} (on some process): checkpoint "
                                f"{checkpoints / f'step-{step}'} written after step {step}; continue with trainer.resume=auto",
                                exit_code=cfg.trainer.preempt_exit_code)

    schedule.close()
    final = save(checkpoints / "final")
    with dp.full_weights(model):
        result = last_eval or evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=eval_max_new_tokens,
                                       seed=cfg.seed, batch_size=eval_plan.generation, dp=dp)
    if dp.is_main:
        write_json_atomically(run_dir / "eval.json", result)
    tracker.summary({**eval_metrics(result), "rollout/total_rollouts": totals["rollouts"], "rollout/total_tokens": totals["tokens"]})
    tracker.close()
    console.print(eval_table(result, title=f"test split after {totals['step']} RL steps"))
    console.print(f"final checkpoint: {final}")
    if lock:
        lock.release()
    dp.close()


def prompt_pool(problems: list, size: Optional[int]) -> list:
    """The first `size` distinct problems (by id): the fixed pool RL revisits over epochs. None: the task's whole
    training list as it stands (a task may repeat the problems of a small level)."""
    if size is None:
        return problems
    return list({p.id: p for p in problems}.values())[:size]  # a dict keeps the first occurrence's order


def dump_rollouts(path: Path, *, step: int, problems, prompts, prompt_index, texts, rewards, rules, counts, advantages,
                  transcripts=None) -> None:
    """One line per completion: anyone can re-check every reward and every allocation. Multi-turn rollouts add
    `turns`: every turn in order, {"who": "environment" | "policy", "content"}."""
    with path.open("a") as f:
        for r, i in enumerate(prompt_index.tolist()):
            f.write(json.dumps({"step": step, "prompt_id": problems[i].id, "prompt": prompts[i], "completion": texts[r],
                                "answer": problems[i].answer, "reward": float(rewards[r]), "rule": RULES[rules[r]], "n_alloc": int(counts[i]),
                                "advantage": float(advantages[r]), **({} if transcripts is None else {"turns": transcripts[r]})}) + "\n")
