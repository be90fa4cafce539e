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
