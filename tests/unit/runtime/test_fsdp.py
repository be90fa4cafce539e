"""FSDP2 full-parameter training (runtime/fsdp.py): which launch configs are admitted, the optimiser's checkpoint marker,
and real 2-process FSDP2 runs (gloo on CPU) against 1-process runs of the same global batch and seed, with an
exact resume from a sharded checkpoint."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO

from dynamo_cli.errors import DynamoError
from dynamo_cli.runtime import fsdp

FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}


# ------------------------------------------------------------------------------------------ pure parts
def test_the_launch_environment_names_the_fsdp_version_and_resharding():
    assert fsdp.requested_fsdp_version({}) == 0  # no FSDP in the launch config
    assert fsdp.requested_fsdp_version({"ACCELERATE_USE_FSDP": "false", "FSDP_VERSION": "2"}) == 0
    assert fsdp.requested_fsdp_version({"ACCELERATE_USE_FSDP": "true"}) == 1  # accelerate's default
    assert fsdp.requested_fsdp_version(FSDP2_ENV) == 2
    assert fsdp.reshard_after_forward(FSDP2_ENV) is True
    assert fsdp.reshard_after_forward({**FSDP2_ENV, "FSDP_RESHARD_AFTER_FORWARD": "false"}) is False


def test_the_fsdp2_launch_config_is_what_accelerate_exports_as_fsdp2():
    config = yaml.safe_load((REPO / "conf/accelerate/fsdp2.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    assert config["fsdp_config"]["fsdp_reshard_after_forward"] is True


def _data_parallel(monkeypatch, env: dict[str, str], kind: str = "MULTI_CPU"):
    from accelerate.utils import DistributedType

    from dynamo_cli.runtime.distributed import DataParallel

    for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    accelerator = SimpleNamespace(process_index=0, num_processes=2, device=torch.device("cpu"), distributed_type=DistributedType[kind],
                                  state=SimpleNamespace(deepspeed_plugin=None))
    return DataParallel(accelerator)


def test_fsdp2_is_admitted_for_train_only_and_fsdp1_is_refused_in_one_line(monkeypatch):
    dp = _data_parallel(monkeypatch, FSDP2_ENV)  # on CPU accelerate reports MULTI_CPU; the launch env says FSDP2
    assert dp.sharded and dp.engine == "FSDP2"
    dp.check_engine(fsdp2=True)  # dynamo train
    with pytest.raises(DynamoError, match="fsdp2.yaml.*is for `dynamo train`"):
        dp.check_engine()  # sft, eval
    dp = _data_parallel(monkeypatch, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    assert not dp.sharded
    with pytest.raises(DynamoError, match="FSDP shards the weights.*conf/accelerate/fsdp2.yaml"):
        dp.check_engine(fsdp2=True)
    dp = _data_parallel(monkeypatch, {})
    assert not dp.sharded and dp.engine == "MULTI_CPU"
    dp.check_engine(fsdp2=True)


def test_vllm_and_lora_are_refused_under_fsdp2_in_one_line(monkeypatch):
    from dynamo_cli.config.model import LoraConfig, TinyModelConfig
    from dynamo_cli.models.load import add_lora, build_char_tokenizer, build_tiny_model

    dp = _data_parallel(monkeypatch, FSDP2_ENV)
    with pytest.raises(DynamoError, match="only rollout=hf generates with sharded weights"):
        dp.sharded_generation(SimpleNamespace(), model=None)
    model = add_lora(build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, intermediate_size=64), build_char_tokenizer()),
                     LoraConfig(enabled=True))
    with pytest.raises(DynamoError, match="LoRA.*use conf/accelerate/ddp.yaml"):
        dp.prepare(model, torch.optim.AdamW(model.parameters()), micro_batch_size=4)


def test_the_sharded_optimiser_checkpoints_a_marker_and_refuses_a_one_file_state():
    params = [torch.nn.Parameter(torch.ones(3))]
    inner = torch.optim.AdamW(params, lr=0.5)
    wrapped = fsdp.ShardedOptimizer(inner)
    assert wrapped.param_groups is inner.param_groups  # the scheduler and the loop see the same lr
    params[0].grad = torch.ones(3)
    wrapped.step()
    wrapped.zero_grad(set_to_none=True)
    # AdamW's first step: decay 1 - lr·wd = 1 - 0.5·0.01 = 0.995, then minus lr·m̂/√v̂ = 0.5·1 -> 0.495
    assert params[0].grad is None and float(params[0].detach()[0]) == pytest.approx(0.495, abs=1e-6)
    assert wrapped.state_dict() == {"sharded": fsdp.SHARDS_DIR}  # the state itself: in optimizer_shards/, per rank
    wrapped.load_state_dict({"sharded": fsdp.SHARDS_DIR})
    with pytest.raises(DynamoError, match="saved without FSDP2"):
        wrapped.load_state_dict(inner.state_dict())


def test_units_are_the_decoder_layers_and_the_plain_class_is_found_under_the_fsdp_subclass():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model

    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=3, intermediate_size=64), build_char_tokenizer())
    assert fsdp.layer_classes(model) == {LlamaDecoderLayer}
    assert sum(isinstance(m, LlamaDecoderLayer) for m in model.modules()) == 3

    from torch.distributed.fsdp import FSDPModule

    fsdp_class = type(f"FSDP{type(model).__name__}", (FSDPModule, type(model)), {})  # what fully_shard swaps in
    assert fsdp.unsharded_class(fsdp_class) is type(model)


def test_the_staging_dir_sits_beside_the_checkpoint_and_is_moved_in(tmp_path):
    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
    from dynamo_cli.runtime import checkpoint

    target = tmp_path / "checkpoints" / "step-2"
    staging = fsdp.staging_dir(target)
    assert staging == tmp_path / "checkpoints" / ".shards-step-2"
    staging.mkdir(parents=True)
    (staging / "__0_0.distcp").write_bytes(b"shard")
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, intermediate_size=64), tokenizer)
    checkpoint.save_checkpoint(target, model=model, tokenizer=tokenizer, trainer_state={"x": 1}, staged={fsdp.SHARDS_DIR: staging})
    assert (target / fsdp.SHARDS_DIR / "__0_0.distcp").read_bytes() == b"shard" and not staging.exists()
    assert checkpoint.latest(tmp_path / "checkpoints") == target


# ------------------------------------------------------------------------------- which models fit (arithmetic)
def test_model_fits_arithmetic_by_hand():
    from bench import model_fits as mf

    # SmolLM2-135M from its shape: 49152·576 (tied) + 30·(576·(2·576 + 2·192) + 3·576·1536 + 2·576) + 576 = 134,515,008,
    # the 134.5 M that loading the real model counts
    smol = mf.MODELS[0]
    assert mf.llama_params(smol) == 49152 * 576 + 30 * (576 * 1536 + 3 * 576 * 1536 + 1152) + 576 == 134_515_008
    toy = mf.LlamaShape("toy", hidden=2, intermediate=4, layers=1, kv_dim=2, vocab=10, tied=False)
    # embeddings 10·2·2 = 40; layer: attention 2·(4 + 4) = 16, mlp 3·2·4 = 24, norms 4 -> 44; final norm 2 -> 86
    assert mf.llama_params(toy) == 86
    assert mf.lora_params(toy, r=1) == (4 * 2 + 4 * 2 + 6 * 3)  # q, o: 2+2; k, v: 2+2; gate, up, down: 2+4 -> 34
    assert mf.state_bytes(toy, engine="ddp", dtype_bytes=4) == 16 * 86  # weights, gradients, two moments
    assert mf.state_bytes(toy, engine="ddp", dtype_bytes=4, kl_reference=True) == 20 * 86
    assert mf.state_bytes(toy, engine="ddp_lora", dtype_bytes=2) == 2 * 86 + 8 * 16 * 34  # model.lora.r = 16
    # FSDP2 on 2: rollout 4·86 + 12·86/2 = 860; update 16·86/2 + 4·40 + 3·4·44 = 688 + 160 + 528 = 1376 -> the update
    assert mf.state_bytes(toy, engine="fsdp2", dtype_bytes=4, world_size=2) == 1376
    # a model whose layers dominate (8B): the rollout phase, full weights + 3/8 of them, is the peak
    llama8 = mf.MODELS[2]
    assert mf.state_bytes(llama8, engine="fsdp2", dtype_bytes=2, world_size=8) == 2 * mf.llama_params(llama8) * (1 + 3 / 8)
    assert mf.smallest_gpu(0.8 * 40e9) == "40 GB" and mf.smallest_gpu(0.8 * 40e9 + 1) == "80 GB" and mf.smallest_gpu(1e12) == "none"


def test_every_key_of_the_fsdp2_launch_config_is_honoured_or_refused_in_one_line():
    from dynamo_cli.runtime.distributed import ShardedEngineError

    exported = {**FSDP2_ENV, "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_OFFLOAD_PARAMS": "false",
                "FSDP_CPU_RAM_EFFICIENT_LOADING": "false", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
                "FSDP_ACTIVATION_CHECKPOINTING": "false", "ACCELERATE_MIXED_PRECISION": "no"}
    fsdp.check_launch_config(exported, compute_dtype=None)  # conf/accelerate/fsdp2.yaml as shipped
    fsdp.check_launch_config({**exported, "ACCELERATE_MIXED_PRECISION": "bf16"}, compute_dtype=torch.bfloat16)  # the same ask
    refusals = {
        "FSDP_AUTO_WRAP_POLICY": ("SIZE_BASED_WRAP", "fsdp_auto_wrap_policy: SIZE_BASED_WRAP in the FSDP2 launch config: dynamo shards"),
        "FSDP_TRANSFORMER_CLS_TO_WRAP": ("LlamaDecoderLayer", "fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer in the FSDP2"),
        "FSDP_STATE_DICT_TYPE": ("FULL_STATE_DICT", "fsdp_state_dict_type: FULL_STATE_DICT in the FSDP2 launch config"),
        "FSDP_OFFLOAD_PARAMS": ("true", "fsdp_offload_params: true in the FSDP2 launch config: CPU offload is not built"),
        "FSDP_CPU_RAM_EFFICIENT_LOADING": ("true", "fsdp_cpu_ram_efficient_loading: true in the FSDP2 launch config"),
        "FSDP_ACTIVATION_CHECKPOINTING": ("true", "fsdp_activation_checkpointing: true .* is model.gradient_checkpointing=true"),
        "ACCELERATE_MIXED_PRECISION": ("bf16", "mixed_precision: bf16 in the FSDP2 launch config: dynamo's mixed precision is model.dtype"),
    }
    for key, (value, message) in refusals.items():
        with pytest.raises(ShardedEngineError, match=message) as refused:
            fsdp.check_launch_config({**exported, key: value}, compute_dtype=None)
        assert "\n" not in str(refused.value)
    with pytest.raises(ShardedEngineError, match="mixed_precision: fp16"):
        fsdp.check_launch_config({**exported, "ACCELERATE_MIXED_PRECISION": "fp16"}, compute_dtype=torch.bfloat16)


def test_mixed_precision_gives_fsdp2_a_policy_of_bf16_compute_and_float32_reduce():
    policy = fsdp.mixed_precision_policy(torch.bfloat16)
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp.mixed_precision_policy(None) is None
