"""`dynamo eval`: greedy accuracy, mean@n and unbiased pass@k of a checkpoint, overall and per level."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dynamo_cli.config.recipes import EvalConfig
from dynamo_cli.models.load import load_policy
from dynamo_cli.recipes.parts import build_task
from dynamo_cli.runtime import atomic
from dynamo_cli.runtime.session import RunSession
from dynamo_cli.stages.evaluate import eval_metrics, eval_subset, evaluate, plan_eval_batch
from dynamo_cli.tracking.tracker import EvalProgress, Tracker, eval_table, make_console, write_json_atomically


def run(cfg: EvalConfig, run_dir: Path) -> None:
    # under `accelerate launch` each process evaluates a share; one command per run dir (runtime/runlock.py)
    with RunSession(cfg.device, run_dir, check_engine=False, lock=True) as session:
        evaluate_checkpoint(cfg, session)


def evaluate_checkpoint(cfg: EvalConfig, session: RunSession) -> None:
    dp, run_dir = session.dp, session.run_dir
    task = build_task(cfg.task)  # the data first: a malformed file stops before the model loads
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    console = make_console(cfg.logger, quiet=not dp.is_main)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy(cfg.model, dp.device)
    problems = task.test_problems() if cfg.split == "test" else task.train_problems()
    problems = eval_subset(problems, cfg.eval.max_problems)
    source = cfg.model.path or f"model={cfg.model.name} (no checkpoint: its initial weights)"
    console.print(f"eval: {source} on {len(problems)} {cfg.task.name} {cfg.split} problems, "
                  f"greedy + {cfg.eval.n_samples} samples each (T={cfg.eval.temperature}, top_p={cfg.eval.top_p})")
    tracker = session.own(Tracker(run_dir=run_dir, cfg=cfg.logger, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                                  job_type="eval", enabled=dp.is_main), after_error=False)
    max_new_tokens = cfg.eval_max_new_tokens
    plan = plan_eval_batch(model, tokenizer, task, problems, settings=cfg.eval, max_new_tokens=max_new_tokens, device=dp.device,
                           memory_fraction=cfg.memory_fraction, world_size=dp.world_size)
    console.print(plan.note)
    start = time.perf_counter()
    with EvalProgress(console) as progress:
        result = evaluate(model, tokenizer, task, problems, settings=cfg.eval, max_new_tokens=max_new_tokens, seed=cfg.seed,
                          batch_size=plan.generation, dp=dp, progress=progress)
    result["model"] = source
    result["seconds"] = round(time.perf_counter() - start, 2)
    metrics = {**eval_metrics(result), **plan.metrics()}
    tracker.log(metrics, step=0)
    tracker.summary(metrics)
    if dp.is_main:
        write_json_atomically(run_dir / "eval.json", result)
    console.print(eval_table(result, title=f"{cfg.task.name} {cfg.split}: {source}"))
