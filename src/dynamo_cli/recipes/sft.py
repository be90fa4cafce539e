"""`dynamo sft`: supervised fine-tuning on the task's demonstrations, loss on completion tokens only (on a dialogue:
its assistant turns only, `Task.sft_examples`)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dynamo_cli.config.recipes import SFTConfig
from dynamo_cli.errors import DynamoError, warn
from dynamo_cli.models import precision
from dynamo_cli.models.load import count_parameters, load_policy
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.recipes.parts import build_task
from dynamo_cli.rollout.hf import position_ids_from_mask
from dynamo_cli.runtime import atomic, checkpoint
from dynamo_cli.runtime.resources import plan_batch_sizes
from dynamo_cli.runtime.session import RunSession
from dynamo_cli.stages.evaluate import eval_metrics, eval_subset, evaluate, plan_eval_batch
from dynamo_cli.tracking.tracker import EvalProgress, StepProgress, Tracker, eval_table, make_console, write_json_atomically


def tokenize_demonstrations(task, problems, tokenizer) -> list[tuple[list[int], list[int], list[bool]]]:
    """(prompt ids, completion ids, loss mask over the completion) per problem (`Task.sft_examples`): a single-turn
    task's demonstration + EOS, all trained on; a dialogue's (environment, chat_jsonl) only on its assistant turns."""
    return task.sft_examples(problems, tokenizer)


def collate(examples: list[tuple[list[int], list[int], list[bool]]], pad_id: int):
    """Left-padded (B, T) ids, attention mask and labels with -100 everywhere but the completion's trained tokens."""
    width = max(len(p) + len(c) for p, c, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (p, c, trained) in enumerate(examples):
        seq = torch.tensor(p + c)
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
        labels[row, width - len(c):] = torch.where(torch.tensor(trained, dtype=torch.bool), torch.tensor(c), -100)
    return ids, mask, labels


def completion_loss_sum(model, ids, mask, labels) -> torch.Tensor:
    """Summed next-token cross-entropy over completion tokens (the caller divides by the batch's count)."""
    with precision.autocast(model):  # model.dtype over float32 masters (models/precision.py)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")


def run(cfg: SFTConfig, run_dir: Path) -> None:
    # under `accelerate launch`: each process trains on a share of every batch; one command per run dir (runtime/runlock.py)
    with RunSession(cfg.device, run_dir, lock=True) as session:
        sft(cfg, session)


def sft(cfg: SFTConfig, session: RunSession) -> None:
    dp, run_dir = session.dp, session.run_dir
    if cfg.trainer.batch_size % dp.world_size:
        raise DynamoError(f"trainer.batch_size={cfg.trainer.batch_size} does not split evenly over {dp.world_size} processes; "
                          f"choose a multiple of {dp.world_size}")
    task = build_task(cfg.task)  # the data first: a malformed file stops before the model loads
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    console = make_console(cfg.logger, quiet=not dp.is_main)
    device = dp.device
    torch.manual_seed(cfg.seed)
    if cfg.optim.master_weights == "model" and cfg.model.dtype != "float32":
        warn(precision.PURE_BF16_WARNING.format(dtype=cfg.model.dtype))
    model, tokenizer = load_policy(cfg.model, device, master_weights=cfg.optim.master_weights)
    train_problems, test_problems = task.train_problems(), task.test_problems()
    test_problems = eval_subset(test_problems, cfg.eval.max_problems)
    examples = tokenize_demonstrations(task, train_problems, tokenizer)
    total, trainable = count_parameters(model)
    console.print(f"sft: {cfg.model.name} ({total / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable) on "
                  f"{len(examples)} {cfg.task.name} demonstrations, {cfg.trainer.steps} steps of {cfg.trainer.batch_size}")

    tracker = session.own(Tracker(run_dir=run_dir, cfg=cfg.logger, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                                  job_type="sft", enabled=dp.is_main), after_error=False)
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps=cfg.trainer.steps)
    longest = max(len(p) + len(c) for p, c, _ in examples)
    plan = plan_batch_sizes(model, device, generation=None, training=cfg.trainer.micro_batch_size, prompt_tokens=0,
                            new_tokens=longest, most_generation=1, most_training=cfg.trainer.batch_size // dp.world_size,
                            memory_fraction=cfg.memory_fraction,  # logits over every position: all "completion"
                            micro_batch_key="trainer.micro_batch_size")
    micro_batch_size = plan.training
    max_new_tokens = cfg.eval_max_new_tokens
    eval_plan = plan_eval_batch(model, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=max_new_tokens,
                                device=device, memory_fraction=cfg.memory_fraction, world_size=dp.world_size)
    console.print(plan.note)
    console.print(f"eval {eval_plan.note}")
    tracker.log({**plan.metrics(), **eval_plan.metrics()}, step=0)  # sft generates only in its eval
    model, optimizer = dp.prepare(model, optimizer, micro_batch_size=micro_batch_size)
    policy = dp.unwrap(model)  # full weights on every rank: eval and checkpoints
    order = torch.Generator().manual_seed(cfg.seed)
    checkpoints = run_dir / "checkpoints"
    tokens_seen, window_start, last_loss = 0, time.perf_counter(), float("nan")

    def run_eval(step: int, progress: EvalProgress) -> dict:
        with progress:
            result = evaluate(policy, tokenizer, task, test_problems, settings=cfg.eval, max_new_tokens=max_new_tokens, seed=cfg.seed,
                              batch_size=eval_plan.generation, dp=dp, progress=progress)
        tracker.log(eval_metrics(result), step=step)
        return result

    model.train()
    with StepProgress(console, total=cfg.trainer.steps, description="sft") as progress:
        for step in range(1, cfg.trainer.steps + 1):
            batch = torch.randint(len(examples), (cfg.trainer.batch_size,), generator=order).tolist()  # the same on every rank
            num_tokens = sum(sum(examples[i][2]) for i in batch)  # trained tokens of the whole batch: the loss is their mean
            lo, hi = dp.shard(len(batch))
            mine = batch[lo:hi]
            micro = [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
            loss_total = 0.0
            for k, rows in enumerate(micro):
                ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in rows], tokenizer.pad_token_id))
                with dp.accumulate(model, sync=k == len(micro) - 1):
                    loss = completion_loss_sum(model, ids, mask, labels) / num_tokens
                    dp.backward(loss * dp.world_size)  # the engine averages gradients over ranks
                loss_total += loss.item()
                tokens_seen += int(mask.sum())
            loss_total = dp.sum(loss_total)
            grad_norm = dp.clip_gradients(model, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = loss_total
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.steps:
                elapsed = time.perf_counter() - window_start
                metrics = {"train/loss": loss_total, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                           "train/tokens_per_s": dp.sum(tokens_seen) / elapsed}
                tracker.log(metrics, step=step)
                tokens_seen, window_start = 0, time.perf_counter()
                progress.update(step, f"loss {loss_total:.4f} {metrics['train/tokens_per_s']:.0f} tok/s", log_line=True)
            else:
                progress.update(step, f"loss {last_loss:.4f}", log_line=False)
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step != cfg.trainer.steps:
                result = run_eval(step, EvalProgress(console, host=progress.progress))  # a bar beside sft's own
                console.print(f"step {step}: test greedy pass@1 {result['overall']['greedy']:.3f}")
            if cfg.trainer.save_every and step % cfg.trainer.save_every == 0 and dp.is_main:
                checkpoint.save_checkpoint(checkpoints / f"step-{step}", model=policy, tokenizer=tokenizer,
                                           trainer_state={"step": step, "optimizer": optimizer.state_dict(),
                                                          "scheduler": scheduler.state_dict()})
                checkpoint.prune(checkpoints, cfg.trainer.keep_last)

    final = checkpoints / "final"
    if dp.is_main:
        checkpoint.save_checkpoint(final, model=policy, tokenizer=tokenizer)
    result = run_eval(cfg.trainer.steps, EvalProgress(console))
    if dp.is_main:
        write_json_atomically(run_dir / "eval.json", result)
    tracker.summary(eval_metrics(result))
    console.print(eval_table(result, title=f"test split after SFT ({len(test_problems)} problems)"))
    console.print(f"final checkpoint: {final}")
