"""The real-model demo's summary: held-out pass@1 and answer-format rate before and after RL, per method and seed.

    python scripts/real_demo_report.py <outputs/real_demo/<recipe>> [--docs]

Reads each run that scripts/real_demo.sh finished (<method>/seed<k>/ with eval_before.json, eval.json, config.yaml and
seconds.txt), writes <out>/real_demo.json and prints README's block. The headline is DynaMO (the `dynamo` runs); every
method's seeds are in `methods`. --docs also writes docs/real_demo.json and replaces the block between the real-demo
markers in README.md (tests/unit/test_docs.py fails when the two disagree).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "src"))
from demo_report import machine  # noqa: E402

from dynamo_cli.report.stats import mean_ci  # noqa: E402
from dynamo_cli.runtime import atomic  # noqa: E402

START, END = "<!-- real_demo:start (scripts/real_demo_report.py writes this block) -->", "<!-- real_demo:end -->"
HEADLINE = "dynamo"
METRICS = {"greedy": "greedy", "sampled": "pass@1"}  # summary key -> eval.json's overall key
# the answer in the form the prompt asks for (\boxed{}) or with an explicit cue ("the answer is"), not the fallback
FORMAT_RULES = ("boxed", "answer_cue")
LABELS = {"dynamo": "DynaMO (allocator=variance modulator=dynamo)", "grpo": "GRPO (allocator=uniform modulator=none)"}


def format_rate(result: dict) -> float:
    """The share of greedy completions whose answer was given in the asked format (FORMAT_RULES)."""
    problems = result["problems"]
    return sum(p["greedy_rule"] in FORMAT_RULES for p in problems) / len(problems)


def read_run(run: Path) -> dict:
    before = json.loads((run / "eval_before.json").read_text())
    after = json.loads((run / "eval.json").read_text())
    meta = {k: v for k, _, v in (line.partition(" ") for line in (run / "seconds.txt").read_text().splitlines())}
    return {"seed": int(run.name.removeprefix("seed")), "commit": meta["commit"], "threads": int(meta["threads"]),
            "seconds": int(meta["seconds"]), "problems": after["overall"]["problems"],
            **{m: {"before": before["overall"][key], "after": after["overall"][key]} for m, key in METRICS.items()},
            "format_rate": {"before": format_rate(before), "after": format_rate(after)}}


def gain_stats(runs: list[dict], metric: str) -> dict:
    """Seed means before and after, the mean gain and its 95% CI over seeds (Student t; null with one seed)."""
    n = len(runs)
    ci = mean_ci([r[metric]["after"] - r[metric]["before"] for r in runs])
    return {"before": sum(r[metric]["before"] for r in runs) / n, "after": sum(r[metric]["after"] for r in runs) / n,
            "gain": ci.mean, "ci95": None if ci.half_width is None else [ci.mean - ci.half_width, ci.mean + ci.half_width]}


def summarise(out: Path) -> dict:
    methods: dict[str, list[dict]] = {}
    for method_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        runs = [read_run(run) for run in sorted(method_dir.glob("seed*"), key=lambda p: int(p.name[4:]))
                if (run / "seconds.txt").is_file() and (run / "eval.json").is_file()]
        if runs:
            methods[method_dir.name] = runs
    if HEADLINE not in methods:
        raise SystemExit(f"{out}: no finished {HEADLINE} run (scripts/real_demo.sh writes <method>/seed<k>/)")
    head = methods[HEADLINE]
    config = _yaml(out / HEADLINE / f"seed{head[0]['seed']}" / "config.yaml")
    commits = sorted({r["commit"] for runs in methods.values() for r in runs})
    threads = sorted({r["threads"] for runs in methods.values() for r in runs})
    chain_sum = config["task"]["config"]["chain_sum"]
    return {
        "commit": ",".join(commits),
        "command": f'make real-demo SEEDS="{" ".join(str(r["seed"]) for r in head)}"',
        "machine": machine(),
        "torch_threads": threads[0] if len(threads) == 1 else threads,
        "model": f"SmolLM2-135M-Instruct, LoRA r {config['model']['lora']['r']} (fp32)",
        "task": (f"reasoning_gym chain_sum, {chain_sum['min_terms']} terms of {chain_sum['min_digits']} digit, chat format, "
                 f"last-number fallback, {config['task']['num_train']} training problems"),
        "test_problems": head[0]["problems"],
        "eval_samples": config["eval"]["n_samples"],
        "rl_steps": config["trainer"]["steps"],
        "rollouts_per_step": config["trainer"]["prompts_per_step"] * config["rollout"]["n"],
        "lr": config["optim"]["lr"],
        "seeds": [r["seed"] for r in head],
        **{m: gain_stats(head, m) for m in METRICS},
        "format_rate": {k: sum(r["format_rate"][k] for r in head) / len(head) for k in ("before", "after")},
        "minutes_per_seed": round(max(r["seconds"] for r in head) / 60, 1),
        "methods": {name: {"seeds": [r["seed"] for r in runs], **{m: gain_stats(runs, m) for m in METRICS},
                           "format_rate": {k: sum(r["format_rate"][k] for r in runs) / len(runs) for k in ("before", "after")},
                           "per_seed": runs}
                    for name, runs in methods.items()},
    }


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _line(stats: dict, n: int) -> str:
    ci = "" if stats["ci95"] is None else f", 95% CI over {n} seeds [{_points(stats['ci95'][0])}, {_points(stats['ci95'][1])}]"
    return f"{stats['before']:.3f} → {stats['after']:.3f} ({_points(stats['gain'])} points{ci})"


def readme_block(summary: dict) -> str:
    threads = summary["torch_threads"]
    lines = [START, "", f"Measured by `{summary['command']}` at commit `{summary['commit']}` on {summary['machine']} with "
             f"{threads} torch thread(s). {summary['model']}; {summary['task']}; {summary['rl_steps']} RL steps of "
             f"{summary['rollouts_per_step']} rollouts (lr {summary['lr']}); test: {summary['test_problems']} held-out "
             f"problems, sampled pass@1 from {summary['eval_samples']} samples at T = 1. At most "
             f"{summary['minutes_per_seed']} min per seed, both evals included.", ""]
    n = len(summary["seeds"])
    lines += [f"- **test greedy pass@1: {_line(summary['greedy'], n)}**",
              f"- **test sampled pass@1: {_line(summary['sampled'], n)}**",
              f"- greedy answers in the asked format (`\\boxed{{}}` or \"the answer is\"): {summary['format_rate']['before']:.2f} → "
              f"{summary['format_rate']['after']:.2f} (the rest is scored by the last number they contain)", "",
              "| method, seed | greedy before → after | sampled before → after | format rate | minutes |", "|---|---|---|---|---|"]
    for name, method in summary["methods"].items():
        for r in method["per_seed"]:
            lines.append(f"| {name} {r['seed']} | {r['greedy']['before']:.3f} → {r['greedy']['after']:.3f} "
                         f"({_points(r['greedy']['after'] - r['greedy']['before'])}) | {r['sampled']['before']:.3f} → "
                         f"{r['sampled']['after']:.3f} ({_points(r['sampled']['after'] - r['sampled']['before'])}) | "
                         f"{r['format_rate']['before']:.2f} → {r['format_rate']['after']:.2f} | {r['seconds'] / 60:.1f} |")
    lines.append("")
    for name, method in summary["methods"].items():
        k = len(method["seeds"])
        lines.append(f"- {LABELS.get(name, name)}, {k} seed(s): greedy {_line(method['greedy'], k)}; sampled "
                     f"{_line(method['sampled'], k)}")
    lines += ["", END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the recipe's output dir (outputs/real_demo/<recipe>)")
    parser.add_argument("--docs", action="store_true", help="also write docs/real_demo.json and README.md's real-demo block")
    args = parser.parse_args()
    summary = summarise(args.out)
    text = json.dumps(summary, indent=1) + "\n"
    atomic.write_text(args.out / "real_demo.json", text)
    block = readme_block(summary)
    if args.docs:
        atomic.write_text(REPO / "docs" / "real_demo.json", text)
        readme = REPO / "README.md"
        atomic.write_text(readme, replace_block(readme.read_text(), block))
    print("\n" + block)
    print(f"\nsummary: {args.out / 'real_demo.json'}" + (" (and docs/real_demo.json, README.md)" if args.docs else ""))


if __name__ == "__main__":
    main()
