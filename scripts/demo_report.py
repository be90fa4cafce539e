"""The demo's summary: test pass@1 after SFT and after RL, per seed, with the gain's 95% CI over seeds.

    python scripts/demo_report.py <demo out dir> [--docs]

Reads <out>/runs.txt (written by scripts/demo.sh: one "label run_dir seconds" line per command) and the eval.json
of each eval run; writes <out>/demo.json and prints the README block. --docs also writes docs/demo.json and
replaces the block between the demo markers in README.md, so the README's figures are always this command's
output (tests/test_docs.py fails when they disagree).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from dynamo_cli.report.stats import mean_ci  # noqa: E402
from dynamo_cli.runtime import atomic  # noqa: E402

START, END = "<!-- demo:start (scripts/demo_report.py writes this block) -->", "<!-- demo:end -->"
METRICS = {"greedy": "greedy pass@1", "pass@1": "sampled pass@1"}


def meta(out: Path) -> dict[str, str]:
    """What scripts/demo.sh recorded before it ran anything: commit, torch threads, extra args."""
    lines = (out / "meta.txt").read_text().splitlines()
    return {key: value for key, _, value in (line.partition(" ") for line in lines)}


def summarise(out: Path) -> dict:
    runs = [line.split() for line in (out / "runs.txt").read_text().splitlines() if line.strip()]
    dirs = {label: Path(run_dir) for label, run_dir, _ in runs}
    seconds = {label: int(s) for label, _, s in runs}
    seeds = sorted(int(label.split("/")[1]) for label in dirs if label.startswith("rl_eval/"))
    config = _yaml(dirs[f"train/{seeds[0]}"] / "config.yaml")
    per_seed = []
    for seed in seeds:
        before = json.loads((dirs[f"sft_eval/{seed}"] / "eval.json").read_text())
        after = json.loads((dirs[f"rl_eval/{seed}"] / "eval.json").read_text())
        per_seed.append({
            "seed": seed,
            "sft": {m: before["overall"][m] for m in METRICS},
            "rl": {m: after["overall"][m] for m in METRICS},
            "levels": {lvl: {"sft": {m: before["levels"][lvl][m] for m in METRICS},
                             "rl": {m: after["levels"][lvl][m] for m in METRICS}} for lvl in before["levels"]},
            "train_seconds": seconds[f"train/{seed}"],
        })
    gains = {}
    for m in METRICS:
        ci = mean_ci([s["rl"][m] - s["sft"][m] for s in per_seed])
        gains[m] = {"mean": ci.mean, "half_width_95": ci.half_width, "seeds": ci.n}
    first, recorded = seeds[0], meta(out)
    first_eval = json.loads((dirs[f"rl_eval/{first}"] / "eval.json").read_text())
    args = f" ({recorded['args']})" if recorded.get("args") else ""
    return {
        "commit": recorded["commit"],
        "command": f'make demo SEEDS="{" ".join(map(str, seeds))}"' + args,
        "torch_threads": int(recorded["threads"]),
        "machine": machine(),  # the SFT's outcome depends on the CPU (demo.sh runs this report right after the runs)
        "test_problems": first_eval["overall"]["problems"],
        "eval_samples": first_eval["n_samples"],
        "rl_steps": config["trainer"]["steps"],
        "rollouts_per_step": config["trainer"]["prompts_per_step"] * config["rollout"]["n"],
        "prompt_pool": config["trainer"]["prompt_pool"],
        "levels": config["task"]["levels"],
        "teacher_slip": config["task"]["teacher_slip"],
        "seconds": {"sft": seconds["sft"], "one_seed": seconds["sft"] + sum(seconds[f"{k}/{first}"] for k in ("sft_eval", "train", "rl_eval")),
                    "all": sum(seconds.values())},
        "per_seed": per_seed,
        "gain": gains,
    }


def machine() -> str:
    """This machine's CPU model and core count, e.g. "AMD EPYC, 2 cores"."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def readme_block(summary: dict) -> str:
    """The README's demo section body: the headline, a per-level table (seed mean) and the per-seed gains."""
    seeds = summary["per_seed"]
    n = len(seeds)
    lines = [START, "", f"Measured by `{summary['command']}` at commit `{summary['commit']}` on "
             f"{summary.get('machine') or 'a CPU the run did not record'} with {summary['torch_threads']} torch thread(s): "
             f"SFT {summary['seconds']['sft']} s; SFT + one RL seed with its two evals {summary['seconds']['one_seed']} s "
             f"end to end. RL: {summary['rl_steps']} steps of {summary['rollouts_per_step']} rollouts over a pool of "
             f"{summary['prompt_pool']} prompts. Test set: {summary['test_problems']} held-out problems, sampled pass@1 "
             f"from {summary['eval_samples']} samples at T = 1.", ""]
    for m, label in METRICS.items():
        g = summary["gain"][m]
        ci = "" if g["half_width_95"] is None else (
            f", 95% CI over {n} seeds [{_points(g['mean'] - g['half_width_95'])}, {_points(g['mean'] + g['half_width_95'])}]")
        mean_sft = sum(s["sft"][m] for s in seeds) / n
        mean_rl = sum(s["rl"][m] for s in seeds) / n
        lines.append(f"- **test {label}: {mean_sft:.3f} after SFT → {mean_rl:.3f} after RL ({_points(g['mean'])} points{ci})**")
    lines += ["", "| test, mean over seeds | " + " | ".join(seeds[0]["levels"]) + " | all |",
              "|---|" + "---|" * (len(seeds[0]["levels"]) + 1)]
    for m, label in METRICS.items():
        for stage in ("sft", "rl"):
            cells = [sum(s["levels"][lvl][stage][m] for s in seeds) / n for lvl in seeds[0]["levels"]]
            overall = sum(s[stage][m] for s in seeds) / n
            lines.append(f"| {label} after {stage.upper()} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {overall:.3f} |")
    lines += ["", "| seed | greedy SFT → RL | sampled SFT → RL | train s |", "|---|---|---|---|"]
    for s in seeds:
        lines.append(f"| {s['seed']} | {s['sft']['greedy']:.3f} → {s['rl']['greedy']:.3f} ({_points(s['rl']['greedy'] - s['sft']['greedy'])}) | "
                     f"{s['sft']['pass@1']:.3f} → {s['rl']['pass@1']:.3f} ({_points(s['rl']['pass@1'] - s['sft']['pass@1'])}) | "
                     f"{s['train_seconds']} |")
    lines += ["", END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo's output dir (holds runs.txt)")
    parser.add_argument("--docs", action="store_true", help="also write docs/demo.json and README.md's demo block")
    args = parser.parse_args()
    summary = summarise(args.out)
    text = json.dumps(summary, indent=1) + "\n"
    atomic.write_text(args.out / "demo.json", text)
    block = readme_block(summary)
    if args.docs:
        atomic.write_text(REPO / "docs" / "demo.json", text)
        readme = REPO / "README.md"
        atomic.write_text(readme, replace_block(readme.read_text(), block))
    print("\n" + block)
    print(f"\nsummary: {args.out / 'demo.json'}" + (" (and docs/demo.json, README.md)" if args.docs else ""))


if __name__ == "__main__":
    main()
