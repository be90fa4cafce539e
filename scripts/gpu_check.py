"""`make gpu-check`: the GPU path in one table, sized for the one H200 this workplace sometimes lends (<= 5 min).

    make gpu-check                       # here: .venv's python; on the lent machine: its python3
    python scripts/gpu_check.py --json gpu_check.json

The lent machine runs its own image (Python 3.12, torch + CUDA, transformers, accelerate, peft, safetensors; no
hydra-core, omegaconf, math-verify, rich, vLLM, no network) with at most 64 MiB carried beside the working tree: the
small missing packages come as wheels (`make gpu-wheels` -> .gpu-wheels/, installed here into a temporary dir), no
weights are carried, and the model is a random one built in code from a Qwen2.5-1.5B-shaped config. Rows:

    precision      one AdamW step at lr 1e-6: the share of weights it moves, float32 vs bf16 over float32 masters
                   (optim.master_weights=float32) vs pure bf16 (master_weights=model), and the masters' dtype
    rollouts       the hf engine generating from its bf16 copy vs the trainer's log-probs (autocast over the masters):
                   the mismatch KL, the ratio's range, TIS's mean weight and truncated share (algo/importance.py)
    generation     generated tokens/s of that engine, and the share of the GPU's bf16 peak it uses (2·P FLOPs a token)
    training       training tokens/s (forward + backward under autocast), and the share of the peak (6·P FLOPs a token)
    memory         the peak memory of that training micro-batch against the memory plan's estimate (runtime/resources.py)
    fsdp2          FSDP2 on one rank with the MixedPrecisionPolicy: a step, a sharded checkpoint, a resume that replays
                   the next step exactly
    train          a 2-step `dynamo train` on the GPU (model.dtype=bfloat16)
    vllm           not checkable on the lent machine (its API use is checked against the pinned wheels instead)

Without a GPU it says so, runs the rows a CPU can check (precision, rollouts, fsdp2 on gloo) on a scaled-down
Qwen-shaped model, marks the others "no GPU", and exits 0. It exits 1 only when a row that ran failed its check.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense bf16 FLOP/s, by device name


def ensure_packages() -> str:
    """Import what dynamo needs; where the image lacks a small package, install the carried wheels into a temporary dir
    (no network) and put it on the path, for this process and the `dynamo train` subprocess. Returns a note."""
    sys.path.insert(0, str(ROOT / "src"))
    missing = []
    for name in ("omegaconf", "hydra", "rich", "math_verify"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if not missing:
        return "all packages present"
    wheels = sorted(glob.glob(str(WHEELS / "*.whl")))
    if not wheels:
        return f"missing {', '.join(missing)} and no {WHEELS.name}/ (run `make gpu-wheels` and carry it)"
    target = tempfile.mkdtemp(prefix="dynamo-gpu-site-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", target, *wheels], check=True)
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join([target, str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return f"installed {len(wheels)} carried wheels for {', '.join(missing)}"


def qwen_config(*, full: bool):
    """Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads / 2 KV heads, SwiGLU 8960, vocab 151,936, tied embeddings),
    or on a CPU the same head layout at two narrow layers and a 4,096-token vocabulary (seconds, not minutes)."""
    from transformers import Qwen2Config

    size = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, vocab_size=151936) if full \
        else dict(hidden_size=192, intermediate_size=512, num_hidden_layers=2, num_attention_heads=6, vocab_size=4096)
    return Qwen2Config(num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=True, **size)


def random_model(config, device, *, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)  # initialised where it will run: 1.5B parameters are drawn in seconds on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def batch(config, device, *, rows: int, length: int, seed: int = 1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (rows, length), generator=generator).to(device)
    return ids, torch.ones_like(ids)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------- rows
def precision_row(config, device) -> tuple[str, bool, str]:
    """One AdamW step at lr 1e-6 in each precision: the share of weights that moved, and the masters' dtype."""
    import torch

    from dynamo_cli.models import precision
    from dynamo_cli.rollout.policy_stats import completion_forward

    ids, mask = batch(config, device, rows=4, length=64)
    shares, dtypes = {}, {}
    for name, weights, compute in (("float32", torch.float32, None), ("bf16 masters", torch.float32, torch.bfloat16),
                                   ("pure bf16", torch.bfloat16, None)):
        model = precision.mark(random_model(config, device).to(weights), compute)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
        out = completion_forward(model, input_ids=ids, attention_mask=mask, prompt_width=8, temperature=1.0, with_entropy=False)
        (-out.logprobs.mean()).backward()
        optimizer.step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before, strict=True))
        shares[name] = moved / sum(b.numel() for b in before)
        dtypes[name] = str(next(model.parameters()).dtype).split(".")[-1]
        del model, optimizer, before, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = shares["bf16 masters"] >= 0.9 * shares["float32"] and shares["pure bf16"] < 0.1 and dtypes["bf16 masters"] == "float32"
    detail = ", ".join(f"{k} {v:.3f}" for k, v in shares.items()) + f" of weights moved; masters {dtypes['bf16 masters']}"
    return "moves like float32" if ok else "DIFFERS", ok, detail


