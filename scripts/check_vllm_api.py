"""Check every vLLM API that src/dynamo_cli/rollout/vllm.py calls against the source of vLLM wheels, without installing them.

    .venv/bin/pip download vllm==0.25.0 --no-deps -d /tmp/vllm_wheel      # the wheel only: its torch would replace ours
    .venv/bin/python scripts/check_vllm_api.py /tmp/vllm_wheel/vllm-*.whl   # or a directory of wheels

Each wheel is opened as a zip and its Python source parsed (ast); nothing of vLLM is imported or run. The calls checked
are the ones rollout/vllm.py makes, read from its own helpers (`engine_kwargs`, `sampling_kwargs`), so a new argument
there is checked here without editing this script:

    LLM(...)               every keyword engine_kwargs passes: an LLM.__init__ parameter or an EngineArgs field
    external launcher      "external_launcher" a DistributedExecutorBackend, and its executor reading RANK / LOCAL_RANK
                           with VLLM_ENABLE_V1_MULTIPROCESSING=0 (an env var vllm/envs.py defines)
    logprobs modes         "raw_logprobs" and "processed_logprobs" in LogprobsMode
    dummy weights          "dummy" a load format with a loader
    generation_config      the value "vllm" handled by ModelConfig (the model file's sampling defaults ignored)
    SamplingParams(...)    every keyword sampling_kwargs passes: a SamplingParams field
    generate               LLM.generate(prompts, sampling_params=, use_tqdm=); CompletionOutput.token_ids, finish_reason,
                           logprobs; Logprob.logprob
    weights                LLM.collective_rpc(method, ..., kwargs=) reaching Worker.reload_weights(weights_iterator=,
                           is_checkpoint_format=); LLM.reset_prefix_cache()
    sleep mode             LLM.sleep(level=), LLM.wake_up(tags=), the worker's "weights" and "kv_cache" tags

Prints one block per wheel and a summary; exits 1 when any check fails in any wheel (or a wheel's version is outside the
range rollout/vllm.py declares supported and --allow-outside is not given), 0 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dynamo_cli.rollout.vllm import SUPPORTED, engine_kwargs, sampling_kwargs, supported_range  # noqa: E402


class Wheel:
    """A wheel's Python sources, parsed on demand."""

    def __init__(self, path: Path):
        self.path, self.zip = path, zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())
        metadata = next(n for n in self.names if n.endswith(".dist-info/METADATA"))
        self.metadata = self.zip.read(metadata).decode()
        self.version = re.search(r"^Version: (.+)$", self.metadata, re.M).group(1).strip()
        self._trees: dict[str, ast.Module | None] = {}

    def text(self, name: str) -> str | None:
        return self.zip.read(name).decode() if name in self.names else None

    def tree(self, name: str) -> ast.Module | None:
        if name not in self._trees:
            source = self.text(name)
            self._trees[name] = ast.parse(source) if source is not None else None
        return self._trees[name]

    def requirement(self, package: str) -> str:
        found = re.search(rf"^Requires-Dist: {package}([^;\n]*)$", self.metadata, re.M)
        return found.group(1).strip() if found else "-"


def find_class(tree: ast.Module | None, name: str) -> ast.ClassDef | None:
    if tree is None:
        return None
    return next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name), None)


def method(cls: ast.ClassDef | None, name: str) -> ast.FunctionDef | None:
    if cls is None:
        return None
    return next((n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name), None)


def parameters(fn: ast.FunctionDef | None) -> tuple[list[str], bool]:
    """(the parameter names, whether it takes **kwargs)."""
    if fn is None:
        return [], False
    args = fn.args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    return names, args.kwarg is not None


