"""Episodes: what one rollout of a prompt is. Problems x counts -> Rollouts, their rewards and per-row stats.

    SingleTurnEpisodes   one completion per rollout (the rollout engine), judged by the task: every task but
                         an environment, exactly as before
    MultiTurnEpisodes    a dialogue with the task's environment (tasks/environment.py): the policy and the
                         environment take turns; the policy's tokens carry the loss mask, the environment's do not

Which one a task uses is chosen once, by `task.interaction`, in EPISODES.

Multi-turn on the hf backend re-prefills each turn: every policy turn is generated from the whole dialogue so far
(prompt + earlier turns + replies), with a fresh KV cache. Turns are batched over every trajectory still running.
That costs a prefill per turn (cheap next to decoding at these lengths); keeping the cache across turns would need
the environment's tokens appended to it, which `rollout._generate_chunk` does not do. Sampling stays
counter-based: turn k of row r draws from the stream (seed_k, streams[r]), seed_0 = seed, seed_k = stream_seed(seed, k).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamo_cli.models import precision
from dynamo_cli.registry import Registry
from dynamo_cli.rollout.dialogue import between_text
from dynamo_cli.rollout.hf import Rollouts, _generate_chunk, end_token_ids, stream_seed
from dynamo_cli.tasks.answers import RULES
from dynamo_cli.verify.deadline import DEFAULT_TIMEOUT, VerifierTimeout
from dynamo_cli.verify.verifiers import Watchdog, guarded, warn_counts

# what one rollout of a prompt is, chosen by the task's `interaction`: single_turn | environment
EPISODES = Registry("episode runner", key=lambda task: task.interaction)

@dataclass
class Episodes:
    rollouts: Rollouts
    rewards: Tensor  # (N,) float32
    rules: Tensor  # (N,) long: index into tasks.answers.RULES of the rule behind each reward
    stats: dict[str, Tensor] = field(default_factory=dict)  # name -> (N,) per-row counters (turns, tool_calls); {} single-turn
    seconds: dict[str, float] = field(default_factory=dict)  # generate, score
    faults: dict[str, float] = field(default_factory=dict)  # the verifier's fault counts (rollout/reward_errors, ...)


def score(task, problems, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(N,) rewards, (N,) answer rules (indices into tasks.answers.RULES) and the verifier's fault counts
    (rollout/reward_errors, rollout/reward_timeouts, ...). Completion r is judged against *its own* prompt's problem,
    problems[prompt_index[r]], by the task's verifier (verify/verifiers.py): a fault scores 0 and is counted, never raised."""
    verification = task.verifier(rollouts.texts, [problems[i] for i in rollouts.prompt_index.tolist()])
    verdicts = verification.verdicts
    return (torch.tensor([v.reward for v in verdicts], dtype=torch.float32),
            torch.tensor([RULES.index(v.rule) for v in verdicts], dtype=torch.long), verification.metrics())


@EPISODES.register("single_turn")
class SingleTurnEpisodes:
    """One completion per rollout from `generate` (a rollout engine's), judged by the task's verifier."""

    def __init__(self, generate: Callable[..., Rollouts], task):
        self.generate, self.task = generate, task

    def __call__(self, problems: list, prompts: list[str], **generation) -> Episodes:
        t0 = time.perf_counter()
        rollouts = self.generate(prompts, **generation)
        t1 = time.perf_counter()
        rewards, rules, faults = score(self.task, problems, rollouts)
        return Episodes(rollouts=rollouts, rewards=rewards, rules=rules, faults=faults,
                        seconds={"generate": t1 - t0, "score": time.perf_counter() - t1})


Segment = tuple[list[int], bool]  # (token ids, spoken by the policy)


