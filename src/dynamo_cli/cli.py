"""`dynamo {sft,train,eval,score,export,sweep}`: each subcommand is a Hydra app over `conf/<command>.yaml`.

Everything after the subcommand goes to Hydra unchanged (overrides, `--cfg job`, `--multirun`,
`hydra.run.dir=...`). Before Hydra runs, the config is composed and validated once more here so that a
bad option, key or value ends in one clear line and exit code 2 instead of Hydra's multi-line report.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from dynamo_cli.config.base import ConfigError
from dynamo_cli.config.store import register_schemas
from dynamo_cli.errors import (
    DynamoError,
    Preempted,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"

# command -> (recipe module, one-line description). Each recipe module has `run(cfg, run_dir) -> None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("dynamo_cli.recipes.sft", "supervised fine-tuning on the task's demonstrations"),
    "train": ("dynamo_cli.recipes.train", "RL from verifiable rewards (GRPO / DynaMO)"),
    "eval": ("dynamo_cli.recipes.eval", "greedy accuracy, mean@n and pass@k of a checkpoint"),
    "export": ("dynamo_cli.recipes.export", "write a checkpoint as one plain HF model (a LoRA adapter merged)"),
    "score": ("dynamo_cli.recipes.score", "score given completions with the task's own verifier (input=<file.jsonl>)"),
    "sweep": ("dynamo_cli.recipes.sweep", "run a sweep preset and aggregate it into tables and plots"),
}
HYDRA_CONFIG_GROUPS = ("model", "task", "sampler", "allocator", "modulator", "rollout", "critic", "logger", "experiment", "sweep")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("name_suffix"):
        OmegaConf.register_new_resolver("name_suffix", lambda name: f"-{name}" if name else "")
    if not OmegaConf.has_resolver("dynamo_groups"):  # `dynamo <command> --help`: that command's groups only
        OmegaConf.register_new_resolver("dynamo_groups", lambda command: "\n".join(
            f"{group}: {', '.join(config_options(group))}" for group in command_groups(command)) + "\n")
    if not OmegaConf.has_resolver("dynamo_root"):
        OmegaConf.register_new_resolver("dynamo_root", lambda: str(REPO_ROOT))


def is_rank_zero() -> bool:
    """The process that speaks for a run: the only one, or rank 0 of an `accelerate launch` / torchrun group."""
    return os.environ.get("RANK", "0") == "0"


def fail(command: str, message: str) -> None:
    """The one-line error every user-facing failure ends in (from rank 0 only when several processes run)."""
    if is_rank_zero():
        print(f"dynamo {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -------------------------------------------------------------------------------- validation
def to_schema(cfg: DictConfig):
    """Build the typed, validated config dataclass from a composed config (runs every __post_init__)."""
    return OmegaConf.to_object(cfg)


def not_an_option(group: str, option: str, options) -> str:
    return f"{group}={option} is not an option of {group}; choose one of: {', '.join(sorted(options))}"


def describe_error(error: BaseException) -> str:
    """Turn a Hydra/OmegaConf/validation exception into one line naming the key and what is allowed."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return not_an_option(group, option, error.options)
    if isinstance(error, ConfigError):
        return str(error)
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, (OmegaConfBaseException, ConfigError)):
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return str(cause)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        allowed = ""
        if dataclasses.is_dataclass(cause.object_type):
            allowed = "; allowed keys here: " + ", ".join(f.name for f in dataclasses.fields(cause.object_type))
        return f"{cause.full_key} is not a config key{allowed}"
    if isinstance(cause, MissingMandatoryValue) and cause.full_key:
        return f"{cause.full_key} is required: set {cause.full_key}=<value>"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def compose_variants(overrides: list[str]) -> list[list[str]]:
    """Override lists to validate: sweep overrides (`seed=0,1`) are expanded one value at a time."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    sweeps = []
    for i, override in enumerate(parsed):
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            first.append(f"{override.get_key_element()}={values[0]}")
            sweeps.append((i, override, values))
        else:
            first.append(override.input_line)
    variants = [first]
    for i, override, values in sweeps:
        for value in values[1:]:
            variant = list(first)
            variant[i] = f"{override.get_key_element()}={value}"
            variants.append(variant)
    return variants


def check_group_options(overrides: list[str]) -> None:
    """`group=option` must name a YAML in conf/<group>/. Hydra checks this itself for most groups, but an
    *optional* default (`optional experiment: null`) silently skips a missing option: experiment=typo would run the
    defaults without a word."""
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        group = CONF_DIR / key
        if sep and "/" not in key and "." not in key and group.is_dir() and value not in ("", "null"):
            options = sorted(p.stem for p in group.glob("*.yaml"))
            if value not in options:
                raise ConfigError(not_an_option(key, value, options))


def preflight(command: str, overrides: list[str], multirun: bool) -> None:
    """Compose and validate the config with the user's overrides; one line and exit 2 on any error."""
    from hydra import compose, initialize_config_dir

    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        variants = compose_variants(job_overrides) if multirun else [job_overrides]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for variant in variants:
                check_group_options(variant)
                to_schema(compose(config_name=command, overrides=variant))
    except Exception as error:  # noqa: BLE001 - every composition error becomes one line
        fail(command, describe_error(error))