def fields(cls: ast.ClassDef | None) -> set[str]:
    """A dataclass's / msgspec struct's annotated field names."""
    if cls is None:
        return set()
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def literal_values(tree: ast.Module | None, alias: str) -> set[str]:
    """The strings of `alias = Literal[...]` (an assignment, an annotated one, or a `type` alias) in a module."""
    if tree is None:
        return set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif type(node).__name__ == "TypeAlias":
            names = [node.name.id]
        else:
            continue
        if alias in names and node.value is not None:
            return {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return set()


def constants(tree: ast.Module | None) -> set[str]:
    return set() if tree is None else {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def compares_with(tree: ast.Module | None, attribute: str, value: str) -> bool:
    """Some comparison in the module involves `<x>.<attribute>` and the string `value` (==, in {...})."""
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            touches = any(isinstance(p, ast.Attribute) and p.attr == attribute for p in parts)
            if touches and value in {c.value for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant)}:
                return True
    return False


def check(wheel: Wheel) -> list[tuple[str, bool, str]]:
    """(what, ok, where or why) for every API rollout/vllm.py uses."""
    results: list[tuple[str, bool, str]] = []

    def record(what: str, ok: bool, detail: str) -> None:
        results.append((what, ok, detail))

    llm_py = "vllm/entrypoints/llm.py"
    llm = find_class(wheel.tree(llm_py), "LLM")
    record("class LLM", llm is not None, llm_py)
    init, takes_kwargs = parameters(method(llm, "__init__"))
    engine_args = fields(find_class(wheel.tree("vllm/engine/arg_utils.py"), "EngineArgs"))
    wanted = engine_kwargs(model_dir="m", dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=False, max_model_len=8,
                           seed=0, sleep_level=1, logprobs_mode="raw_logprobs")
    for key in wanted:
        where = "LLM.__init__" if key in init else "EngineArgs (via **kwargs)" if takes_kwargs and key in engine_args else None
        record(f"LLM({key}=...)", where is not None, where or "neither an LLM.__init__ parameter nor an EngineArgs field")

    parallel = literal_values(wheel.tree("vllm/config/parallel.py"), "DistributedExecutorBackend")
    record('distributed_executor_backend="external_launcher"', "external_launcher" in parallel,
           f"DistributedExecutorBackend = {sorted(parallel) or 'not found'}")
    executor_py = "vllm/v1/executor/uniproc_executor.py"
    executor = find_class(wheel.tree(executor_py), "ExecutorWithExternalLauncher")
    executor_text = ast.unparse(executor) if executor is not None else ""
    record("external launcher reads RANK and LOCAL_RANK", all(f'"{v}"' in executor_text or f"'{v}'" in executor_text
                                                              for v in ("RANK", "LOCAL_RANK")), executor_py)
    record("external launcher needs VLLM_ENABLE_V1_MULTIPROCESSING=0", "VLLM_ENABLE_V1_MULTIPROCESSING" in executor_text
           and "VLLM_ENABLE_V1_MULTIPROCESSING" in (wheel.text("vllm/envs.py") or ""), f"{executor_py}, vllm/envs.py")

    modes = literal_values(wheel.tree("vllm/config/model.py"), "LogprobsMode")
    for mode in ("raw_logprobs", "processed_logprobs"):
        record(f'logprobs_mode="{mode}"', mode in modes, f"LogprobsMode = {sorted(modes) or 'not found'}")
    loaders = constants(wheel.tree("vllm/model_executor/model_loader/__init__.py"))
    record('load_format="dummy"', "dummy" in loaders, "vllm/model_executor/model_loader/__init__.py")
    record('generation_config="vllm"', compares_with(wheel.tree("vllm/config/model.py"), "generation_config", "vllm"),
           "vllm/config/model.py: ModelConfig compares generation_config with 'vllm'")

    sampling = fields(find_class(wheel.tree("vllm/sampling_params.py"), "SamplingParams"))
    for key in sampling_kwargs(max_new_tokens=1, temperature=1.0, top_p=1.0, greedy=False, eos_ids=(0,), logprobs=True):
        record(f"SamplingParams({key}=...)", key in sampling, "vllm/sampling_params.py")

    generate, _ = parameters(method(llm, "generate"))
    record("LLM.generate(prompts, sampling_params=, use_tqdm=)", generate[1:2] == ["prompts"] and
           {"sampling_params", "use_tqdm"} <= set(generate), f"LLM.generate{tuple(generate[1:])}")
    completion = fields(find_class(wheel.tree("vllm/outputs.py"), "CompletionOutput"))
    record("CompletionOutput.token_ids, finish_reason, logprobs", {"token_ids", "finish_reason", "logprobs"} <= completion,
           "vllm/outputs.py")
    logprob = fields(find_class(wheel.tree("vllm/logprobs.py"), "Logprob")) or fields(find_class(wheel.tree("vllm/sequence.py"), "Logprob"))
    record("Logprob.logprob", "logprob" in logprob, "vllm/logprobs.py")

    rpc, _ = parameters(method(llm, "collective_rpc"))
    record("LLM.collective_rpc(method, ..., kwargs=)", rpc[1:2] == ["method"] and "kwargs" in rpc, f"LLM.collective_rpc{tuple(rpc[1:])}")
    worker_py = "vllm/v1/worker/gpu_worker.py"
    worker_tree = wheel.tree(worker_py)
    ok, chain = reload_accepts(wheel, {"weights_iterator", "is_checkpoint_format"})
    record("Worker.reload_weights(weights_iterator=, is_checkpoint_format=)", ok, chain)
    reset, _ = parameters(method(llm, "reset_prefix_cache"))
    record("LLM.reset_prefix_cache()", method(llm, "reset_prefix_cache") is not None, f"LLM.reset_prefix_cache{tuple(reset[1:])}")

    sleep, _ = parameters(method(llm, "sleep"))
    wake, _ = parameters(method(llm, "wake_up"))
    record("LLM.sleep(level=)", "level" in sleep, f"LLM.sleep{tuple(sleep[1:])}")
    record("LLM.wake_up(tags=)", "tags" in wake, f"LLM.wake_up{tuple(wake[1:])}")
    tags = constants(worker_tree)
    record('wake_up tags "weights", "kv_cache"', {"weights", "kv_cache"} <= tags, worker_py)
    return results


RUNNERS = ("vllm/v1/worker/gpu_model_runner.py", "vllm/v1/worker/gpu/model_runner.py")  # V1, and V2 (it forwards to V1)


def reload_accepts(wheel: Wheel, wanted: set[str]) -> tuple[bool, str]:
    """Whether collective_rpc("reload_weights", kwargs=...) reaches a reload_weights that names `wanted`: the Worker's own,
    or, where the Worker forwards (*args, **kwargs) to its model runner, every GPU model runner's (each naming them, or
    forwarding in turn to the V1 runner, which must)."""
    def signature(path: str) -> tuple[list[str], bool, bool]:  # (names, forwards **kwargs, defined)
        tree = wheel.tree(path)
        fn = next((method(c, "reload_weights") for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and method(c, "reload_weights")),
                  None) if tree is not None else None
        names, forwards = parameters(fn)
        return names, forwards, fn is not None

    names, forwards, defined = signature("vllm/v1/worker/gpu_worker.py")
    if not defined:
        return False, "Worker.reload_weights not found"
    if wanted <= set(names):
        return True, f"Worker.reload_weights{tuple(names[1:])}"
    if not forwards:
        return False, f"Worker.reload_weights{tuple(names[1:])}"
    hops = []
    v1_names, _, v1_defined = signature(RUNNERS[0])
    for path in RUNNERS:
        runner, runner_forwards, runner_defined = signature(path)
        if not runner_defined:
            continue
        ok = wanted <= set(runner) or (runner_forwards and path != RUNNERS[0] and v1_defined and wanted <= set(v1_names))
        hops.append(f"{path.split('vllm/v1/worker/')[1]}: reload_weights{tuple(runner[1:])}{' -> V1' if runner_forwards else ''}")
        if not ok:
            return False, "Worker forwards to " + "; ".join(hops)
    return bool(hops), "Worker forwards to " + "; ".join(hops) if hops else "no GPU model runner defines reload_weights"


def in_supported(version: str) -> bool:
    release = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    return SUPPORTED[0] <= release < SUPPORTED[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", type=Path, help="vllm-*.whl files, or directories holding them")
    parser.add_argument("--allow-outside", action="store_true", help=f"check wheels outside {supported_range()} without failing for it")
    args = parser.parse_args(argv)
    paths = sorted({w for p in args.wheels for w in (p.glob("vllm-*.whl") if p.is_dir() else [p])},
                   key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p.name)[1:4]])
    if not paths:
        print("no vllm wheel given", file=sys.stderr)
        return 2
    failed = []
    print(f"rollout/vllm.py supports {supported_range()}")
    for path in paths:
        wheel = Wheel(path)
        results = check(wheel)
        bad = [r for r in results if not r[1]]
        inside = in_supported(wheel.version)
        print(f"\nvllm {wheel.version} ({path.name}; torch{wheel.requirement('torch')}, transformers{wheel.requirement('transformers')})"
              f"{'' if inside else ' -- outside the supported range'}")
        for what, ok, detail in results:
            print(f"  {'ok  ' if ok else 'FAIL'} {what}: {detail}")
        print(f"  {len(results) - len(bad)}/{len(results)} checks pass")
        if bad or (not inside and not args.allow_outside):
            failed.append(wheel.version)
    print(f"\n{len(paths) - len(failed)} of {len(paths)} wheels pass" + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