def assemble(prompts: list[list[int]], segments: list[list[Segment]], *, pad_id: int):
    """Rows of (prompt, then alternating policy / environment segments) as one batch, in `generate`'s layout:
    prompts left-padded to a common width, the response region right-padded.

    Returns (input_ids (N, Tp + Tc), attention_mask (N, Tp + Tc) long, completion_mask (N, Tc) bool: every real
    response token, policy_mask (N, Tc) bool: the policy's, turns (N, K, 2) long: [start, end) of each policy
    segment, (0, 0) past a row's last, prompt width Tp)."""
    n = len(prompts)
    width = max((len(p) for p in prompts), default=0)
    length = max((sum(len(ids) for ids, _ in row) for row in segments), default=0)
    k = max((sum(policy for _, policy in row) for row in segments), default=0)
    prompt_ids = torch.full((n, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completion = torch.full((n, length), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.bool)
    policy_mask = torch.zeros((n, length), dtype=torch.bool)
    turns = torch.zeros((n, max(k, 1), 2), dtype=torch.long)
    for r, (prompt, row) in enumerate(zip(prompts, segments, strict=True)):
        if prompt:
            prompt_ids[r, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            prompt_mask[r, width - len(prompt):] = 1
        at, turn = 0, 0
        for ids, policy in row:
            if ids:
                completion[r, at:at + len(ids)] = torch.tensor(ids, dtype=torch.long)
            completion_mask[r, at:at + len(ids)] = True
            if policy:
                policy_mask[r, at:at + len(ids)] = True
                turns[r, turn] = torch.tensor([at, at + len(ids)])
                turn += 1
            at += len(ids)
    input_ids = torch.cat([prompt_ids, completion], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
    return input_ids, attention_mask, completion_mask, policy_mask, turns, width


@EPISODES.register("environment")
class MultiTurnEpisodes:
    """Dialogues with `task.environment()`, batched over every running trajectory, on the policy itself (rollout=hf).

    Each environment step is guarded as a verification is (verify/verifiers.py `guarded`): its symbolic checks answer
    within the task verifier's timeout in any thread (worker processes), and a step that raises or runs past it ends
    its trajectory with reward 0, counted in rollout/reward_errors or rollout/reward_timeouts."""

    def __init__(self, policy, tokenizer, task):
        self.model, self.tokenizer, self.task = policy, tokenizer, task

    @torch.no_grad()
    def __call__(self, problems: list, prompts: list[str], *, counts: Tensor, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int | None, max_batch_size: int, streams: Tensor | None = None) -> Episodes:
        task, tokenizer, model = self.task, self.tokenizer, self.model
        t_start = time.perf_counter()
        prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), counts.cpu())  # (N,)
        n = len(prompt_index)
        streams = torch.arange(n) if streams is None else streams.cpu().long()
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        rows = prompt_index.tolist()
        envs = [task.environment() for _ in rows]
        history = [list(env.reset(problems[i])) for env, i in zip(envs, rows, strict=True)]
        transcripts = [[{"who": "environment", "content": m["content"]} for m in h] for h in history]
        segments: list[list[Segment]] = [[] for _ in rows]
        used, turns = [0] * n, [0] * n
        rewards, finished = [0.0] * n, [False] * n
        eos_ids, pad_id = end_token_ids(tokenizer, model), tokenizer.pad_token_id
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        env_seconds, active = 0.0, list(range(n))
        timeout = getattr(task.verifier, "timeout", DEFAULT_TIMEOUT)
        faults, first = {"rollout/reward_errors": 0.0, "rollout/reward_timeouts": 0.0}, None
        # the watchdog: the main thread's second layer, elsewhere the deadline alone; autocast: mixed precision (models/precision.py)
        with Watchdog(timeout) as watchdog, precision.autocast(model):
            for turn in range(task.max_turns):
                if not active:
                    break
                turn_seed = seed if seed is None or turn == 0 else stream_seed(seed, turn)
                limits = {r: min(max_new_tokens, task.max_tokens - used[r]) for r in active}
                still = []
                for start in range(0, len(active), max_batch_size):
                    chunk = active[start:start + max_batch_size]
                    prefixes = [encoded[rows[r]] + [t for ids, _ in segments[r] for t in ids] for r in chunk]
                    generated = _generate_chunk(
                        model, prefixes, pad_id=pad_id, eos_ids=eos_ids, max_new_tokens=max(limits[r] for r in chunk),
                        temperature=temperature, top_p=top_p, seed=turn_seed, streams=streams[chunk], device=device)
                    completion, mask = generated.completion.cpu(), generated.completion_mask.cpu()
                    t0 = time.perf_counter()
                    for b, r in enumerate(chunk):
                        ids = completion[b][mask[b]].tolist()[:limits[r]]  # a row may have less budget left than the chunk
                        ended = bool(ids) and ids[-1] in eos_ids
                        text = tokenizer.decode(ids, skip_special_tokens=True)
                        segments[r].append((ids, True))
                        used[r] += len(ids)
                        turns[r] += 1
                        transcripts[r].append({"who": "policy", "content": text})
                        (reply, reward, done), fault = self._step(watchdog, envs[r], text, timeout)
                        if fault is not None:  # the trajectory ends with 0
                            kind = "timeouts" if isinstance(fault, VerifierTimeout) else "errors"
                            faults[f"rollout/reward_{kind}"] += 1
                            first = first or f"{type(fault).__name__}: {fault} on {problems[rows[r]].id}"
                            rewards[r], envs[r].rule = 0.0, "none"
                        rewards[r] += float(reward)
                        history[r].append({"role": "assistant", "content": text})
                        finished[r] = ended
                        if done or reply is None or not ended or turn == task.max_turns - 1:
                            continue
                        reply_ids = tokenizer(between_text(history[r], [{"role": task.reply_role, "content": reply}], tokenizer),
                                              add_special_tokens=False)["input_ids"]
                        if used[r] + len(reply_ids) >= task.max_tokens:  # no room left for the policy to answer
                            continue
                        segments[r].append((reply_ids, False))
                        used[r] += len(reply_ids)
                        history[r].append({"role": task.reply_role, "content": reply})
                        transcripts[r].append({"who": "environment", "content": reply})
                        still.append(r)
                    env_seconds += time.perf_counter() - t0
                active = still
        model.train(was_training)
        input_ids, attention_mask, completion_mask, policy_mask, spans, width = assemble(
            [encoded[i] for i in rows], segments, pad_id=pad_id)
        texts = tokenizer.batch_decode(torch.where(completion_mask, input_ids[:, width:], pad_id), skip_special_tokens=True)
        rollouts = Rollouts(prompt_index=prompt_index, input_ids=input_ids, attention_mask=attention_mask,
                            completion_mask=completion_mask, prompt_width=width, texts=texts,
                            finished=torch.tensor(finished, dtype=torch.bool), policy_mask=policy_mask, turns=spans,
                            transcripts=transcripts)
        stats = {"turns": torch.tensor(turns, dtype=torch.float32)}
        per_env = [env.stats() for env in envs]
        for name in (per_env[0] if per_env else {}):
            stats[name] = torch.tensor([s[name] for s in per_env], dtype=torch.float32)
        warn_counts(faults, first, total=n, source="environment")
        return Episodes(rollouts=rollouts, rewards=torch.tensor(rewards, dtype=torch.float32),
                        rules=torch.tensor([RULES.index(env.rule) for env in envs], dtype=torch.long), stats=stats,
                        seconds={"generate": time.perf_counter() - t_start - env_seconds, "score": env_seconds}, faults=faults)

    @staticmethod
    def _step(watchdog: Watchdog, env, text: str, timeout: float) -> tuple[tuple, Exception | None]:
        """env.step(text), or (a last step scoring 0, the error) when it raised or ran past `timeout`."""
        result, error = guarded(watchdog, timeout, env.step, text)
        return ((None, 0.0, True), error) if error is not None else (result, None)


def merge_stats(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Rounds' per-row stats as one (N,) tensor each (rounds of one task report the same names)."""
    return {name: torch.cat([p[name] for p in parts]) for name in (parts[0] if parts else {})}


def pad_turns(parts: list[Tensor]) -> Tensor:
    """(n_i, K_i, 2) turn spans of several rounds -> (Σ n_i, max K_i, 2), padded with empty (0, 0) spans."""
    k = max(p.shape[1] for p in parts)
    return torch.cat([F.pad(p, (0, 0, 0, k - p.shape[1])) for p in parts])