# ------------------------------------------------------------------------------------ entry
def _hydra_app(command: str) -> Callable[[], None]:
    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)
    def app(cfg: DictConfig) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        quiet_libraries()
        recipe = importlib.import_module(COMMANDS[command][0]).run  # torch & co. load only for a real run
        try:
            recipe(to_schema(cfg), run_dir)
        except (DynamoError, ConfigError) as error:
            fail(command, str(error))
        except Preempted as stop:  # a checkpoint was written: exit with the code the scheduler requeues on
            if is_rank_zero():
                print(f"dynamo {command}: preempted: {stop}", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        except Exception as error:  # last: Preempted is an Exception too
            from dynamo_cli.runtime.atomic import disk_full

            if not disk_full(error):  # whatever a library raised on a full disk (torch, safetensors: not always OSError)
                raise
            fail(command, f"no space left on the device ({type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}); "
                          f"free space, then continue (dynamo train: trainer.resume=auto hydra.run.dir={run_dir})")
        if is_rank_zero():  # one line from a multi-process run
            print(run_dir)  # the last line a command prints is its run dir

    return app


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a model hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def command_groups(command: str) -> list[str]:
    """The config groups in `conf/<command>.yaml`'s defaults list."""
    defaults = (CONF_DIR / f"{command}.yaml").read_text()
    return [g for g in HYDRA_CONFIG_GROUPS if f"- {g}:" in defaults or f"- optional {g}:" in defaults]


def config_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def print_help() -> None:
    lines = ["usage: dynamo <command> [key=value ...] [--cfg job] [--multirun] [--help]", "", "commands:"]
    lines += [f"  {name:<7}{desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "config groups (choose with group=option; `dynamo <command> --help` shows every key):"]
    for group in HYDRA_CONFIG_GROUPS:
        if options := config_options(group):
            lines.append(f"  {group:<11}{', '.join(options)}")
    lines += [
        "",
        "examples:",
        "  dynamo sft task=math model=tiny",
        "  dynamo eval task=math model.path=outputs/sft/<date>/<time>/checkpoints/final",
        "  dynamo train experiment=dynamo model.path=<sft checkpoint>",
        "  dynamo train allocator=uniform modulator=none      # the GRPO baseline",
        "  dynamo sweep sweep=ablation",
        "  accelerate launch --config_file conf/accelerate/ddp.yaml -m dynamo_cli train ...   # several GPUs",
    ]
    print("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dynamo: error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    register_schemas()
    register_resolvers()
    if command == "sweep":  # a driver of its own over many train runs
        importlib.import_module(COMMANDS[command][0]).main(rest)
        return

    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(rest)
    if not (args.help or args.hydra_help or args.shell_completion or args.info):
        preflight(command, args.overrides, multirun=args.multirun)  # before torch is imported: errors come fast
    sys.argv = [f"dynamo-{command}", *rest]
    _hydra_app(command)()
