"""update: PPO epochs x mini-batches x micro-batches over the Loss, stepping every Trainable per mini-batch.

    for each epoch: shuffle rows; split into exactly `mini_batches` mini-batches (tensor_split)
        modulator (once per mini-batch: token advantages, the policy term's mask, extra terms)
        for each micro-batch: forward -> ModelOutputs -> Loss (algo/terms.py) -> backward (accumulate)
        clip + optimiser + scheduler step of every trainable (during a critic's warm-up: the critic's only)

The modulator reads the *current* policy's entropy and log-probs. With modulator.scope=mini_batch|sequence they come
from a no-grad forward over the mini-batch before its loss (except where the policy is still the rollout policy:
the first mini-batch of an on-policy step); with scope=micro_batch each micro-batch is shaped from its own training
forward (detached), as the reference does: no extra forward at all. A token the modulator drops leaves the policy
term only (Trajectories.policy_mask); KL, entropy bonus, value loss and every denominator keep the loss mask.

A mini-batch is every process's chunk of the same index; its loss is a mean over the *global* mini-batch
(token or sequence counts summed over processes) and the engine averages gradients over processes, so each
process scales its share by their number: one process and N processes take the same gradient step.
"""
from __future__ import annotations

import contextlib
import time

import torch

from dynamo_cli.algo.terms.base import Loss, group_row_weights, loss_counts
from dynamo_cli.errors import DynamoError
from dynamo_cli.models.trainable import Trainable
from dynamo_cli.modulation.base import TokenShaping
from dynamo_cli.protocols import Modulator
from dynamo_cli.rollout.padding import pad_response, padding_waste, padding_window, trim_padding
from dynamo_cli.rollout.policy_stats import batched_token_stats, completion_forward
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories
from dynamo_cli.runtime.distributed import DataParallel
from dynamo_cli.runtime.guard import NonFiniteGuard
from dynamo_cli.stages import rollout_stats


def check_batch_layout(*, rollouts_per_step: int, world_size: int, mini_batches: int) -> None:
    """Every process gets the same number of rollouts, and at least one per mini-batch: then every process runs
    the same sequence of forward/backward calls, which the engines' collectives require."""
    if rollouts_per_step % world_size:
        raise DynamoError(f"trainer.prompts_per_step x rollout.n = {rollouts_per_step} rollouts per step do not split "
                          f"evenly over {world_size} processes; choose a multiple of {world_size}")
    if rollouts_per_step // world_size < mini_batches:
        raise DynamoError(f"algorithm.mini_batches={mini_batches} needs at least {mini_batches} rollouts per process; "
                          f"each of the {world_size} processes has {rollouts_per_step // world_size}")


def scope_index(size: int, *, scope: str, micro_batch_size: int) -> torch.Tensor:
    """The normalisation group of each sequence for the modulator's min/max (docs/algorithm.md: our choice)."""
    if scope == "sequence":
        return torch.arange(size)
    if scope == "micro_batch":
        return torch.arange(size) // micro_batch_size
    return torch.zeros(size, dtype=torch.long)


