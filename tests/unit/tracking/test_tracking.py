"""The live training view shows the allocator's evidence (alloc/history_coverage)."""
from rich.console import Console

from dynamo_cli.tracking.tracker import BudgetRow, TrainView, budget_table


def rows():
    return [BudgetRow(prompt_id="math/L1/1+1", snippet="1+1", attempts=8, success_rate=1.0, variance=0.0, allocated=2,
                      successes=2),
            BudgetRow(prompt_id="math/L4/12*34", snippet="12*34", attempts=2, success_rate=0.5, variance=0.5,
                      allocated=6, successes=3)]


def test_budget_table_title_shows_coverage():
    console = Console(record=True, width=200)
    console.print(budget_table(rows(), top=5, coverage=0.5))
    assert "rollout budget (this step), history coverage 50%" in console.export_text()  # export clears the record
    console.print(budget_table(rows(), top=5))  # no metric given: the plain title
    assert "coverage" not in console.export_text()


def test_plain_line_shows_coverage():
    console = Console(record=True, width=300, force_terminal=False)
    with TrainView(console, total=3, start=0, rows=5) as view:
        view.update(1, rows(), {"alloc/history_coverage": 0.5, "alloc/max": 6})
    assert "history_coverage=0.5" in console.export_text()


# ------------------------------------------------------------------------------ rollouts users can read
def rollout(reward: float, advantage: float, completion: str = "85", prompt_id: str = "math/L5/37+48") -> dict:
    return {"step": 2, "prompt_id": prompt_id, "prompt": "37+48=", "completion": completion, "answer": "85", "reward": reward,
            "rule": "last_number", "n_alloc": 4, "advantage": advantage}


def test_rollout_rows_have_the_keys_of_rollouts_jsonl():
    import torch

    from dynamo_cli.tasks.answers import RULES
    from dynamo_cli.tasks.base import Problem
    from dynamo_cli.tracking.rollouts import rollout_rows

    last = RULES.index("last_number")
    problems = [Problem("math/L1/1+2", "1+2", "3", "L1"), Problem("math/L1/2+2", "2+2", "4", "L1")]
    rows = rollout_rows(step=3, problems=problems, prompts=["1+2=", "2+2="], prompt_index=torch.tensor([0, 1, 1]),
                        texts=["3", "4", "5"], rewards=torch.tensor([1.0, 1.0, 0.0]), rules=torch.tensor([last] * 3),
                        counts=torch.tensor([1, 2]), advantages=torch.tensor([0.0, 0.5, -0.5]))
    assert rows[2] == {"step": 3, "prompt_id": "math/L1/2+2", "prompt": "2+2=", "completion": "5", "answer": "4", "reward": 0.0,
                       "rule": "last_number", "n_alloc": 2, "advantage": -0.5}


def test_best_and_worst_by_hand():
    from dynamo_cli.tracking.rollouts import best_and_worst

    rows = [rollout(1.0, 0.5, "a"), rollout(0.0, -0.2, "b"), rollout(1.0, 0.9, "c"), rollout(0.0, -0.7, "d"), rollout(0.0, -0.7, "e")]
    # best: reward 1, the larger advantage (c); worst: reward 0, the lowest advantage, the first of equals (d)
    assert [(label, row["completion"]) for label, row in best_and_worst(rows)] == [("best", "c"), ("worst", "d")]
    assert best_and_worst([]) == []


def test_sample_rows_is_seeded_ordered_and_bounded():
    from dynamo_cli.tracking.rollouts import sample_rows

    rows = [rollout(float(i % 2), 0.0, str(i)) for i in range(40)]
    picked = sample_rows(rows, k=8, seed=0, step=5)
    assert len(picked) == 8 and picked == sample_rows(rows, k=8, seed=0, step=5)
    indices = [int(r["completion"]) for r in picked]
    assert indices == sorted(indices) and len(set(indices)) == 8  # in the step's order, no row twice
    assert picked != sample_rows(rows, k=8, seed=0, step=6)  # another step, another sample
    assert sample_rows(rows[:3], k=8, seed=0, step=5) == rows[:3]


def test_live_view_shows_best_and_worst_literally():
    console = Console(record=True, width=250, force_terminal=True)
    completions = [("best", rollout(1.0, 0.9, "[bold]85[/bold]\nthen more")), ("worst", rollout(0.0, -0.7, "58"))]
    with TrainView(console, total=3, start=0, rows=5) as view:
        view.update(1, rows(), {}, completions)
    text = console.export_text()
    assert "completions (this step)" in text
    assert "[bold]85[/bold]⏎then more" in text and "+0.90" in text and "-0.70" in text  # brackets are text, not markup


def test_plain_lines_show_best_and_worst_every_n_steps():
    console = Console(record=True, width=300, force_terminal=False)
    completions = [("best", rollout(1.0, 0.9, "85\nok")), ("worst", rollout(0.0, -0.7, "58"))]
    with TrainView(console, total=4, start=0, rows=5, completions_every=2) as view:
        view.update(1, rows(), {}, completions)
        first = console.export_text()
        view.update(2, rows(), {}, completions)
        second = console.export_text()
    assert "best" not in first and "train step 1/4" in first
    assert "  best: math/L5/37+48 reward=1.00 rule=last_number adv=+0.90 | 85⏎ok" in second
    assert "  worst: math/L5/37+48 reward=0.00 rule=last_number adv=-0.70 | 58" in second


def test_eval_progress_plain_lines_at_each_quarter():
    from dynamo_cli.tracking.tracker import EvalProgress

    console = Console(record=True, width=200, force_terminal=False)
    with EvalProgress(console) as progress:
        for done in (10, 20, 30, 60, 100):
            progress(done, 100)
    lines = console.export_text().splitlines()
    assert lines == ["eval: 30/100 sequences generated and judged", "eval: 60/100 sequences generated and judged",
                     "eval: 100/100 sequences generated and judged"]


def test_eval_progress_bar_on_a_terminal_and_inside_a_running_view():
    from dynamo_cli.tracking.tracker import EvalProgress

    console = Console(record=True, width=200, force_terminal=True)
    with EvalProgress(console) as progress:
        progress(3, 12)
        assert progress.progress.tasks[0].completed == 3 and progress.progress.tasks[0].total == 12
        own = progress.progress
    assert own.live.is_started is False  # stopped with the eval
    with TrainView(console, total=3, start=0, rows=5) as view:
        with view.eval_progress() as progress:
            progress(6, 12)
            assert [t.description for t in view.progress.progress.tasks] == ["train", "eval"]  # one live display, two bars
        assert [t.description for t in view.progress.progress.tasks] == ["train"]


def test_completions_table_in_wandb_offline(tmp_path):
    import json

    from dynamo_cli.config.logger import LoggerConfig
    from dynamo_cli.tracking.tracker import Tracker

    tracker = Tracker(run_dir=tmp_path, cfg=LoggerConfig(mode="offline"), config={}, job_type="train")
    assert tracker.run is not None
    sample = [rollout(1.0, 0.9, "85"), rollout(0.0, -0.7, "58")]
    tracker.log({"rollout/reward_mean": 0.5}, step=1)
    tracker.log_completions(sample, step=1)
    tracker.close()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/rollouts/completions_1_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(sample[0])
    assert [row[table["columns"].index("completion")] for row in table["data"]] == ["85", "58"]