def rollout_rows(config, device, *, gpu: bool) -> list[tuple[str, str, bool, str]]:
    """The hf engine's bf16 copy generating, against the trainer's log-probs under autocast; its speed on a GPU."""
    import torch

    from dynamo_cli.algo.importance import mismatch_metrics, mismatch_sums, truncated_is_weights
    from dynamo_cli.models import precision
    from dynamo_cli.rollout.hf import _generate_chunk, generation_copy, stream_seed
    from dynamo_cli.rollout.policy_stats import batched_token_stats

    model = precision.mark(random_model(config, device), torch.bfloat16)
    engine = generation_copy(model, torch.bfloat16)
    rows, prompt_len, new = (64, 64, 128) if gpu else (8, 8, 12)
    prompts, _ = batch(config, torch.device("cpu"), rows=rows, length=prompt_len, seed=2)
    sync(device)
    t0 = time.perf_counter()
    chunk = _generate_chunk(engine, prompts.tolist(), pad_id=0, eos_ids=(config.vocab_size - 1,), max_new_tokens=new,
                            temperature=1.0, top_p=1.0, seed=stream_seed(0, 1), streams=torch.arange(rows), device=device)
    sync(device)
    seconds = time.perf_counter() - t0
    input_ids = torch.cat([chunk.prompt_ids, chunk.completion], dim=1)
    attention = torch.cat([torch.ones_like(chunk.prompt_ids), chunk.completion_mask.long()], dim=1)
    trainer, _ = batched_token_stats(model, input_ids=input_ids, attention_mask=attention, prompt_width=prompt_len,
                                     temperature=1.0, micro_batch_size=8, with_entropy=False)
    mask = chunk.completion_mask.to(trainer.device)
    engine_lp = chunk.logprobs.to(trainer.device)
    metrics = mismatch_metrics([mismatch_sums(trainer_logprobs=trainer, rollout_logprobs=engine_lp, mask=mask, is_level="token",
                                              cap=2.0, mask_level="none", bounds=(0.5, 2.0))])
    weights, truncated = truncated_is_weights(trainer_logprobs=trainer, rollout_logprobs=engine_lp, mask=mask, level="token", cap=2.0)
    tis_weight = float(weights[mask].mean())
    ok = metrics["rollout/mismatch_kl"] < 0.05 and 0.5 < tis_weight < 2.0
    out = [("rollouts", "bf16 copy vs masters" if ok else "MISMATCH", ok,
            f"mismatch KL {metrics['rollout/mismatch_kl']:.2e}, ratio {metrics['rollout/mismatch_ratio_min']:.3f}.."
            f"{metrics['rollout/mismatch_ratio_max']:.3f}, TIS (token, cap 2) mean weight {tis_weight:.4f}, "
            f"truncated {float(truncated.float()[mask].mean()):.4f} ({int(mask.sum())} tokens)")]
    if gpu:
        tokens = int(chunk.completion_mask.sum())
        params = sum(p.numel() for p in model.parameters())
        rate = tokens / seconds
        out.append(("generation", f"{rate:,.0f} tokens/s", True,
                    f"{rows} sequences x {new} new tokens, bf16 copy, batch 1 chunk; {peak_share(rate * 2 * params, device)}"))
    return out


