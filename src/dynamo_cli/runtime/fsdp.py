"""FSDP2 full-parameter training: torch's `fully_shard` over the processes `accelerate launch` started.

Each rank holds 1/N of every weight, gradient and AdamW moment (DTensors); a forward all-gathers one decoder layer
at a time and frees it again (reshard after forward), a backward reduce-scatters the gradients. So the training
state (16 bytes per fp32 parameter with AdamW) is divided by N; see docs/scaling.md "Which models fit".

Generation and eval are rank-local loops of unequal length (ranks stop when their own completions end, and eval
shares may differ by a problem), which a per-layer all-gather inside every forward cannot serve: the ranks would
wait on each other's collectives. So `full_weights` gathers the whole model once before the rollout phase and
lets every rank generate on its own, like DDP, then frees it (one all-gather per step, the cost of one forward's
gathers, instead of one per layer per generated token). The price is memory: while generating, a rank holds the
full weights (2 or 4 bytes per parameter) on top of its shard of the training state. The log-prob passes (old,
reference, the modulator's) run in lockstep on the sharded model instead: every rank has the same number of rows
and micro-batches (stages.update.check_batch_layout), hence the same sequence of forwards.

Checkpoints: the full weights gathered to rank 0 and written as a plain Hugging Face model (loadable without
dynamo, and what a resume loads before sharding again), plus the optimiser's shards in torch.distributed.checkpoint
format under `<checkpoint>/optimizer_shards/` (one file per rank: no rank ever holds the whole optimiser state).

Mixed precision (model.dtype=bfloat16 over float32 masters, models/precision.py): every unit gets a MixedPrecisionPolicy,
as verl's FSDP2 workers do: the shards (masters) and AdamW's state stay float32, the all-gather casts the parameters to
bfloat16 for the forwards and backward, and gradients are reduce-scattered in float32. So no autocast runs under FSDP2:
the gathered parameters are already in the compute dtype, for training and for generation alike.

The launch config's keys: `check_launch_config` honours or refuses each one dynamo could be asked to act on.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

SHARDS_DIR = "optimizer_shards"  # <checkpoint>/optimizer_shards/: the DCP files of the policy's optimiser state


def requested_fsdp_version(env: Mapping[str, str] = os.environ) -> int:
    """0: the launch config asks for no FSDP; else its `fsdp_version` (accelerate's default is 1). `accelerate launch`
    exports the config as ACCELERATE_USE_FSDP / FSDP_VERSION, on CPU too (where its Accelerator reports MULTI_CPU)."""
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return 0
    return int(env.get("FSDP_VERSION", "1"))


def reshard_after_forward(env: Mapping[str, str] = os.environ) -> bool:
    """fsdp_config.fsdp_reshard_after_forward: free each layer's gathered weights after its forward (True, ZeRO-3
    memory) or keep them until the backward (False, ZeRO-2-like: fewer all-gathers, full weights resident)."""
    return env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"


def layer_classes(model: torch.nn.Module) -> set[type]:
    """The classes of the model's decoder layers (transformers' `_no_split_modules`): one FSDP unit each."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def check_launch_config(env: Mapping[str, str], *, compute_dtype: torch.dtype | None) -> None:
    """Each key of an FSDP2 launch config (accelerate exports them as environment variables) honoured or refused, in one
    line: fsdp_version and fsdp_reshard_after_forward are honoured (`requested_fsdp_version`, `reshard_after_forward`);
    fsdp_auto_wrap_policy honoured as TRANSFORMER_BASED_WRAP (one unit per decoder layer, `shard`); fsdp_state_dict_type
    honoured as SHARDED_STATE_DICT (the optimiser's shards; the weights are also written whole); mixed_precision honoured
    as the bf16 that model.dtype=bfloat16 already asks for (`mixed_precision_policy`). The rest are refused unless off:
    they would change what each rank holds or loads in ways not built here. `compute_dtype`: the model's autocast dtype."""
    from dynamo_cli.runtime.distributed import ShardedEngineError

    def refuse(key: str, value: str, why: str) -> None:
        raise ShardedEngineError(f"{key}: {value} in the FSDP2 launch config: {why}")

    wrap = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if wrap != "TRANSFORMER_BASED_WRAP":
        refuse("fsdp_auto_wrap_policy", wrap, "dynamo shards one unit per decoder layer; use TRANSFORMER_BASED_WRAP")
    if "FSDP_TRANSFORMER_CLS_TO_WRAP" in env:
        refuse("fsdp_transformer_layer_cls_to_wrap", env["FSDP_TRANSFORMER_CLS_TO_WRAP"],
               "dynamo wraps the model's own decoder layers (its _no_split_modules); remove the key")
    state = env.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    if state != "SHARDED_STATE_DICT":
        refuse("fsdp_state_dict_type", state, "checkpoints hold the full weights plus the optimiser's shards; use SHARDED_STATE_DICT")
    for key, name, why in (
        ("FSDP_OFFLOAD_PARAMS", "fsdp_offload_params", "CPU offload is not built (generation gathers the full weights on the GPU); "
                                                      "use more GPUs, model.lora.enabled=true or model.gradient_checkpointing=true"),
        ("FSDP_CPU_RAM_EFFICIENT_LOADING", "fsdp_cpu_ram_efficient_loading",
         "every rank loads the whole model on its host before sharding; set it to false"),
        ("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing",
         "activation checkpointing is model.gradient_checkpointing=true; set this to false"),
    ):
        if env.get(key, "false").lower() == "true":
            refuse(name, "true", why)
    mixed = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if mixed not in ("no", "bf16") or (mixed == "bf16" and compute_dtype != torch.bfloat16):
        refuse("mixed_precision", mixed, "dynamo's mixed precision is model.dtype=bfloat16 (float32 masters, bf16 compute); "
               "set mixed_precision: 'no' and choose model.dtype")


