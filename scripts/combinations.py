"""The combination matrix: every option of every part of a train step, covered pairwise, and what composes.

Thirteen factors (allocator, modulator, advantage, policy loss, sampler, critic, schedule, loss aggregation, importance
sampling, KL, modulator scope, dtype, LoRA), each with every option the code registers. `cases()` picks a small set of
runs in which every pair of options of two factors meets at least once: a greedy all-pairs cover (each new case the
candidate, of a few seeded random fillings, that covers the most pairs not yet covered) over the pairs that can run
together, plus one case for each pair that cannot, which the config must refuse in one line naming it.

    python scripts/combinations.py            # print each case and what the config says of it
    python scripts/combinations.py --docs     # rewrite docs/methods.md's generated table (between its markers)

tests/e2e/test_combinations.py trains every case 2 steps on the tiny model (or sees it refused before the first step)
and checks that the table in docs/methods.md is what this script writes.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "methods.md"
START, END = "<!-- combinations:start -->", "<!-- combinations:end -->"
SEED = 0  # of the greedy cover's random fillings: the cases are a pure function of the factors
CANDIDATES = 30  # random fillings tried per new case


@functools.lru_cache(maxsize=1)
def factors() -> dict[str, list[tuple[str, list[str]]]]:
    """factor -> [(option, the overrides that select it)], every option the code registers (importance sampling: the
    levels the run's engine, rollout=hf, can correct; the config refuses the others for every case)."""
    from dynamo_cli.algo.advantages.base import ESTIMATORS
    from dynamo_cli.algo.importance import LEVELS
    from dynamo_cli.algo.terms.base import AGGREGATIONS, POLICY_LOSSES
    from dynamo_cli.allocation.base import ALLOCATORS
    from dynamo_cli.config.algorithm import AlgorithmConfig
    from dynamo_cli.models.critic import CRITICS
    from dynamo_cli.modulation.base import MODULATORS, SCOPES
    from dynamo_cli.sampling.base import SAMPLERS

    corrections = [(f"is_{level}", [f"algorithm.rollout_is={level}"]) for level in LEVELS if level != "none"]
    if "rollout_mask" in AlgorithmConfig.__dataclass_fields__:  # masked importance sampling, where this tree has it
        corrections += [(f"mask_{level}", [f"algorithm.rollout_mask={level}"]) for level in LEVELS if level != "none"]
    # the values that exist for the rollout engine every case uses (rollout=hf): an engine that reports no log-probs
    # of its own has nothing to correct, and the config says so for any case
    corrections = [("none", []), *[(name, o) for name, o in corrections if verdict_of(o) == "runs"]]
    return {
        "allocator": [(name, [f"allocator={name}"]) for name in ALLOCATORS.names()],
        "modulator": [(name, [f"modulator={name}"]) for name in MODULATORS.names()],
        "advantage": [(name, [f"algorithm.advantage={name}"]) for name in ESTIMATORS.names()],
        "policy_loss": [(name, [f"algorithm.policy_loss={name}"]) for name in POLICY_LOSSES.names()],
        "sampler": [(name, [f"sampler={name}"]) for name in SAMPLERS.names()],
        "critic": [(name, [f"critic={name}"]) for name in CRITICS.names()],
        "schedule": [("on_policy", []), ("one_step_off", ["rollout.one_step_off_policy=true"])],
        "loss_agg": [(name, [f"algorithm.loss_agg={name}"]) for name in AGGREGATIONS],
        "importance": corrections,
        "kl": [("off", []), ("k3", ["algorithm.kl_coef=0.05"])],
        "scope": [(name, [f"modulator.scope={name}"]) for name in SCOPES],
        "dtype": [(name, [f"model.dtype={name}"]) for name in ("float32", "bfloat16")],
        "lora": [("off", []), ("on", ["model.lora.enabled=true", "model.lora.r=4"])],
    }


def conflict(a: tuple[str, str], b: tuple[str, str]) -> str | None:
    """The override a refusal of options a and b (factor, option) must name, when they cannot run together; else None.
    The config refuses them (each a check_run of its schema): the matrix checks that it does, in one line."""
    pair = dict([a, b])
    if set(pair) == {"advantage", "critic"}:
        if pair["advantage"] == "gae" and pair["critic"] == "none":
            return "algorithm.advantage=gae"
        if pair["advantage"] != "gae" and pair["critic"] != "none":
            return f"critic={pair['critic']}"
    if set(pair) == {"schedule", "critic"} and pair["schedule"] == "one_step_off" and pair["critic"] != "none":
        return "rollout.one_step_off_policy=true"
    return None


Case = dict  # factor -> option
Refused = tuple  # (case, the pair ((factor, option), (factor, option)) no running case holds, the overrides its refusal may name)


class Cover:
    """The pairwise cover of `options` (factor -> its options) under `conflict`, every conflict looked up once."""

    def __init__(self, options: dict[str, list[str]]):
        self.options, self.names = options, list(options)
        self.clash = {frozenset([(f, x), (g, y)]): named for f, g in itertools.combinations(self.names, 2)
                      for x in options[f] for y in options[g] if (named := conflict((f, x), (g, y))) is not None}

    def fits(self, option: tuple[str, str], case: Case) -> bool:
        return not any(frozenset([option, other]) in self.clash for other in case.items())

    def completion(self, case: Case) -> Case | None:
        """A case with `case`'s options and an option of every other factor, all running together; None if there is
        none (a pair can conflict through a third factor: gae needs a critic, one_step_off_policy refuses one)."""
        if any(frozenset(pair) in self.clash for pair in itertools.combinations(case.items(), 2)):
            return None
        return self.extend(case)

    def extend(self, case: Case) -> Case | None:
        """`completion` of a case whose options run together: backtracking over the factors it lacks."""
        rest = [f for f in self.names if f not in case]
        if not rest:
            return dict(case)
        for option in self.options[rest[0]]:
            if self.fits((rest[0], option), case) and (found := self.extend({**case, rest[0]: option})) is not None:
                return found
        return None

    def pairs(self) -> list[tuple]:
        """Every pair of options of two factors, in a fixed order."""
        return [tuple(sorted([(f, x), (g, y)])) for f, g in itertools.combinations(self.names, 2)
                for x in self.options[f] for y in self.options[g]]

    def all_pairs(self, *, seed: int = SEED, candidates: int = CANDIDATES) -> list[Case]:
        """A greedy cover: every pair that some running case holds is in at least one case, and every case runs
        together. Each new case starts from the first pair not yet covered and is the best of `candidates` seeded random
        fillings (each factor takes, among the options that fit, one covering the most new pairs). Deterministic."""
        uncovered = {p for p in self.pairs() if self.completion(dict(p)) is not None}
        rng, cases = random.Random(seed), []
        while uncovered:
            first = min(uncovered)
            best, gain = None, -1
            for _ in range(candidates):
                case: Case = dict(first)
                for factor in rng.sample([f for f in self.names if f not in case], len(self.names) - len(case)):
                    fits = [x for x in self.options[factor] if self.fits((factor, x), case)]
                    rng.shuffle(fits)
                    new = [sum(tuple(sorted([(factor, x), other])) in uncovered for other in case.items()) for x in fits]
                    # an option that fits now but leaves a later factor no option: the completion check keeps it out
                    ranked = sorted(zip(new, range(len(fits)), strict=True), reverse=True)
                    choice = next((fits[i] for _, i in ranked if self.extend({**case, factor: fits[i]}) is not None), None)
                    if choice is None:
                        break
                    case[factor] = choice
                if len(case) == len(self.names) and (new := len(pairs_of(case) & uncovered)) > gain:
                    best, gain = case, new
            if best is None:
                raise RuntimeError(f"no running case holds {first}")
            cases.append({f: best[f] for f in self.names})
            uncovered -= pairs_of(best)
        return cases

    def refused(self, valid: list[Case]) -> list[Refused]:
        """One case per pair of options that no running case holds: a running case with the two swapped in, the one
        whose other options clash with neither (so its one-line refusal is about this pair)."""
        out = []
        for pair in self.pairs():
            if self.completion(dict(pair)) is not None:
                continue
            swapped = [{**c, **dict(pair)} for c in valid]
            clashes = [{n for a, b in itertools.combinations(c.items(), 2) if (n := self.clash.get(frozenset([a, b])))}
                       for c in swapped]
            case, named = min(zip(swapped, clashes, strict=True), key=lambda cn: len(cn[1]))
            out.append((case, pair, sorted(named)))
        return out


def pairs_of(case: Case) -> set:
    return {tuple(sorted(p)) for p in itertools.combinations(case.items(), 2)}


def runs_together(case: Case) -> bool:
    return all(conflict(a, b) is None for a, b in itertools.combinations(case.items(), 2))


def cases() -> tuple[list[Case], list[Refused]]:
    """(the cases that must train, the cases that must be refused)."""
    cover = Cover({f: [name for name, _ in opts] for f, opts in factors().items()})
    valid = cover.all_pairs()
    return valid, cover.refused(valid)


def overrides(case: Case) -> list[str]:
    table = {f: dict(opts) for f, opts in factors().items()}
    return [o for f, option in case.items() for o in table[f][option]]


# the tiny model from the SFT checkpoint, 2 steps of 4 prompts x 4 rollouts, explicit batch sizes, two difficulty tags
# (sampler=curriculum orders by them), a short eval
RUN = ["logger=none", "device=cpu", "trainer.steps=2", "trainer.prompts_per_step=4", "rollout.n=4", "algorithm.mini_batches=2", "algorithm.micro_batch_size=4", "rollout.max_batch_size=16",
       "task.levels=[L1,L2]", "task.num_train=200", "trainer.prompt_pool=8", "trainer.eval_every=0", "trainer.save_every=0",
       "eval.max_problems=2", "eval.n_samples=0", "optim.lr=1e-3"]


def verdict(case: Case) -> str:
    """What the config says of the case: "runs", or "refused: <its one line>"."""
    return verdict_of(overrides(case))


def verdict_of(extra: list[str]) -> str:
    """What the config says of the run's settings plus `extra`: "runs", or "refused: <its one line>"."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import compose_schema

    from dynamo_cli.config.base import ConfigError
    from dynamo_cli.errors import DynamoError

    try:
        compose_schema("train", [*RUN, *extra])
    except (ConfigError, DynamoError) as error:
        return f"refused: {error}"
    return "runs"


def table() -> str:
    """The generated section of docs/methods.md: the conflicts, then every case of the cover."""
    valid, refused = cases()
    names = list(factors())
    lines = [f"{len(valid)} cases cover every pair of options that can run together (generated by "
             "[`scripts/combinations.py`](../scripts/combinations.py); `tests/e2e/test_combinations.py` trains each "
             "2 steps, and checks this table); the pairs that cannot are refused before anything runs:", "",
             "| options | the refusal |", "|---|---|"]
    for case, pair, _ in refused:
        lines.append(f"| {' + '.join(f'`{f}={x}`' for f, x in pair)} | {verdict(case).removeprefix('refused: ')} |")
    lines += ["", "| # | " + " | ".join(names) + " |", "|--:|" + "---|" * len(names)]
    lines += [f"| {i} | " + " | ".join(case[f] for f in names) + " |" for i, case in enumerate(valid, 1)]
    return "\n".join(lines)


def write_docs() -> None:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/combinations.py", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true", help="rewrite docs/methods.md's combination table")
    args = parser.parse_args(argv)
    if args.docs:
        write_docs()
        return
    valid, refused = cases()
    for i, case in enumerate(valid, 1):
        print(i, " ".join(f"{f}={x}" for f, x in case.items()), "->", verdict(case))
    for case, pair, named in refused:
        print("refused", pair, "must name one of", named, "->", verdict(case))


if __name__ == "__main__":
    main()
