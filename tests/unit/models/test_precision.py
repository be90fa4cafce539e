"""Mixed precision (models/precision.py): float32 masters with bf16 autocast move the weights at lr 1e-6 as float32 does,
pure bf16 weights do not; what is loaded in which dtype; log-probs stay float32 under autocast; the config's refusals."""
from __future__ import annotations

import pytest
import torch

from dynamo_cli.config.algorithm import OptimConfig
from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.models import precision
from dynamo_cli.models.load import load_policy
from dynamo_cli.models.optim import make_optimizer
from dynamo_cli.rollout.policy_stats import completion_forward

CPU = torch.device("cpu")


def _batch(tokenizer):
    texts = ["12+34=46", "17*8=136", "15+15=30", "90-19=71"]  # 8 characters each
    ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    return ids, torch.ones_like(ids)


def one_step(dtype: str, master_weights: str) -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor], torch.optim.Optimizer]:
    """The tiny model after one AdamW step at lr 1e-6 on -mean log-prob of a fixed batch: (model, weights before, after)."""
    model, tokenizer = load_policy(TinyModelConfig(dtype=dtype), CPU, master_weights=master_weights)
    optimizer, _ = make_optimizer(model, OptimConfig(lr=1e-6), total_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    ids, mask = _batch(tokenizer)
    out = completion_forward(model, input_ids=ids, attention_mask=mask, prompt_width=3, temperature=1.0, with_entropy=False)
    (-out.logprobs.mean()).backward()
    optimizer.step()
    return model, before, [p.detach().clone() for p in model.parameters()], optimizer


def moved(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Share of the weights an update changed at all."""
    return sum(int((a != b).sum()) for a, b in zip(after, before, strict=True)) / sum(b.numel() for b in before)


def test_a_bf16_step_at_lr_1e6_moves_the_weights_as_the_float32_step_does():
    """The issue's failure: at lr 1e-6 AdamW's first update (about lr per weight) is below half a bf16 ulp of almost every
    weight (the ulp of 0.02 is 2^-13 ≈ 1.2e-4), so pure bf16 weights round it away. Float32 masters under bf16 autocast
    keep it: the same share of weights moves as in float32, mostly the same way, and the masters and AdamW's moments are
    float32."""
    _, before32, after32, _ = one_step("float32", "float32")
    mixed, before_mixed, after_mixed, optimizer = one_step("bfloat16", "float32")
    _, before_pure, after_pure, _ = one_step("bfloat16", "model")

    share32, share_mixed, share_pure = moved(before32, after32), moved(before_mixed, after_mixed), moved(before_pure, after_pure)
    assert share32 > 0.99  # float32: every weight with a gradient moves
    assert share_mixed >= 0.99 * share32  # measured: 1.000 and 1.000
    assert share_pure < 0.05  # measured: 0.020 (the weights whose half ulp is below 1e-6: |w| below about 5e-4)
    # the masters start where float32 does (the same init) and the bf16 update goes the float32 update's way
    assert all(torch.equal(a, b) for a, b in zip(before32, before_mixed, strict=True))
    delta32 = torch.cat([(a - b).flatten() for a, b in zip(after32, before32, strict=True)])
    delta_mixed = torch.cat([(a - b).flatten() for a, b in zip(after_mixed, before_mixed, strict=True)])
    assert float((delta32.sign() == delta_mixed.sign()).float().mean()) > 0.9  # measured: 0.997
    assert float(delta_mixed.abs().max()) == pytest.approx(1e-6, rel=0.05)  # Adam's first step: lr per weight
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}


def test_what_each_setting_loads_and_marks():
    masters, _ = load_policy(TinyModelConfig(dtype="bfloat16", gradient_checkpointing=True), CPU, master_weights="float32")
    assert {p.dtype for p in masters.parameters()} == {torch.float32} and precision.marked_dtype(masters) == torch.bfloat16
    from dynamo_cli.runtime.resources import checkpointing

    assert checkpointing(masters)  # model.gradient_checkpointing, switched on for training
    pure, _ = load_policy(TinyModelConfig(dtype="bfloat16"), CPU, master_weights="model")
    assert {p.dtype for p in pure.parameters()} == {torch.bfloat16} and precision.marked_dtype(pure) is None
    plain, _ = load_policy(TinyModelConfig(dtype="bfloat16", gradient_checkpointing=True), CPU)  # eval, export: no masters
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16} and precision.marked_dtype(plain) is None
    assert not checkpointing(plain)
    assert precision.weights_dtype("bfloat16", "float32") == torch.float32 and precision.autocast_dtype("float32", "float32") is None


def test_forwards_autocast_to_the_marked_dtype_and_log_probs_stay_float32():
    from dynamo_cli.algo.logits import entropy_from_logits, logprobs_from_logits

    model, tokenizer = load_policy(TinyModelConfig(dtype="bfloat16"), CPU, master_weights="float32")
    ids, mask = _batch(tokenizer)
    mixed = completion_forward(model, input_ids=ids, attention_mask=mask, prompt_width=3, temperature=1.0)
    precision.mark(model, None)
    full = completion_forward(model, input_ids=ids, attention_mask=mask, prompt_width=3, temperature=1.0)
    assert mixed.logprobs.dtype == mixed.entropy.dtype == torch.float32
    assert not torch.equal(mixed.logprobs, full.logprobs)  # the matmuls ran in bf16...
    assert torch.allclose(mixed.logprobs, full.logprobs, atol=0.05)  # ...and agree to bf16's precision

    logits = torch.randn(2, 5, 7) * 30
    tokens = torch.randint(0, 7, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the reductions over the vocabulary leave autocast
        inside = logprobs_from_logits(logits, tokens), entropy_from_logits(logits)
    outside = logprobs_from_logits(logits, tokens), entropy_from_logits(logits)
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(inside, outside, strict=True))


def test_an_old_bf16_checkpoint_resumes_upcast_with_one_line(tmp_path, capsys):
    from dynamo_cli.models.load import saved_dtype

    model, tokenizer = load_policy(TinyModelConfig(dtype="bfloat16"), CPU, master_weights="model")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert saved_dtype(tmp_path) == "bfloat16"
    resumed, _ = load_policy(TinyModelConfig(dtype="bfloat16"), CPU, resume_from=tmp_path, master_weights="float32")
    assert {p.dtype for p in resumed.parameters()} == {torch.float32}
    assert all(torch.equal(a.float(), b) for a, b in zip(model.parameters(), resumed.parameters(), strict=True))  # exact upcast
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dynamo:")]
    assert said == ["dynamo: warning: this checkpoint holds bfloat16 weights (saved before float32 master weights): they resume "
                    "upcast to float32, and so do its AdamW moments; the rounding they carry stays"]
    assert precision.checkpoint_note("float32", torch.float32) is None and precision.checkpoint_note(None, torch.float32) is None


def test_float16_training_and_unknown_master_weights_are_refused_in_one_line():
    from helpers import compose_schema

    from dynamo_cli.config.base import ConfigError

    for command in ("train", "sft"):
        with pytest.raises(ConfigError, match=r"^model.dtype=float16 cannot train: float16 gradients need loss scaling"):
            compose_schema(command, ["model.dtype=float16"])
    compose_schema("eval", ["model.dtype=float16"])  # inference in float16 is fine
    with pytest.raises(ConfigError, match="optim.master_weights='bf16' is not allowed; choose one of: float32, model"):
        compose_schema("train", ["optim.master_weights=bf16"])
