"""Data parallelism over the processes `accelerate launch` starts: who this process is, its share of a
batch, and the few collectives that keep every rank on the same step.

Engines do the heavy lifting: accelerate builds the process group and wraps the model (DDP or DeepSpeed
ZeRO-2, from the user's accelerate config), or, under an FSDP2 launch config, `dynamo train` shards it with
torch's fully_shard (runtime/fsdp.py; FSDP1 and ZeRO-3 are refused, see `check_engine`); torch.distributed moves the
bytes. With one process (a plain `dynamo train`) this is rank 0 of 1 and every collective is the identity, so recipes have one code path.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as torch_dist

from dynamo_cli.errors import DynamoError, warn
from dynamo_cli.models.optim import clip_gradients
from dynamo_cli.runtime import fsdp

TEARDOWN_PAUSE_S = 0.5  # see DataParallel.close: lets gloo's workers free the last collectives before the group dies


def shard_bounds(size: int, *, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of `size` rows: shares differ by at most one row, earlier ranks larger."""
    base, extra = divmod(size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard_counts(counts: torch.Tensor, *, lo: int, hi: int) -> torch.Tensor:
    """Per-prompt counts of the rows [lo, hi) of a batch laid out prompt by prompt (counts[i] rows of prompt i)."""
    ends = counts.cumsum(0)
    starts = ends - counts
    return (ends.clamp(min=lo, max=hi) - starts.clamp(min=lo, max=hi)).clamp(min=0)


def device_problem(device: str, *, cuda: bool, torch_version: str, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """(one line, fatal) when the device asked for cannot be had: `device=cuda[:N]` without CUDA is an error; `device=auto`
    without CUDA under a launch of several processes that is not a CPU config starts N gloo CPU processes, which is said.
    (None, False) otherwise."""
    if device.startswith("cuda") and not cuda:
        return (f"device={device} but torch {torch_version} sees no CUDA device (a CPU build of torch, or no GPU visible): "
                "install torch's CUDA build or choose device=cpu"), True
    processes = int(env.get("WORLD_SIZE", "1"))
    if device == "auto" and not cuda and processes > 1 and env.get("ACCELERATE_USE_CPU", "false").lower() != "true":
        return (f"device=auto: torch {torch_version} sees no CUDA device, so the {processes} processes of this launch run on "
                "CPU over gloo; install torch's CUDA build to use the GPUs, or say device=cpu"), False
    return None, False


def parameter_fingerprint(parameter: torch.Tensor, *, chunk: int = 1 << 22) -> torch.Tensor:
    """(2,) float64 [sum, sum of squares] of a parameter, accumulated chunk by chunk: the float64 temporaries are one chunk
    (32 MiB), not a float64 copy of the whole tensor (a 7B model's embedding would take 8.7 GB)."""
    flat = parameter.detach().reshape(-1)
    total = torch.zeros(2, dtype=torch.float64, device=flat.device)
    with torch.no_grad():
        for part in flat.split(chunk):
            wide = part.double()
            total += torch.stack([wide.sum(), wide.square().sum()])
    return total


class ShardedEngineError(DynamoError):
    """The accelerate config asks for an engine whose weight sharding the recipes do not support."""


class DataParallel:
    """This process's place among the data-parallel ranks, and the collectives the recipes need."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.device = accelerator.device
        self.fsdp_version = fsdp.requested_fsdp_version()  # from the launch config; 2: `prepare` shards (FSDP2)
        self._units: dict[int, list] = {}  # id(module) -> its FSDP2 units, for `full_weights`
        self.group = None  # the process group of this object's collectives; None: the default one (see side_channel)

    @classmethod
    def start(cls, device: str) -> "DataParallel":
        """Join the process group `accelerate launch` (or torchrun) set up; a single process otherwise.

        `device=cpu` (or `auto` without CUDA) runs on CPU with the gloo backend: the way to test several
        processes on a laptop (conf/accelerate/cpu_ddp.yaml, see docs/scaling.md). The recipes put the model on
        `self.device` themselves (accelerate's device placement is off), so a single process can use cuda:N.
        `device=cuda` without CUDA stops; `auto` landing on CPU under a GPU launch config says so (`device_problem`)."""
        from accelerate import Accelerator

        problem, fatal = device_problem(device, cuda=torch.cuda.is_available(), torch_version=torch.__version__, env=os.environ)
        if problem and fatal:
            raise DynamoError(problem)
        if problem:
            warn(problem)
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        accelerator = Accelerator(cpu=cpu, device_placement=False)
        parallel = cls(accelerator)
        if parallel.world_size == 1 and not cpu and device != "auto":
            parallel.device = torch.device(device)  # a single process honours device=cuda:N
        return parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, size: int) -> tuple[int, int]:
        return shard_bounds(size, rank=self.rank, world_size=self.world_size)

    def side_channel(self) -> "DataParallel":
        """The same ranks on a gloo process group of their own, for the collectives a background thread runs while the
        main thread runs its own on the default group (rollout.one_step_off_policy's collect during the update): two
        threads on one group would interleave their collectives differently on each rank. Every rank must call it,
        in the same order. One process: this object."""
        if not self.distributed:
            return self
        side = copy.copy(self)
        side.group = torch_dist.new_group(backend="gloo")
        return side

    # ------------------------------------------------------------------------------ collectives
    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (pickled: for small things)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value, group=self.group)
        return gathered

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (n_r, ...) CPU tensor along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        return torch.cat([t.cpu() for t in self.gather_objects(tensor.detach().cpu())])

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        return float(sum(self.gather_objects(float(value))))

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Key-wise mean over ranks of a dict of floats (the same keys on every rank)."""
        if not self.distributed:
            return values
        gathered = self.gather_objects(values)
        return {key: sum(g[key] for g in gathered) / self.world_size for key in values}

    def scope_sync(self) -> Callable[[torch.Tensor, str], torch.Tensor] | None:
        """For a normalisation scope that spans the ranks: the element-wise max/min of a tensor over ranks."""
        if not self.distributed:
            return None

        def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
            op = torch_dist.ReduceOp.MAX if how == "amax" else torch_dist.ReduceOp.MIN
            out = values.detach().clone().to(self.device)
            torch_dist.all_reduce(out, op=op, group=self.group)
            return out.to(values.device)

        return reduce

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier(group=self.group)

    # --------------------------------------------------------------------------- model handling
    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    @property
    def sharded(self) -> bool:
        """FSDP2: weights, gradients and optimiser state split over the processes (with one process: nothing to split)."""
        return self.fsdp_version == 2 and self.distributed

    @property
    def engine(self) -> str:
        """The engine's name for the log: FSDP2, or accelerate's distributed type (MULTI_GPU, MULTI_CPU, DEEPSPEED)."""
        return "FSDP2" if self.sharded else self.accelerator.distributed_type.value

    def prepare(self, model, optimizer, *, micro_batch_size: int):
        """Wrap for the configured engine (DDP or DeepSpeed ZeRO-2), or shard it (FSDP2: the optimiser, built on the
        plain parameters, is pointed at the shards); the model is already on this rank's device."""
        if self.sharded:
            from dynamo_cli.models.load import is_peft_model

            if is_peft_model(model):
                raise ShardedEngineError("model.lora.enabled=true under FSDP2: LoRA trains few parameters, whose state "
                                         "fits every rank: use conf/accelerate/ddp.yaml (FSDP2 is for full-parameter training)")
            from dynamo_cli.models import precision

            fsdp.check_launch_config(os.environ, compute_dtype=precision.marked_dtype(model))
            names = {id(p): name for name, p in model.named_parameters()}
            self._shard(model)
            fsdp.rebind_optimizer(optimizer, names_before=names, model=model)
            return model, fsdp.ShardedOptimizer(optimizer)
        if self.deepspeed:  # DeepSpeed wants a batch size; without a dataloader accelerate cannot infer it
            self.accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
        return self.accelerator.prepare(model, optimizer)

    def _shard(self, module) -> None:
        """Shard `module`; under mixed precision FSDP2's MixedPrecisionPolicy takes over from autocast (its mark removed)."""
        from torch.distributed.device_mesh import init_device_mesh

        from dynamo_cli.models import precision

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        policy = fsdp.mixed_precision_policy(precision.marked_dtype(module))
        self._units[id(module)] = fsdp.shard(module, mesh=mesh, reshard_layers=fsdp.reshard_after_forward(), mp_policy=policy)
        precision.mark(module, None)

    def prepare_frozen(self, module):
        """A module that never trains (the KL reference): sharded like the policy under FSDP2, as it is otherwise."""
        if self.sharded and module is not None:
            self._shard(module)
        return module

    def full_weights(self, model) -> contextlib.AbstractContextManager:
        """Under FSDP2, the whole model gathered on every rank for rank-local generation and eval (fsdp.full_weights:
        every rank enters together); otherwise nothing to do."""
        return fsdp.full_weights(self._units[id(model)]) if id(model) in self._units else contextlib.nullcontext()

    def sharded_generation(self, engine, model):
        """The rollout engine, generating with the full weights under FSDP2 (gathered once per step's rollouts)."""
        if not self.sharded:
            return engine
        from dynamo_cli.rollout.hf import PolicyRollouts

        if not isinstance(engine, PolicyRollouts):
            raise ShardedEngineError(f"rollout={type(engine).__name__} under FSDP2: only rollout=hf generates with "
                                     "sharded weights; use conf/accelerate/ddp.yaml for vLLM")
        return fsdp.FullWeightRollouts(engine, gather=lambda: self.full_weights(model))

    def checkpoint_model(self, model):
        """The module whose save_pretrained writes the full model: the model itself, or under FSDP2 a plain copy of
        the gathered weights on rank 0 (None elsewhere). Every rank must call it."""
        return fsdp.gather_plain_model(model, is_main=self.is_main) if self.sharded else model

    def stage_optimizer_shards(self, trainables, target: Path) -> dict[str, Path]:
        """Under FSDP2, every rank writes its shard of the policy's optimiser state beside `target`; returns
        {name in the checkpoint: staged dir} for rank 0's `save_checkpoint(staged=...)`. Otherwise {}."""
        if not self.sharded:
            return {}
        policy = trainables[0]
        staging = fsdp.staging_dir(target)
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier()
        fsdp.save_optimizer_shards(policy.model, policy.optimizer.optimizer, staging)
        self.barrier()
        return {fsdp.SHARDS_DIR: staging}

    def load_optimizer_shards(self, trainables, checkpoint_dir: Path) -> None:
        """Under FSDP2, every rank reads its shard of the policy's optimiser state from the checkpoint."""
        if self.sharded:
            policy = trainables[0]
            fsdp.load_optimizer_shards(policy.model, policy.optimizer.optimizer, Path(checkpoint_dir) / fsdp.SHARDS_DIR)

    def clip_gradients(self, model, max_norm: float) -> float:
        """Clip the global gradient norm (0 = off) and return it. DeepSpeed clips inside its own step (its config's
        gradient_clipping) and reports the norm it saw; under FSDP2 the norm is over every rank's shards."""
        if self.sharded:
            return fsdp.clip_sharded_gradients(model, max_norm)
        if self.deepspeed:
            return float(self.accelerator.clip_grad_norm_(model.parameters(), max_norm) or 0.0)
        return clip_gradients(model, max_norm)

    def unwrap(self, model):
        """The plain module inside the engine's wrapper. Under DDP it holds the full weights, so generation,
        old log-probs and eval run on it rank by rank, without collectives. Under FSDP2 it is the sharded module
        itself: its forwards gather layer by layer, in lockstep, except inside `full_weights`."""
        return self.accelerator.unwrap_model(model)

    def check_engine(self, *, fsdp2: bool = False) -> None:
        """Engines that shard the weights need every rank to run the same forwards in lockstep, which rank-local
        generation does not do. `fsdp2=True` (dynamo train) admits FSDP2, which gathers the weights for generation
        (runtime/fsdp.py); FSDP1, DeepSpeed ZeRO-3, and FSDP2 elsewhere are refused with a clear message rather than hang."""
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        zero_stage = getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) if kind == DistributedType.DEEPSPEED else 0
        if self.fsdp_version == 2 and fsdp2:
            return
        if self.fsdp_version == 2:
            raise ShardedEngineError("an FSDP2 launch config (conf/accelerate/fsdp2.yaml) is for `dynamo train`; run this "
                                     "recipe under conf/accelerate/ddp.yaml or deepspeed_zero2.yaml")
        if self.fsdp_version == 1 and kind != DistributedType.FSDP:
            kind = DistributedType.FSDP  # on CPU accelerate reports MULTI_CPU whatever the config asked for
        if kind == DistributedType.FSDP or zero_stage == 3:
            raise ShardedEngineError(
                f"accelerate engine {kind.value}{f' ZeRO-{zero_stage}' if zero_stage else ''} shards the weights; dynamo's "
                "rank-local generation needs full weights on every rank: use conf/accelerate/ddp.yaml or deepspeed_zero2.yaml"
                f"{' (or, for dynamo train, conf/accelerate/fsdp2.yaml)' if kind == DistributedType.FSDP else ''}")

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    @contextlib.contextmanager
    def accumulate(self, model, sync: bool) -> Iterator[None]:
        """Gradient accumulation: no all-reduce unless `sync` (the last micro-batch of a mini-batch). The flag is
        also DeepSpeed's accumulation boundary, where its engine steps. Under FSDP2 every micro-batch reduce-scatters:
        deferring it would hold the full unsharded gradient on every rank, the memory FSDP2 is there to save."""
        if not self.distributed or self.sharded:
            yield
            return
        self.accelerator.gradient_state._set_sync_gradients(sync)
        if sync:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield
        self.accelerator.gradient_state._set_sync_gradients(True)

    def check_replicas(self, model, allocation_counts: torch.Tensor) -> dict[str, float]:
        """Evidence that the ranks hold one model and one allocation: the largest difference across ranks of
        per-tensor parameter fingerprints (float64 sum and sum of squares), and of the allocations each rank
        computed from its copy of the global statistics. Both are 0 when the replicas agree."""
        if not self.distributed:
            return {}
        if self.sharded:  # one copy of each weight, split over the ranks: only the allocations can disagree
            gathered = self.gather_objects(allocation_counts.cpu())
            return {"dist/replica_alloc_diff": float(max(int((g - allocation_counts.cpu()).abs().max()) for g in gathered))}
        fingerprint = torch.stack([parameter_fingerprint(p) for p in self.unwrap(model).parameters()]).cpu()
        gathered = self.gather_objects((fingerprint, allocation_counts.cpu()))
        param_diff = max(float((g[0] - fingerprint).abs().max()) for g in gathered)
        alloc_diff = max(int((g[1] - allocation_counts.cpu()).abs().max()) for g in gathered)
        return {"dist/replica_param_diff": param_diff, "dist/replica_alloc_diff": float(alloc_diff)}

    def agree_on_run_dir(self, run_dir: Path) -> Path:
        """Rank 0's run dir. Each rank's Hydra stamps its own time; a rank whose clock crossed a second boundary
        made a dir of its own, which it removes (it holds only Hydra's bookkeeping)."""
        chosen = Path(self.broadcast_object(str(run_dir)))
        if chosen != run_dir and run_dir.exists() and not (run_dir / "metrics.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        return chosen

    def close(self) -> None:
        """Leave the process group cleanly (without it a rank occasionally aborts at exit under gloo).

        The pause between the barrier and the teardown is not cosmetic. A gloo worker thread frees each finished
        collective; when that collective's tensors were Python objects (all_gather_object's buffers), freeing them
        takes the GIL. The process group itself dies when its last owner does, usually DDP's Reducer as the recipe
        returns, and its destructor joins the worker threads while holding the GIL. If the worker has not yet freed
        the final barrier (which keeps the collectives before it alive), the two wait on each other for ever: seen
        once in about 15 two-process `dynamo sft` runs, stack `~ProcessGroupGloo -> thread::join` against
        `~AsyncBarrierWork -> ~AsyncAllgatherWork -> gil_scoped_acquire`. Sleeping gives the GIL away, so the
        worker frees that work before anything can join it."""
        if self.distributed and torch_dist.is_initialized():
            torch_dist.barrier()
            time.sleep(TEARDOWN_PAUSE_S)
            torch_dist.destroy_process_group()

