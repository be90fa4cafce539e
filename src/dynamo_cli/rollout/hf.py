"""Generation only: prompts × counts -> completions (token ids, masks, text, the engine's log-probs). No rewards here.

A hand-written sampling loop over a KV cache rather than `model.generate`, for two reasons: sampling is
counter-based, and the loop stops as soon as every sequence in a chunk has emitted an end token. The end tokens are
the tokenizer's EOS and every `eos_token_id` of the model's generation_config (Qwen2.5-Instruct has two), the same
set vLLM stops on (`end_token_ids`), so neither engine appends an end token it never sampled.

Each sampled token's log-prob under the distribution it was drawn from (log-softmax of the logits at the temperature,
before top-p, as the trainer computes π_old) is reported with the rollouts: log μ for algorithm.rollout_is/rollout_mask
and the rollout/trainer mismatch logged every step (algo/importance.py).

Counter-based sampling: the uniform number that picks token t of rollout r is a hash of (seed, r, t).
A rollout's randomness therefore does not depend on which other rollouts share its batch, on the
chunking, on the number of processes it is spread over, or on anything drawn before it: a run replays
exactly, a resume needs no RNG state, and 1 process and N processes sample the same completions.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from dynamo_cli.algo.logits import logprobs_from_logits
from dynamo_cli.config.rollout import HFRolloutConfig
from dynamo_cli.models import precision
from dynamo_cli.rollout.engines import ROLLOUT_ENGINES


@dataclass
class Rollouts:
    """Σ n_i completions. Row r answers prompt `prompt_index[r]` of the step (alignment by construction)."""

    prompt_index: torch.Tensor  # (N,) long: index into the step's prompt list
    input_ids: torch.Tensor  # (N, Tp + Tc): left-padded prompt, then completion right-padded with pad
    attention_mask: torch.Tensor  # (N, Tp + Tc) long: 1 on real prompt tokens and on completion tokens
    completion_mask: torch.Tensor  # (N, Tc) bool: completion tokens that count (EOS included, padding not)
    prompt_width: int  # Tp: completions start at this column
    texts: list[str]  # decoded completions, special tokens removed
    finished: torch.Tensor  # (N,) bool: the completion ended with EOS (False: cut at max_new_tokens)
    # (N, Tc) the engine's own log-prob of each sampled token, at the sampling temperature (NaN where it reported none);
    # None when it reported none at all (greedy decoding)
    logprobs: torch.Tensor | None = None
    # (real, all) token positions the engine's forwards processed: all - real is padding (rollout/padding_waste). None: unknown
    engine_tokens: tuple[int, int] | None = None
    # multi-turn rollouts (episodes.MultiTurnEpisodes): the completion holds policy and environment tokens
    policy_mask: Optional[torch.Tensor] = None  # (N, Tc) bool: the policy's tokens; None: the whole completion
    turns: Optional[torch.Tensor] = None  # (N, K, 2) long [start, end) of each policy turn in the completion
    transcripts: Optional[list] = None  # per row, every turn in order: {"who": "environment" | "policy", "content"}

    @property
    def policy_tokens(self) -> torch.Tensor:  # (N, Tc) bool: what the loss, entropies and advantages may touch
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    @property
    def completion_ids(self) -> torch.Tensor:  # (N, Tc)
        return self.input_ids[:, self.prompt_width :]

    @property
    def completion_lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: torch.Tensor) -> "Rollouts":
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[rows]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in rows.tolist()]
            else:
                picked[f.name] = value
        return Rollouts(**picked)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token of every row is position 0."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values < 2**32.
    The multiplier is < 2**31, so no product overflows int64."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def counter_uniforms(seed: int, streams: torch.Tensor, position: int) -> torch.Tensor:
    """(N,) float64 uniforms in (0, 1) that depend only on (seed, stream id, position).

    `streams` (N,) long: one id per sequence (e.g. the rollout's index in the step), the same whatever
    batch or process the sequence lands in."""
    x = _mix32(torch.full_like(streams, (position * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    x = _mix32(x ^ (streams & _MASK32))
    x = _mix32(x ^ ((streams >> 32) & _MASK32))
    x = _mix32(x ^ (seed & _MASK32))
    x = _mix32(x ^ ((seed >> 32) & _MASK32))
    return (x.double() + 0.5) / 2.0**32


def stream_seed(*parts: int) -> int:
    """One 64-bit sampling seed from several integers, e.g. (run seed, step): splitmix64 folded over the parts."""
    mask64, x = (1 << 64) - 1, 0
    for part in parts:
        x = (x ^ (part & mask64)) + 0x9E3779B97F4A7C15 & mask64
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & mask64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & mask64
        x ^= x >> 31
    return x


def sample_next(logits: torch.Tensor, *, temperature: float, top_p: float, uniforms: torch.Tensor | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids by inverse-CDF sampling with the given (B,) uniforms.
    temperature 0 (or uniforms None) means greedy."""
    if temperature == 0 or uniforms is None:
        return logits.argmax(-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.double().cumsum(-1)  # (B, V); unnormalised after top-p, hence the scaling by its total below
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return token.clamp(max=probs.shape[-1] - 1)


def end_token_ids(tokenizer, model=None) -> tuple[int, ...]:
    """The tokens that end a completion: the tokenizer's EOS and every eos_token_id of the model's generation_config
    (an int or a list), sorted. vLLM stops on the same set (it reads generation_config too)."""
    ends = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    recorded = getattr(config, "eos_token_id", None)
    ends.update([recorded] if isinstance(recorded, int) else list(recorded or ()))
    return tuple(sorted(e for e in ends if e is not None))


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """(B, V) logits, (B,) sampled tokens -> (B,) log-softmax(logits / temperature)[token] in float32: the log-prob the
    token was drawn with before top-p, which is what the trainer's π_old is computed as (rollout/policy_stats.py)."""
    return logprobs_from_logits(logits.float() / temperature, tokens)


def cache_kwarg(model) -> str:
    """transformers 5.2x calls the KV cache `cache`; earlier releases `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def cache_of(output):
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


class Chunk(NamedTuple):
    prompt_ids: torch.Tensor  # (B, Tp) left-padded
    completion: torch.Tensor  # (B, Tc) pad after a row's end
    completion_mask: torch.Tensor  # (B, Tc) bool: tokens up to and including the end token
    finished: torch.Tensor  # (B,) bool: ended with an end token
    engine_tokens: tuple[int, int]  # (real, all) token positions the forwards processed
    logprobs: torch.Tensor | None  # (B, Tc) float32 log-prob of each sampled token (0 after a row's end); None when greedy


@torch.no_grad()
def _generate_chunk(model, prompt_ids: list[list[int]], *, pad_id: int, eos_ids: tuple[int, ...], max_new_tokens: int,
                    temperature: float, top_p: float, seed: int | None, streams: torch.Tensor, device: torch.device) -> Chunk:
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, p in enumerate(prompt_ids):  # left padding
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = position_ids_from_mask(mask)
    cache_key = cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits = cache_of(out), out.logits[:, -1]
    next_position = positions[:, -1:] + 1  # (A, 1)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    active = torch.arange(len(prompt_ids), device=device)  # (A,) rows still decoding: a finished row leaves the batch
    real, slots = sum(map(len, prompt_ids)), ids.numel()  # token positions fed to the model: real ones, all
    ends = torch.tensor(eos_ids, dtype=torch.long, device=device)
    tokens, logprobs = [], []
    sampling = seed is not None and temperature > 0
    for t in range(max_new_tokens):
        uniforms = None if seed is None else counter_uniforms(seed, streams[active.cpu()], t)
        sampled = sample_next(logits, temperature=temperature, top_p=top_p, uniforms=uniforms).to(device)  # (A,)
        token = torch.full((len(prompt_ids),), pad_id, dtype=torch.long, device=device).index_copy_(0, active, sampled)
        tokens.append(token)
        if sampling:  # (B,) the engine's log μ of each token: 0 for rows that already ended
            logprobs.append(torch.zeros(len(prompt_ids), device=device).index_copy_(
                0, active, sampled_logprobs(logits, sampled, temperature=temperature)))
        finished |= torch.isin(token, ends)
        if t == max_new_tokens - 1 or bool(finished.all()):  # a CPU-GPU sync per token: cheap next to the forward
            break
        going = ~finished[active]  # (A,)
        if not bool(going.all()):  # drop the rows that just finished from the batch and the KV cache
            keep = going.nonzero().flatten()
            cache.batch_select_indices(keep)
            active, sampled, mask, next_position = active[keep], sampled[keep], mask[keep], next_position[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=sampled[:, None], attention_mask=mask, position_ids=next_position,
                    use_cache=True, **{cache_key: cache})
        cache, logits = cache_of(out), out.logits[:, -1]
        next_position = next_position + 1
        real, slots = real + len(active), slots + len(active)
    completion = torch.stack(tokens, dim=1)  # (B, Tc)
    # a token counts if no end token came strictly before it (the end token itself counts: the policy chose to stop)
    is_end = torch.isin(completion, ends).long()
    completion_mask = (is_end.cumsum(-1) - is_end) == 0
    return Chunk(ids, completion, completion_mask, finished, (real, slots), torch.stack(logprobs, dim=1) if sampling else None)


def _pad_right(tensors: list[torch.Tensor], value) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def _pad_left(tensors: list[torch.Tensor], value) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, counts: torch.Tensor, max_new_tokens: int,
             temperature: float, top_p: float, seed: int | None, max_batch_size: int,
             streams: torch.Tensor | None = None) -> Rollouts:
    """Sample counts[i] completions of prompts[i], in chunks of at most `max_batch_size` sequences.

    `seed=None` or `temperature=0` decodes greedily. Rows come out grouped by prompt, in prompt order.
    Row r draws its tokens from the counter stream (seed, streams[r]); streams default to 0..N-1. A caller
    that generates a share of a larger batch passes the rows' ids in that batch, so the share samples what
    it would have sampled as part of the whole. A model marked for mixed precision (models/precision.py) generates
    under autocast; the rollout engine generates from a copy held in model.dtype instead (`PolicyRollouts`).
    """
    prompt_index = torch.repeat_interleave(torch.arange(len(prompts)), counts.cpu())  # (N,)
    streams = torch.arange(len(prompt_index)) if streams is None else streams.cpu().long()
    if len(prompt_index) == 0:  # e.g. a process whose share of a small batch is empty
        empty = torch.zeros((0, 0), dtype=torch.long)
        return Rollouts(prompt_index=prompt_index, input_ids=empty, attention_mask=empty, completion_mask=empty.bool(),
                        prompt_width=0, texts=[], finished=torch.zeros(0, dtype=torch.bool), engine_tokens=(0, 0))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    eos_ids = end_token_ids(tokenizer, model)
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    # several chunks: bucket the rows by prompt length (less left padding); one chunk keeps its order
    order = torch.arange(len(prompt_index))
    if len(prompt_index) > max_batch_size:
        order = torch.sort(torch.tensor([len(encoded[i]) for i in prompt_index.tolist()]), stable=True).indices
    chunks = []
    with precision.autocast(model):  # one region: autocast casts each weight once and caches it for the whole loop
        for start in range(0, len(prompt_index), max_batch_size):
            rows = order[start:start + max_batch_size]
            chunks.append(_generate_chunk(
                model, [encoded[i] for i in prompt_index[rows].tolist()], pad_id=tokenizer.pad_token_id, eos_ids=eos_ids,
                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                streams=streams[rows], device=device,
            ))
    model.train(was_training)
    back = torch.empty_like(order).index_copy_(0, order, torch.arange(len(order)))  # chunk row j is row order[j]
    prompt_ids = _pad_left([c.prompt_ids.cpu() for c in chunks], tokenizer.pad_token_id)[back]
    completion = _pad_right([c.completion.cpu() for c in chunks], tokenizer.pad_token_id)[back]
    completion_mask = _pad_right([c.completion_mask.cpu() for c in chunks], False)[back]
    finished = torch.cat([c.finished.cpu() for c in chunks])[back]
    logprobs = None if chunks[0].logprobs is None else _pad_right([c.logprobs.cpu() for c in chunks], 0.0)[back]
    input_ids = torch.cat([prompt_ids, completion], dim=1)
    # from lengths, not `!= pad`: for some tokenizers (SmolLM) pad == EOS, which a prompt may contain
    prompt_mask = _prompt_mask(encoded, prompt_index, prompt_ids.shape[1])
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
    texts = tokenizer.batch_decode(torch.where(completion_mask, completion, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollouts(prompt_index=prompt_index, input_ids=input_ids, attention_mask=attention_mask,
                    completion_mask=completion_mask, prompt_width=prompt_ids.shape[1], texts=texts, finished=finished,
                    logprobs=logprobs, engine_tokens=(sum(c.engine_tokens[0] for c in chunks), sum(c.engine_tokens[1] for c in chunks)))


def _prompt_mask(encoded: list[list[int]], prompt_index: torch.Tensor, width: int) -> torch.Tensor:
    lengths = torch.tensor([len(encoded[i]) for i in prompt_index.tolist()])
    return (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()


def rollouts_from_token_ids(tokenizer, encoded_prompts: list[list[int]], prompt_index: torch.Tensor,
                            completions: list[list[int]], finished: list[bool],
                            logprobs: list[list[float]] | None = None) -> Rollouts:
    """Rollouts from plain token lists, for engines that return them (vLLM): row r answers
    encoded_prompts[prompt_index[r]] with completions[r], exactly the tokens the engine sampled: a finished completion
    ends with the end token the engine stopped on (vLLM keeps it), an unfinished one was cut at the length limit; no
    token is added. The layout is `generate`'s. `logprobs[r]`: the engine's log-prob of each token of completions[r]
    (NaN past the ones it reported)."""
    pad_id = tokenizer.pad_token_id
    completions = [list(c) for c in completions]
    width = max((len(encoded_prompts[i]) for i in prompt_index.tolist()), default=0)
    length = max((len(c) for c in completions), default=0)
    rows = len(completions)
    prompt_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    completion = torch.full((rows, length), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((rows, length), dtype=torch.bool)
    for r, (i, tokens) in enumerate(zip(prompt_index.tolist(), completions, strict=True)):
        prompt = encoded_prompts[i]
        if prompt:
            prompt_ids[r, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        if tokens:
            completion[r, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            completion_mask[r, :len(tokens)] = True
    attention_mask = torch.cat([_prompt_mask(encoded_prompts, prompt_index, width), completion_mask.long()], dim=1)
    texts = tokenizer.batch_decode(torch.where(completion_mask, completion, pad_id), skip_special_tokens=True)
    engine_logprobs = None
    if logprobs is not None:
        engine_logprobs = torch.zeros((rows, length))
        for r, values in enumerate(logprobs):
            row = list(values) + [float("nan")] * (int(completion_mask[r].sum()) - len(values))
            engine_logprobs[r, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return Rollouts(prompt_index=prompt_index, input_ids=torch.cat([prompt_ids, completion], dim=1), attention_mask=attention_mask,
                    completion_mask=completion_mask, prompt_width=width, texts=texts,
                    finished=torch.tensor(finished, dtype=torch.bool), logprobs=engine_logprobs)


def generation_copy(policy: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen copy of `policy` with its parameters in `dtype`, built parameter by parameter (no full-precision copy on the
    way), unmarked for autocast: it computes in `dtype` itself."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in policy.parameters()}
    return precision.mark(copy.deepcopy(policy, memo).eval(), None)


@torch.no_grad()
def copy_weights(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Every parameter of `source` into the same parameter of `target` (a `generation_copy` of it), cast on the way."""
    for to, weight in zip(target.parameters(), source.parameters(), strict=True):
        to.copy_(weight.detach())


def lora_layers(policy: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA-adapted layers of a peft policy by their name in the plain model (no `base_model.model.` prefix)."""
    if not hasattr(policy, "get_base_model"):
        return {}
    return {name: module for name, module in policy.get_base_model().named_modules()
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")}


def merged_copy(policy: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen plain model (no adapter modules) in `dtype` whose weights are the LoRA policy's with the adapter merged
    in, W + (alpha / r)·B·A per adapted layer; the policy keeps its separate base and adapter."""
    merged = copy.deepcopy(policy).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return precision.mark(merged.to(dtype).eval(), None)


@torch.no_grad()
def copy_merged_weights(target: torch.nn.Module, policy: torch.nn.Module) -> None:
    """The LoRA policy's current weights, adapter merged, into a `merged_copy` of it, cast on the way."""
    adapted = lora_layers(policy)
    for name, module in adapted.items():
        weight = module.base_layer.weight.detach().clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight += module.get_delta_weight(adapter)
        target.get_submodule(name).weight.copy_(weight)
    targets = dict(target.named_parameters())
    for name, param in policy.get_base_model().named_parameters():  # the rest: embeddings, norms, modules_to_save
        plain = name.replace(".base_layer", "")
        if "lora_" not in name and plain.rsplit(".", 1)[0] not in adapted and plain in targets:
            targets[plain].copy_(param.detach())


@ROLLOUT_ENGINES.register("hf", schema=HFRolloutConfig)
class PolicyRollouts:
    """rollout=hf: generation in this process (`generate`), on the policy itself, or on a copy of it, as vLLM would hold
    it: under mixed precision (`generation_dtype`: model.dtype over float32 master weights) a copy in that dtype; with a
    LoRA adapter and rollout.merge_lora a plain copy with the adapter merged into the weights (each forward then skips
    the adapter's two extra matmuls per layer, which at generation's small batches cost as much as the layer itself).
    Each `sync` after an update copies the new weights into the copy (a LoRA adapter included, the base untouched).
    `copy_allowed` False (FSDP2's sharded policy, the one-step-off-policy behaviour copy): generate on the policy."""

    def __init__(self, policy, tokenizer, *, generation_dtype: torch.dtype | None = None, merge_lora: bool = False,
                 copy_allowed: bool = True):
        self.policy, self.tokenizer = policy, tokenizer
        self.merged = merge_lora and copy_allowed and bool(lora_layers(policy))
        if self.merged:
            dtype = generation_dtype or next(p for p in policy.parameters()).dtype
            self.generator = merged_copy(policy, dtype)
        elif generation_dtype is not None and copy_allowed:
            self.generator = generation_copy(policy, generation_dtype)
        else:
            self.generator = policy

    def generate(self, prompts: list[str], *, counts: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int | None, max_batch_size: int, streams: torch.Tensor | None = None) -> Rollouts:
        return generate(self.generator, self.tokenizer, prompts, counts=counts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, streams=streams, max_batch_size=max_batch_size)

    def release(self) -> None:
        """Nothing to free: the generator lives with the policy."""

    def sync(self, policy) -> None:
        """The policy's new weights into the generation copy; nothing to do when the generator is the policy."""
        if self.merged:
            copy_merged_weights(self.generator, policy)
        elif self.generator is not self.policy:
            copy_weights(self.generator, policy)