class PolicyUpdate:
    def __init__(self, *, trainables: list[Trainable], loss: Loss, modulator: Modulator, dp: DataParallel, ppo_epochs: int,
                 mini_batches: int, micro_batch_size: int, modulator_scope: str, temperature: float, reuse_forward: bool,
                 guard: NonFiniteGuard | None = None, value_function=None, off_policy: bool = False):
        self.trainables, self.loss, self.modulator, self.dp = trainables, loss, modulator, dp
        self.value_function = value_function  # models/critic.py's SeparateCritic | SharedCritic with a "critic" trainable, else None
        self.guard = guard or NonFiniteGuard(max_in_a_row=0)  # the recipe passes trainer.max_skipped_steps; alone: any skip stops
        self.ppo_epochs, self.mini_batches, self.micro_batch_size = ppo_epochs, mini_batches, micro_batch_size
        self.modulator_scope, self.temperature = modulator_scope, temperature
        # True: the batch's old_logprobs / old_entropy are rollout_stats.deferred buffers this update fills (collect skipped them)
        self.reuse_forward = reuse_forward
        # rollout.one_step_off_policy: the batch was sampled by the weights before the last update, so its old_logprobs /
        # old_entropy are never the current policy's, not even before this step's first optimiser step
        self.off_policy = off_policy
        # scope=micro_batch: each micro-batch is shaped from its own training forward (no separate no-grad pass)
        self.modulate_in_forward = modulator_scope == "micro_batch" and modulator.needs_policy_stats

    @property
    def policy(self) -> Trainable:
        return self.trainables[0]

    @property
    def critic(self) -> Trainable | None:  # the value model, when algorithm.advantage=gae
        return next((t for t in self.trainables[1:] if t.name == "critic"), None)

    def __call__(self, batch: Trajectories, *, generator: torch.Generator,
                 step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """One step's update over this process's rows (RL step `step`, 1-based). Returns (metrics, modulation distributions)."""
        dp = self.dp
        active = [t for t in self.trainables if step <= t.solo_steps] or self.trainables  # a critic's warm-up: it trains alone
        grad_norm_sums = {t.name: 0.0 for t in self.trainables}
        sums = dict.fromkeys(self.loss.metric_names(), 0.0)
        modulate_seconds, updates, shapings = 0.0, 0, 0
        tokens_real, tokens_fed = 0, 0  # token positions of the policy forwards: real, all (train/padding_waste)
        modulation_metrics: dict[str, float] = {}
        distributions: dict[str, list[torch.Tensor]] = {}

        def record(shaping: TokenShaping, seconds: float) -> TokenShaping:
            nonlocal modulate_seconds, shapings
            modulate_seconds, shapings = modulate_seconds + seconds, shapings + 1
            for key, value in shaping.metrics.items():
                modulation_metrics[key] = modulation_metrics.get(key, 0.0) + value
            for key, value in shaping.distributions.items():
                distributions.setdefault(key, []).append(value.cpu())
            return shaping

        def shape(mb: Trajectories, *, first: bool) -> TokenShaping:
            t0 = time.perf_counter()
            shaping = self.shape(mb, first=first, generator=generator)
            return record(shaping, time.perf_counter() - t0)

        def shape_micro(micro: Trajectories, *, logprobs: torch.Tensor, entropy: torch.Tensor) -> TokenShaping:
            t0 = time.perf_counter()
            shaping = self.shape_micro(micro, logprobs=logprobs, entropy=entropy, generator=generator)
            return record(shaping, time.perf_counter() - t0)

        for epoch in range(self.ppo_epochs):
            order = torch.randperm(len(batch), generator=generator)
            parts = order.tensor_split(self.mini_batches)  # exactly mini_batches parts
            fuse_first = self.reuse_forward and epoch == 0 and self.fill_rollout_stats(batch, parts)
            for mb_index, rows in enumerate(parts):
                mb = batch.select(rows)
                # before shaping: a token a modulator drops leaves the denominators alone. A row without loss tokens (a
                # group DAPO/GRESO dropped, a masked truncation) counts in neither. At least 1: with algorithm.mask_truncated
                # a mini-batch of truncated completions has no loss token and adds 0
                tokens, sequences = loss_counts(mb.loss_mask)
                num_tokens, num_seqs = max(int(dp.sum(tokens)), 1), max(int(dp.sum(sequences)), 1)
                if self.loss.mode == "group_mean":
                    mb = mb.replace(row_weight=self.group_weights(mb, mb.loss_mask.any(1)))
                fused = fuse_first and mb_index == 0  # its forward gives the rollout policy's statistics
                # a modulator that reads them shapes after that forward (one micro-batch, see fill_rollout_stats); with
                # scope=micro_batch every micro-batch is shaped after its own forward
                from_forward = self.modulate_in_forward or (fused and self.modulator.needs_policy_stats)
                shaping = None if from_forward else shape(mb, first=(epoch, mb_index) == (0, 0) and not self.off_policy)
                starts = range(0, len(mb), self.micro_batch_size)
                loss_finite = True
                for start in starts:
                    part = slice(start, start + self.micro_batch_size)
                    window = padding_window(mb.select(part))  # the micro-batch's columns that are not padding in every row
                    with contextlib.ExitStack() as stack:  # gradients cross processes once per mini-batch
                        for t in self.trainables:
                            stack.enter_context(dp.accumulate(t.model, sync=start == starts[-1]))
                        out = None
                        if fused or self.modulate_in_forward:
                            out, entropy = self.forward(trim_padding(mb.select(part), window).to(dp.device),
                                                        extra=() if shaping is None else shaping.extra_terms,
                                                        train_policy=self.policy in active, rollout_stats=True)
                            if fused:  # the rollout policy's statistics of these rows: the buffers collect left
                                stats = dict(logprobs=pad_response(out.logprobs.detach(), mb.loss_mask.shape[1]),
                                             entropy=pad_response(entropy, mb.loss_mask.shape[1]))
                                rollout_stats.record(batch, rows[part], **stats)
                                rollout_stats.record(mb, part, **stats)
                        micro = trim_padding(mb.select(part), window).to(dp.device)
                        if self.modulate_in_forward:
                            micro_shaping = shape_micro(micro, logprobs=out.logprobs.detach(), entropy=entropy)
                        else:
                            if shaping is None:
                                shaping = shape(mb, first=True)
                            micro_shaping = None
                        extra = (micro_shaping or shaping).extra_terms
                        if out is not None and any(self.loss.needs(what, extra) != self.loss.needs(what) for what in ("entropy", "values")):
                            # an extra term reads what the forward did not compute: again with it (no modulator today)
                            out = None
                        if micro_shaping is not None:
                            micro = micro.replace(advantages=micro_shaping.advantages, policy_mask=micro_shaping.loss_mask,
                                                  extra_mask=micro_shaping.extra_mask)
                        else:
                            shaped = mb.replace(advantages=shaping.advantages, policy_mask=shaping.loss_mask, extra_mask=shaping.extra_mask)
                            micro = trim_padding(shaped.select(part), window).to(dp.device)
                        tokens_real, tokens_fed = tokens_real + int(micro.attention_mask.sum()), tokens_fed + micro.attention_mask.numel()
                        if out is None:
                            out = self.forward(micro, extra=extra, train_policy=self.policy in active)
                        loss, metrics = self.loss(micro, out, num_tokens=num_tokens, num_sequences=num_seqs, extra=extra)
                        dp.backward(loss * dp.world_size)  # the engine averages over processes; the global mean wants their sum
                    loss_finite = loss_finite and bool(torch.isfinite(loss.detach()))  # a CPU-GPU sync, like the metrics'
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value
                norms = {t.name: t.clip(dp) for t in active}  # global norms: the same on every process
                loss_finite = dp.sum(float(not loss_finite)) == 0  # a rank's NaN loss is every rank's skip
                take = self.guard.allow(step=step, update=updates + 1, loss_finite=loss_finite, grad_norms=norms)
                for t in active:
                    if take:
                        t.apply()
                    else:
                        t.discard()
                    grad_norm_sums[t.name] += norms[t.name]
                updates += 1
        # each process summed its share of every global mean: the sum over processes is the mean over the global batch
        metrics = {f"train/{k}": dp.sum(v) / updates for k, v in sums.items()}
        for t in self.trainables:  # of the all-reduced gradient: the same on every process (0 while a module waits)
            prefix = "train/" if t is self.policy else f"train/{t.name}_"
            metrics[f"{prefix}grad_norm"] = grad_norm_sums[t.name] / updates
            metrics[f"{prefix}lr"] = t.scheduler.get_last_lr()[0]
        metrics.update(dp.mean({k: v / max(shapings, 1) for k, v in modulation_metrics.items()}))  # the mean over its calls
        metrics["time/modulate_s"] = modulate_seconds
        metrics["train/padding_waste"] = padding_waste(real=dp.sum(tokens_real), total=dp.sum(tokens_fed))
        metrics["train/skipped_steps"] = self.guard.skipped
        return metrics, {k: dp.gather_rows(torch.cat(v)) for k, v in distributions.items()}

    def group_weights(self, mb: Trajectories, carries: torch.Tensor) -> torch.Tensor:
        """group_mean's (n,) row weights over the whole mini-batch (every process's rows: a prompt's rollouts may sit on
        several): 1 / (P n_g) for a row with loss tokens, 0 for one without (algo/terms/base.py group_row_weights)."""
        prompts = self.dp.gather_rows(mb.prompt_index[carries].cpu())  # (n_global,) the prompt of each row with loss
        size = max(int(prompts.max()) + 1 if len(prompts) else 0, int(mb.prompt_index.max()) + 1 if len(mb) else 0)
        counts = torch.bincount(prompts, minlength=size)
        return group_row_weights(prompt_index=mb.prompt_index.cpu(), carries_loss=carries.cpu(), group_counts=counts).float()

    def shape(self, mb: Trajectories, *, first: bool, generator: torch.Generator) -> TokenShaping:
        """The modulator's view of a mini-batch, with the *current* policy's entropy and log-probs when it needs
        them: the policy has moved since the rollouts, except before the first mini-batch of the first epoch of an
        on-policy step (`first`; under one_step_off_policy the rollouts' statistics are one update old even there).
        `generator`: the step's, for a modulator that draws tokens at random (Clip-Cov)."""
        device, modulator = self.dp.device, self.modulator
        if modulator.needs_policy_stats and not first:
            logprobs_now, entropy_now = batched_token_stats(  # rank-local, no gradient: on the unwrapped module
                self.dp.unwrap(self.policy.model), input_ids=mb.input_ids.to(device), attention_mask=mb.attention_mask.to(device),
                prompt_width=mb.prompt_width, temperature=self.temperature, micro_batch_size=self.micro_batch_size)
        else:
            logprobs_now, entropy_now = mb.old_logprobs.to(device), mb.old_entropy.to(device)
        scope_sync = self.dp.scope_sync() if self.modulator_scope == "mini_batch" else None  # a mini-batch spans the processes
        return modulator(advantages=mb.advantages.to(device), mask=mb.loss_mask.to(device), entropy=entropy_now,
                         logprobs=logprobs_now, old_logprobs=mb.old_logprobs.to(device), scope_sync=scope_sync, generator=generator,
                         scope_index=scope_index(len(mb), scope=self.modulator_scope, micro_batch_size=self.micro_batch_size).to(device))

    def shape_micro(self, micro: Trajectories, *, logprobs: torch.Tensor, entropy: torch.Tensor,
                    generator: torch.Generator) -> TokenShaping:
        """scope=micro_batch: the modulator's view of one micro-batch (already on the device, padding trimmed) from its
        own training forward's detached log-probs and entropies, the micro-batch one normalisation scope (the
        reference: the min/max over the micro-batch; selections over its tokens). Rank-local: no collective."""
        return self.modulator(advantages=micro.advantages, mask=micro.loss_mask, entropy=entropy, logprobs=logprobs,
                              old_logprobs=micro.old_logprobs, scope_sync=None, generator=generator,
                              scope_index=torch.zeros(len(micro), dtype=torch.long, device=micro.advantages.device))

    def fill_rollout_stats(self, batch: Trajectories, parts: list[torch.Tensor]) -> bool:
        """Before the first optimiser step: the rollout policy's statistics of the rows the first mini-batch's
        forward will not give, by a no-grad pass. Returns whether that forward gives its own rows' statistics: not
        when the modulator reads them before the loss and the mini-batch spans several micro-batches (their graphs
        would all have to be held at once), then the pass covers every row, as the separate pass did."""
        fuse = not self.modulator.needs_policy_stats or self.modulate_in_forward or len(parts[0]) <= self.micro_batch_size
        rest = torch.cat([*parts[1:], torch.empty(0, dtype=torch.long)]) if fuse else torch.cat(parts)
        if len(rest):
            rest_rows = batch.select(rest)
            logprobs, entropy = batched_token_stats(  # rank-local, no gradient: on the unwrapped module
                self.dp.unwrap(self.policy.model), input_ids=rest_rows.input_ids.to(self.dp.device),
                attention_mask=rest_rows.attention_mask.to(self.dp.device), prompt_width=batch.prompt_width,
                temperature=self.temperature, micro_batch_size=self.micro_batch_size)
            rollout_stats.record(batch, rest, logprobs=logprobs, entropy=entropy)
        return fuse

    def forward(self, micro: Trajectories, *, extra=(), train_policy: bool = True,
                rollout_stats: bool = False) -> ModelOutputs | tuple[ModelOutputs, torch.Tensor]:
        """The differentiable outputs over a micro-batch's response region: the policy's (without a graph while it
        waits out a critic's warm-up), entropy only if a term reads it, the critic's values if a term reads them
        (critic=shared: off the same forward's last hidden state). `rollout_stats`: also the entropy (n, L) without
        a graph -> (outputs, entropy); log pi_old is logprobs.detach()."""
        with_entropy, with_values = self.loss.needs("entropy", extra), self.loss.needs("values", extra)
        value_function = self.value_function if with_values else None
        with torch.set_grad_enabled(train_policy):
            policy = completion_forward(
                self.policy.model, input_ids=micro.input_ids, attention_mask=micro.attention_mask, prompt_width=micro.prompt_width,
                temperature=self.temperature, with_entropy=with_entropy, detached_entropy=rollout_stats,
                with_hidden=value_function is not None and value_function.reads_policy_hidden)
        values = None if value_function is None else value_function.values(
            self.critic.model, input_ids=micro.input_ids, attention_mask=micro.attention_mask, prompt_width=micro.prompt_width,
            hidden=policy.hidden)
        out = ModelOutputs(logprobs=policy.logprobs, entropy=policy.entropy if with_entropy else None, values=values)
        return (out, policy.entropy.detach()) if rollout_stats else out