def peak_share(flops_per_s: float, device) -> str:
    import torch

    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" + (f" = {flops_per_s / peak:.1%} of the {name}'s bf16 peak" if peak else f" ({name}: peak unknown)")


def training_rows(config, device) -> list[tuple[str, str, bool, str]]:
    """Forward + backward under autocast over float32 masters: tokens/s and the peak memory against the plan's estimate."""
    import torch

    from dynamo_cli.models import precision
    from dynamo_cli.rollout.policy_stats import completion_forward
    from dynamo_cli.runtime.resources import model_shape, optimizer_bytes, training_bytes_per_sequence

    model = precision.mark(random_model(config, device), torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows, length, prompt = 8, 512, 128
    ids, mask = batch(config, device, rows=rows, length=length)

    def step() -> None:
        out = completion_forward(model, input_ids=ids, attention_mask=mask, prompt_width=prompt, temperature=1.0, with_entropy=True)
        (-(out.logprobs.mean() + 0.01 * out.entropy.mean())).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimiser's state exists from here: the plan reserves it
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync(device)
    seconds = (time.perf_counter() - t0) / 3
    peak = torch.cuda.max_memory_allocated(device) - base
    shape = model_shape(model)
    estimate = rows * training_bytes_per_sequence(shape, tokens=length, completion_tokens=length - prompt)
    params = sum(p.numel() for p in model.parameters())
    rate = rows * length / seconds
    ratio = peak / estimate
    return [("training", f"{rate:,.0f} tokens/s", True, f"{rows} x {length} tokens, bf16 autocast over float32 masters, AdamW; "
             f"{peak_share(rate * 6 * params, device)}"),
            ("memory", f"{ratio:.2f} x the estimate", ratio <= 1.0,
             f"peak {peak / 2**30:.2f} GiB above weights + AdamW state ({(base) / 2**30:.2f} GiB, plan reserves "
             f"{optimizer_bytes(shape) / 2**30:.2f} GiB of it) vs the plan's {estimate / 2**30:.2f} GiB for {rows} sequences "
             f"({shape.attention} attention)")]


def fsdp2_row(config, device) -> tuple[str, bool, str]:
    """FSDP2 on one rank with the MixedPrecisionPolicy: a step, the sharded checkpoint (full weights + optimiser shards),
    a resume into a fresh model that replays the next step's loss and weights exactly."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from dynamo_cli.runtime import fsdp

    with contextlib.ExitStack() as stack:
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
            stack.callback(dist.destroy_process_group)
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dynamo-fsdp2-")))
        ids, mask = batch(config, device, rows=2, length=32)

        def build():
            model = random_model(config, device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            names = {id(p): n for n, p in model.named_parameters()}
            fsdp.shard(model, mesh=init_device_mesh(device.type, (1,)), reshard_layers=True,
                       mp_policy=fsdp.mixed_precision_policy(torch.bfloat16))
            fsdp.rebind_optimizer(optimizer, names_before=names, model=model)
            return model, optimizer

        def step(model, optimizer) -> float:
            out = model(input_ids=ids, attention_mask=mask).logits
            loss = -torch.log_softmax(out[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        model, optimizer = build()
        step(model, optimizer)
        plain = fsdp.gather_plain_model(model, is_main=True)
        plain.save_pretrained(directory / "model", safe_serialization=True)
        fsdp.save_optimizer_shards(model, optimizer, directory / fsdp.SHARDS_DIR)
        second = step(model, optimizer)
        after = {k: v.clone() for k, v in fsdp.gather_plain_model(model, is_main=True).state_dict().items()}
        master = str(next(model.parameters()).dtype).split(".")[-1]

        from transformers import AutoModelForCausalLM

        resumed, resumed_optimizer = build()
        saved = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=torch.float32).state_dict()
        with torch.no_grad():
            for name, parameter in resumed.named_parameters():
                parameter.copy_(torch.distributed.tensor.distribute_tensor(saved[name].to(device), parameter.device_mesh,
                                                                           parameter.placements))
        fsdp.load_optimizer_shards(resumed, resumed_optimizer, directory / fsdp.SHARDS_DIR)
        again = step(resumed, resumed_optimizer)
        replayed = fsdp.gather_plain_model(resumed, is_main=True).state_dict()
        distance = max(float((replayed[k] - after[k]).abs().max()) for k in after)
        ok = again == second and distance == 0.0 and master == "float32"
        return ("exact resume" if ok else "RESUME DIFFERS"), ok, (
            f"{config.num_hidden_layers} layers, bf16 compute / float32 reduce, {master} shards; step 2 loss {second:.6f} "
            f"vs resumed {again:.6f}, weights apart {distance:.1e}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_row() -> tuple[str, bool, str]:
    """`dynamo train` for 2 steps on the GPU in bf16 (the tiny model, mixed precision, TIS and the token mask on)."""
    with tempfile.TemporaryDirectory(prefix="dynamo-gpu-train-") as run_dir:
        cmd = [sys.executable, "-m", "dynamo_cli", "train", "device=cuda", "model.dtype=bfloat16", "logger=none",
               f"hydra.run.dir={run_dir}", "trainer.steps=2", "trainer.prompts_per_step=8", "rollout.n=4", "allocator.n_min=2",
               "allocator.n_max=8", "eval.max_problems=8", "eval.n_samples=0", "task.num_train=200", "task.levels=[L1]",
               "algorithm.rollout_is=token", "algorithm.rollout_mask=token"]
        t0 = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            return "FAILED", False, (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
        kl = steps[-1].get("rollout/mismatch_kl", float("nan"))
        return "2 steps", len(steps) == 2, f"{seconds:.0f} s, step 2 mismatch KL {kl:.2e}, loss {steps[-1]['train/loss']:.4f}"


# ------------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    note = ensure_packages()
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    where = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}" if gpu else f"no GPU (torch {torch.__version__})"
    config = qwen_config(full=gpu)
    rows: list[tuple[str, str, bool | None, str]] = []

    def run(name: str, fn, *a, **kw) -> None:
        t0 = time.perf_counter()
        try:
            produced = fn(*a, **kw)
            for row in produced if isinstance(produced, list) else [(name, *produced)]:
                rows.append((row[0], row[1], row[2], f"{row[3]} [{time.perf_counter() - t0:.0f} s]"))
        except Exception as error:  # noqa: BLE001 - a row that breaks is reported, the others still run
            rows.append((name, "ERROR", False, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"))

    run("precision", precision_row, config, device)
    run("rollouts", rollout_rows, config, device, gpu=gpu)
    if not gpu:
        rows.append(("generation", "no GPU", None, "tokens/s and the share of the bf16 peak need the GPU"))
    if gpu:
        run("training", training_rows, config, device)
    else:
        rows.append(("training", "no GPU", None, "tokens/s and the share of the bf16 peak need the GPU"))
        rows.append(("memory", "no GPU", None, "peak GPU memory against the plan's estimate needs the GPU"))
    run("fsdp2", fsdp2_row, qwen_config(full=False) if not gpu else _fsdp_config(), device)
    if gpu:
        run("train", train_row)
    else:
        rows.append(("train", "no GPU", None, "a 2-step `dynamo train` on the GPU"))
    rows.append(("vllm", "not checkable on the lent machine", None,
                 "no vLLM in its image; every API rollout/vllm.py calls is checked against the pinned wheels' source "
                 "(scripts/check_vllm_api.py, docs/scaling.md)"))

    width = max(len(r[0]) for r in rows)
    result_width = max(len(r[1]) for r in rows)
    print(f"dynamo gpu-check: {where}; {'Qwen2.5-1.5B-shaped' if gpu else 'scaled-down Qwen-shaped'} random model; {note}")
    print(f"{'check':<{width}}  {'result':<{result_width}}  detail")
    for name, result, _, detail in rows:
        print(f"{name:<{width}}  {result:<{result_width}}  {detail}")
    print(f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"where": where, "rows": [dict(zip(("check", "result", "ok", "detail"), r, strict=True))
                                                                   for r in rows]}, indent=1))
    return 1 if any(ok is False for _, _, ok, _ in rows) else 0


def _fsdp_config():
    """On the GPU, FSDP2's row keeps the full model's width and vocabulary at 4 layers: the checkpoint round trip of 28
    layers (18 GB of weights and AdamW state) would take the time budget."""
    config = qwen_config(full=True)
    config.num_hidden_layers = 4
    return config


if __name__ == "__main__":
    sys.exit(main())
