"""`dynamo train`: RL from verifiable rewards with DynaMO allocation and modulation.

Each part is built once from the config (parts.py, stages/); then one step is, top to bottom in `train`'s loop:
    1. collect    draw P prompts -> allocator: n_i per prompt, Σ n_i = B -> generate -> verify -> old log-probs
    2. learn      the allocator and the sampler learn from the step's rewards, every step
    3. estimate   group advantages (groups of unequal size), or GAE on a critic's values -> per-token advantages
    4. update     for each PPO epoch and mini-batch: modulator -> loss terms (PPO-clip, KL, entropy, value) -> optimiser steps
    5. log, dump the rollouts, evaluate, checkpoint
Start-up and shutdown (the processes, the run dir and its lock) belong to runtime/session.py's RunSession.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dynamo_cli.algo.importance import step_mismatch
from dynamo_cli.algo.terms.base import build_loss
from dynamo_cli.config.recipes import TrainConfig
from dynamo_cli.errors import DynamoError, Preempted, warn
from dynamo_cli.models import precision
from dynamo_cli.models.critic import critic_trainables
from dynamo_cli.models.load import count_parameters, load_policy, reference_policy
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.recipes import parts
from dynamo_cli.rollout.hf import stream_seed
from dynamo_cli.rollout.vllm import VLLMUnavailable
from dynamo_cli.runtime import atomic, checkpoint, faultpoints
from dynamo_cli.runtime.guard import NonFiniteGuard
from dynamo_cli.runtime.preempt import Preemption
from dynamo_cli.runtime.resources import longest_prompt, plan_batch_sizes
from dynamo_cli.runtime.session import RunSession
from dynamo_cli.stages import rollout_stats
from dynamo_cli.stages.collect import Collector, prompt_pool
from dynamo_cli.stages.evaluate import eval_metrics, eval_subset, evaluate, plan_eval_batch
from dynamo_cli.stages.update import PolicyUpdate, check_batch_layout
from dynamo_cli.tracking.rollouts import ROLLOUTS_FILE, RolloutRows, best_and_worst, sample_rows
from dynamo_cli.tracking.step_metrics import step_metrics
from dynamo_cli.tracking.tracker import (
    EvalProgress,
    Tracker,
    TrainView,
    budget_rows,
    eval_table,
    make_console,
    truncate_jsonl,
    write_json_atomically,
)


def run(cfg: TrainConfig, run_dir: Path) -> None:
    with RunSession(cfg.device, run_dir, fsdp2=True, lock=True) as session:  # one run per run dir (runtime/runlock.py)
        train(cfg, session)


def train(cfg: TrainConfig, session: RunSession) -> None:
    dp, run_dir, P = session.dp, session.run_dir, cfg.trainer.prompts_per_step
    check_batch_layout(rollouts_per_step=P * cfg.rollout.n, world_size=dp.world_size, mini_batches=cfg.algorithm.mini_batches)
    checkpoints = run_dir / "checkpoints"
    if cfg.trainer.resume == "auto" and dp.is_main:
        checkpoint.recover(checkpoints)  # one process renames; the others look after the barrier
    dp.barrier()
    resume_from = checkpoint.find_resume_checkpoint(cfg.trainer.resume, checkpoints,  # never starts over on logged steps
                                                    history=[run_dir / "metrics.jsonl", run_dir / ROLLOUTS_FILE])
    if resume_from is None and (run_dir / "metrics.jsonl").exists() and cfg.trainer.resume == "never":
        raise DynamoError(f"{run_dir} already holds a run (metrics.jsonl): continue it with trainer.resume=auto "
                          "or choose another hydra.run.dir")
    dp.barrier()  # every rank has read the run dir before rank 0 writes to it
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            for name in ("metrics.jsonl", ROLLOUTS_FILE):  # at most a step-0 eval of an attempt that died before step 1
                truncate_jsonl(run_dir / name, max_step=-1)
        atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config_dict))
    console = make_console(cfg.logger, quiet=not dp.is_main)
    device = dp.device
    torch.manual_seed(cfg.seed)

    # ---------------------------------------------------------------- the parts, each chosen once from the config
    if cfg.optim.master_weights == "model" and cfg.model.dtype != "float32":
        warn(precision.PURE_BF16_WARNING.format(dtype=cfg.model.dtype))
    task = parts.build_task(cfg.task)
    train_problems = prompt_pool(task.train_problems(), cfg.trainer.prompt_pool)
    test_problems = eval_subset(task.test_problems(), cfg.eval.max_problems)
    # vLLM takes its share of the GPU first (it checks its share against the memory free when it starts): the policy
    # waits on the host until the engine holds it, then moves to its device
    model, tokenizer = load_policy(cfg.model, torch.device("cpu") if cfg.rollout.name == "vllm" else device,
                                   resume_from=resume_from, master_weights=cfg.optim.master_weights)
    prompt_tokens = longest_prompt(tokenizer, task, train_problems)  # the whole pool's: vLLM's max_model_len
    if cfg.rollout.one_step_off_policy and dp.sharded:
        raise DynamoError("rollout.one_step_off_policy=true under FSDP2: generating on gathered weights while the update runs "
                          "on the sharded ones is not built; use conf/accelerate/ddp.yaml or one_step_off_policy=false")
    behaviour = parts.behaviour_policy(cfg, model)  # what samples: the policy, or (one-step-off-policy) a copy of it
    try:  # the generator (the policy, a copy of it in model.dtype, or vLLM), before the batch plan sees what memory is left
        engine = parts.build_rollout_engine(cfg, behaviour, tokenizer, longest_sequence=prompt_tokens + cfg.max_new_tokens, dp=dp)
    except VLLMUnavailable as error:
        raise DynamoError(str(error)) from error
    model.to(device)  # nothing to move unless vLLM went first
    # built on what collect scores with: under LoRA the reference is that module with its adapter switched off, and
    # the one-step-off-policy collect switches it in its own thread while the update trains the policy
    reference = (reference_policy(behaviour, cfg=cfg.model, device=device, resumed=resume_from is not None,
                                  master_weights=cfg.optim.master_weights)
                 if cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward > 0 else None)
    critic = parts.build_critic(cfg, model, device=device, resume_from=resume_from)  # the value function (critic=separate|shared) or None
    total, trainable = count_parameters(model)
    sampler = parts.build_sampler(cfg, problems=train_problems)  # a curriculum orders the pool by its tags
    allocator, modulator = parts.build_allocator(cfg), parts.build_modulator(cfg)
    estimate = parts.build_estimator(cfg, dp)  # dp: GAE whitens its advantages over every process's tokens
    updates_per_step = cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps=cfg.trainer.steps * updates_per_step)
    rollouts_per_rank = P * cfg.rollout.n // dp.world_size
    plan = plan_batch_sizes(  # `auto` batch sizes from the memory free now (before the optimiser allocates its state)
        model, device, generation=cfg.rollout.max_batch_size, training=cfg.algorithm.micro_batch_size,
        prompt_tokens=prompt_tokens, new_tokens=cfg.max_new_tokens, most_generation=rollouts_per_rank,
        most_training=-(-rollouts_per_rank // cfg.algorithm.mini_batches), memory_fraction=cfg.memory_fraction,
        shards=dp.world_size if dp.sharded else 1)  # FSDP2: this rank's share of the state, once sharded
    eval_plan = plan_eval_batch(model, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=cfg.eval_max_new_tokens,
                                device=device, memory_fraction=cfg.memory_fraction, world_size=dp.world_size)
    model, optimizer = dp.prepare(model, optimizer, micro_batch_size=plan.training)  # DDP / DeepSpeed ZeRO-2; nothing with one process
    reference, engine = dp.prepare_frozen(reference), dp.sharded_generation(engine, model)  # FSDP2: sharded; generation on gathered weights
    policy = dp.unwrap(model)  # full weights on every rank: generation, old log-probs, eval, checkpoints
    trainables = [Trainable("policy", model, optimizer, scheduler, grad_clip=cfg.optim.grad_clip),  # then the critic, if any
                  *critic_trainables(cfg.critic, critic, dp=dp, total_steps=cfg.trainer.steps * updates_per_step,
                                              micro_batch_size=plan.training)]
    separate_pass = rollout_stats.separate_pass_reason(  # None: log pi_old from the first training forward (stages/rollout_stats.py)
        reuse_forward=cfg.algorithm.reuse_forward, estimator_reads_old_logprobs=cfg.algorithm.kl_in_reward > 0, model=policy,
        off_policy=cfg.rollout.one_step_off_policy)
    collect = Collector.from_config(
        cfg, task=task, problems=train_problems, tokenizer=tokenizer, sampler=sampler, allocator=allocator, engine=engine,
        policy=behaviour, reference=reference, critic=critic, dp=parts.collect_parallel(cfg, dp), plan=plan,
        shape_rewards=parts.build_reward_shaping(cfg), defer_policy_stats=separate_pass is None,
        episodes=parts.build_episodes(task, engine=engine, policy=behaviour, tokenizer=tokenizer))
    schedule = session.own(parts.build_schedule(cfg, collect, policy=policy, behaviour=behaviour))  # on-policy, or one step ahead
    update = PolicyUpdate(trainables=trainables, loss=build_loss(cfg), modulator=modulator, dp=dp, ppo_epochs=cfg.algorithm.ppo_epochs,
                          mini_batches=cfg.algorithm.mini_batches, micro_batch_size=plan.training,
                          modulator_scope=cfg.modulator.scope, temperature=cfg.rollout.temperature, reuse_forward=separate_pass is None,
                          guard=NonFiniteGuard(max_in_a_row=cfg.trainer.max_skipped_steps), value_function=critic,
                          off_policy=cfg.rollout.one_step_off_policy)

    # ---------------------------------------------------------------- resume, logs
    resumable = dict(dp=dp, trainables=trainables, allocator=allocator, sampler=sampler, guard=update.guard, schedule=schedule)
    totals = {"step": 0, "rollouts": 0, "tokens": 0, "seconds": 0.0}
    if resume_from:
        totals = checkpoint.restore_training(resume_from, **resumable)
        console.print(f"resumed from {resume_from} at step {totals['step']}")
    resume_step = totals["step"] if resume_from else None
    tracker = session.own(Tracker(run_dir=run_dir, cfg=cfg.logger, config=config_dict, job_type="train", resume_step=resume_step,
                                  enabled=dp.is_main), after_error=False)  # after an error W&B marks the run failed itself
    # each step's completions as rows: rollouts.jsonl (trainer.dump_rollouts), W&B's table, the terminal's best and worst
    rollout_rows = RolloutRows(run_dir, dp=dp, resume_step=resume_step, write=cfg.trainer.dump_rollouts)
    processes = f", {dp.world_size} processes ({dp.engine})" if dp.distributed else ""
    console.print(f"train: {cfg.model.name} ({total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable), "
                  f"allocator={cfg.allocator.name} modulator={cfg.modulator.name} advantage={cfg.algorithm.advantage} critic={cfg.critic.name}, "
                  f"{P} prompts x {cfg.rollout.n} = {P * cfg.rollout.n} rollouts per step, {cfg.trainer.steps} steps{processes}")
    console.print(plan.note)
    if separate_pass and cfg.algorithm.reuse_forward:
        console.print(f"log pi_old by a separate pass: {separate_pass}")
    console.print(f"eval {eval_plan.note}")

    # eval generates with the rollout engine (vLLM, or hf's copy in model.dtype); under FSDP2 and one-step-off-policy the
    # engine's weights are not the current policy's (gathered per generation; one update behind): eval on the policy
    eval_engine = None if dp.sharded or cfg.rollout.one_step_off_policy else engine

    def test_eval(progress: EvalProgress) -> dict[str, Any]:
        with dp.full_weights(model), progress:  # FSDP2: eval is rank-local, on the gathered weights
            return evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=cfg.eval_max_new_tokens,
                            seed=cfg.seed, batch_size=eval_plan.generation, dp=dp, engine=eval_engine, progress=progress)

    def run_eval(step: int, progress: EvalProgress) -> dict[str, Any]:
        result = test_eval(progress)
        faultpoints.reach("eval")
        tracker.log({**eval_metrics(result), **plan.metrics(), "rollout/total_rollouts": totals["rollouts"],
                     "rollout/total_tokens": totals["tokens"], "time/elapsed_s": totals["seconds"]}, step=step)
        return result

    # from here a SIGTERM/SIGUSR1 ends in a checkpoint after the step it arrives in; the `with` below gives the old handlers back
    preemption = Preemption(cfg.trainer.preempt_signals)
    last_eval = None
    if totals["step"] == 0:
        first = run_eval(0, EvalProgress(console))
        if dp.is_main:  # the same problems, seed and settings as eval.json: before and after side by side, per problem
            write_json_atomically(run_dir / "eval_before.json", first)
        console.print(f"before RL: test greedy pass@1 {first['overall']['greedy']:.3f}")

    with TrainView(console, total=cfg.trainer.steps, start=totals["step"], rows=cfg.trainer.live_rows,
                   completions_every=cfg.trainer.log_completions_every) as view, preemption:
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
            engine.sync(policy)  # vLLM, hf's copy in model.dtype: the new weights in (hf on the policy itself: nothing)
            update_seconds = time.perf_counter() - t0
            # the engine's log-probs against the trainer's log pi_old, which the update has filled: every step, corrected or not
            update_metrics.update(step_mismatch(step_data.batch, cfg.algorithm, gather_objects=dp.gather_objects))
            schedule.settle()  # one-step-off-policy: the next step's batch is in before logs, eval and checkpoints

            # 5. log, dump, eval, checkpoint
            counts = step_data.allocation.counts
            replicas = dp.check_replicas(model, counts)
            if replicas and (replicas.get("dist/replica_param_diff", 0.0) > 0 or replicas["dist/replica_alloc_diff"] > 0):
                raise DynamoError(f"the processes diverged at step {step}: {replicas}")
            distributions["alloc/counts"] = counts.float()
            metrics, totals = step_metrics(step_data, dp=dp, totals=totals, step=step, step_start=step_start, zero_signal=zero_signal,
                                           update_metrics=update_metrics, distributions=distributions, replicas=replicas,
                                           alloc_seconds=alloc_seconds, update_seconds=update_seconds)
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.steps or spent:
                tracker.log(metrics, step=step)
                tracker.log_distributions(distributions, step=step)
            rows = rollout_rows(step, step_data, advantages=sequence_advantages)  # a collective; [] on all ranks but 0
            if cfg.trainer.log_completions_every and step % cfg.trainer.log_completions_every == 0:
                tracker.log_completions(sample_rows(rows, k=cfg.trainer.log_completions_rows, seed=cfg.seed, step=step), step=step)
            if step == cfg.trainer.steps or spent or (cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0):
                last_eval = run_eval(step, view.eval_progress())
                metrics["eval/greedy_pass1"] = last_eval["overall"]["greedy"]
            view.update(step, budget_rows(allocator, step_data.problems, counts, step_data.successes), metrics, best_and_worst(rows))
            if skipped := update.guard.take_causes():
                console.print(f"step {step}: skipped {len(skipped)} optimiser step(s): {'; '.join(skipped)}", markup=False)
            faultpoints.reach("step_end")
            preempted = step != cfg.trainer.steps and preemption.requested(dp)  # the last step ends the run anyway
            if preempted or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0 and step != cfg.trainer.steps):
                checkpoint.save_training(checkpoints / f"step-{step}", policy=policy, tokenizer=tokenizer, totals=totals, **resumable)
                if dp.is_main:
                    checkpoint.prune(checkpoints, cfg.trainer.keep_last)
            if spent:  # trainer.rollout_budget reached: the final eval ran above, the final checkpoint follows
                break
            if preempted:  # the session closes the schedule, the tracker, the lock and the processes
                raise Preempted(f"{preemption.received or 'a preemption signal'} (on some process): checkpoint "
                                f"{checkpoints / f'step-{step}'} written after step {step}; continue with trainer.resume=auto",
                                exit_code=cfg.trainer.preempt_exit_code)

    final = checkpoint.save_training(checkpoints / "final", policy=policy, tokenizer=tokenizer, totals=totals, **resumable)
    result = last_eval or test_eval(EvalProgress(console))
    if dp.is_main:
        write_json_atomically(run_dir / "eval.json", result)
    tracker.summary({**eval_metrics(result), "rollout/total_rollouts": totals["rollouts"], "rollout/total_tokens": totals["tokens"]})
    console.print(eval_table(result, title=f"test split after {totals['step']} RL steps"))
    console.print(f"final checkpoint: {final}")