def mixed_precision_policy(compute_dtype: torch.dtype | None):
    """FSDP2's policy for float32 masters computing in `compute_dtype`: parameters gathered in it, gradients reduced in
    float32 (verl's choice: a bf16 reduce-scatter over many ranks loses the small gradients). None: no policy."""
    if compute_dtype is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)


def shard(model: torch.nn.Module, *, mesh, reshard_layers: bool, mp_policy=None) -> list[tuple[torch.nn.Module, bool]]:
    """fully_shard every decoder layer, then the root (embeddings, final norm, tied head). In place: the module stays
    the same object, its parameters become DTensor shards. Returns each unit with its reshard-after-forward setting.
    The root keeps its weights until the backward (torch's default for the root: they are needed first there).
    `mp_policy`: `mixed_precision_policy`'s, on every unit (None: compute in the weights' dtype)."""
    from torch.distributed.fsdp import fully_shard

    precision = {"mp_policy": mp_policy} if mp_policy is not None else {}
    classes = layer_classes(model)
    units = []
    for module in list(model.modules()):
        if type(module) in classes:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_layers, **precision)
            units.append((module, reshard_layers))
    fully_shard(model, mesh=mesh, reshard_after_forward=False, **precision)
    units.append((model, False))
    return units


def rebind_optimizer(optimizer: torch.optim.Optimizer, *, names_before: dict[int, str], model: torch.nn.Module) -> None:
    """fully_shard replaces every parameter by a new DTensor parameter: point the optimiser (built on the plain
    parameters, with no state yet) at the new ones, by name. `names_before`: id(parameter) -> name, before sharding."""
    after = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [after[names_before[id(p)]] for p in group["params"]]


@contextlib.contextmanager
def full_weights(units: list[tuple[torch.nn.Module, bool]]) -> Iterator[None]:
    """The whole model gathered on every rank for the duration: forwards inside run rank-local, without collectives
    (generation, eval). A collective on entry and exit: every rank must enter together."""
    for module, _ in units:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module, reshard in units:
            module.reshard()
            module.set_reshard_after_forward(reshard, recurse=False)


def clip_sharded_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """The global gradient norm over the DTensor shards (0 = no clipping), clipped; the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def unsharded_class(cls: type) -> type:
    """A model's own class under the FSDP<Name> subclass that fully_shard swaps in."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))


def gather_plain_model(model: torch.nn.Module, *, is_main: bool):
    """A plain (unsharded) copy of the model on rank 0's CPU, for save_pretrained; None on the other ranks. Every
    rank must call it (the all-gather). Peak: one full copy of the weights in rank 0's CPU memory."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    with torch.device("meta"):  # a skeleton: the gathered tensors become its parameters, no second copy
        plain = unsharded_class(type(model))(model.config)
    plain.load_state_dict(state, assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def save_optimizer_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shard of the optimiser state into `directory` (torch.distributed.checkpoint: collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory))


def load_optimizer_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank reads its shard back (collective; DCP reshards if the number of processes changed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    box = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the layout to fill (state initialised, zeros)
    dcp.load(box, checkpoint_id=str(directory))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=box["optimizer"])


def staging_dir(target: Path) -> Path:
    """Where the ranks write a checkpoint's optimiser shards before rank 0 moves them into its temporary dir."""
    return Path(target).with_name(f".shards-{Path(target).name}")


class ShardedOptimizer:
    """The policy's optimiser under FSDP2. Steps like the optimiser it wraps; its state is in the checkpoint's
    optimizer_shards/ (written and read by every rank, `save_optimizer_shards`), so `state_dict` holds only a
    marker that names them, and `load_state_dict` checks it (the shards are loaded by `load_optimizer_shards`)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"sharded": SHARDS_DIR}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sharded") != SHARDS_DIR:
            from dynamo_cli.errors import DynamoError

            raise DynamoError("this checkpoint's optimiser state was saved without FSDP2 (one file, not "
                              f"{SHARDS_DIR}/): resume it with the launch config it was trained with")


class FullWeightRollouts:
    """rollout=hf under FSDP2: each step's generation runs inside `full_weights` (gathered once, rank-local loops)."""

    def __init__(self, engine, *, gather: Callable[[], contextlib.AbstractContextManager]):
        self.engine, self.gather = engine, gather

    def generate(self, prompts: list[str], **kwargs):
        with self.gather():
            return self.engine.generate(prompts, **kwargs)

    def release(self) -> None:
        self.engine.release()

    def sync(self, policy) -> None:
        self.engine.sync(policy)
