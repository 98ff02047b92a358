"""`mai eval compare` on hand-written eval.json files: column labels, --chart checks, and files that are not eval results."""

import json

import pytest

from conftest import run_mai
from mai.errors import MaiError
from mai.eval.compare import compare
from mai.eval.record import read_eval
from mai.run_files import EvalRecord


def eval_record(score: float) -> dict:
    """The shape `mai eval` writes, with one task."""
    task = {"metric": "acc", "score": score, "baseline": 0.25, "centered": (score - 0.25) / 0.75}
    return {
        "model": "run",
        "checkpoint": "step_000010",
        "settings": {"limit": 3, "precision": "fp32", "tasks": ["arc_easy"], "device": "cpu"},
        "bpb": None,
        "tasks": {"arc_easy": task},
        "core": task["centered"],
    }


def write_run(path, score: float = 0.5):
    path.mkdir(parents=True)
    (path / "config.toml").write_text("")
    (path / "eval.json").write_text(json.dumps(eval_record(score)))
    return path


def test_runs_with_the_same_name_each_get_a_column(tmp_path):
    runs = [write_run(tmp_path / "a/x/r", 0.25), write_run(tmp_path / "b/x/r", 0.5), write_run(tmp_path / "q", 0.75)]
    chart = tmp_path / "chart.svg"
    result = run_mai("eval", "compare", *map(str, runs), "--chart", str(chart))
    header, arc_easy, *_ = result.stdout.splitlines()
    assert header.split()[1:] == ["a/x/r", "b/x/r", "q"]
    assert arc_easy.split()[1:] == ["0.2500", "0.5000", "0.7500"]
    assert f"chart: {chart}" in result.stdout and chart.read_text().startswith("<?xml")


def test_the_same_run_twice_is_an_error(tmp_path, monkeypatch):
    run = write_run(tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    for paths in (["r", "r"], ["r", "./r/eval.json"], [str(run), "r"]):
        with pytest.raises(MaiError, match="are the same evaluation"):
            compare([tmp_path / p for p in paths], tmp_path / "chart.png")


def test_a_bad_chart_path_fails_before_any_eval_json_is_read(tmp_path):
    (tmp_path / "emptydir").mkdir()
    missing = [str(tmp_path / "no_run_1"), str(tmp_path / "no_run_2")]
    for chart, message in [
        ("out.txt", "--chart must end in .png, .svg, .pdf, not 'out.txt'"),
        (str(tmp_path / "nonexistdir/x.png"), f"folder {tmp_path / 'nonexistdir'} does not exist"),
        (str(tmp_path / "emptydir"), f"--chart {tmp_path / 'emptydir'} is a directory"),
    ]:
        result = run_mai("eval", "compare", *missing, "--chart", chart, check=False)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}")
        assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "emptydir"]
    assert list((tmp_path / "emptydir").iterdir()) == []


def test_paths_that_are_not_eval_results_say_what_was_expected(tmp_path):
    run = write_run(tmp_path / "run")
    (tmp_path / "afile").write_text("hello\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "unevaluated").mkdir()
    (tmp_path / "unevaluated/config.toml").write_text("")
    for path, messages in [
        (
            "afile",
            ["afile is not an eval result (not readable as JSON: ", "expected an eval.json written by `mai eval`"],
        ),
        ("folder", ["folder is neither a run directory nor an eval.json file"]),
        ("unevaluated", [f"unevaluated has no eval.json yet; run `mai eval {tmp_path / 'unevaluated'}` first"]),
        ("missing", ["missing does not exist"]),
    ]:
        with pytest.raises(MaiError) as error:
            compare([run, tmp_path / path], tmp_path / "chart.png")
        assert all(m in str(error.value) for m in messages) and "delete it" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: {}, "missing key 'checkpoint'"),
        (lambda r: [r], "not a JSON object"),
        (lambda r: r | {"tasks": None}, "tasks: Input should be a valid dictionary"),
        (lambda r: {k: v for k, v in r.items() if k != "tasks"}, "missing key 'tasks'"),
        (lambda r: r | {"settings": {}}, "missing key 'settings.tasks'"),
        (lambda r: r | {"core": "high"}, "core: Input should be a valid number"),
        (lambda r: r | {"bpb": {}}, "missing key 'bpb.val_bpb'"),
        (lambda r: r | {"tasks": {"arc_easy": {"metric": "acc"}}}, "missing key 'tasks.arc_easy.score'"),
    ],
)
def test_an_eval_json_of_the_wrong_shape_names_the_file_and_the_key(tmp_path, change, problem):
    run = write_run(tmp_path / "run")
    (run / "eval.json").write_text(json.dumps(change(eval_record(0.5))))
    with pytest.raises(MaiError) as error:
        read_eval(run)
    assert (
        str(error.value)
        == f"{run / 'eval.json'} is not an eval result ({problem}); rerun `mai eval {run}` to rewrite it"
    )


def test_an_empty_eval_json_is_a_one_line_error(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "eval.json").write_text("{}")
    (tmp_path / "x.json").write_text(json.dumps(eval_record(0.5)))
    result = run_mai(
        "eval", "compare", str(run), str(tmp_path / "x.json"), "--chart", str(tmp_path / "c.png"), check=False
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {run / 'eval.json'} is not an eval result (missing key 'checkpoint'); " + (
        f"rerun `mai eval {run}` to rewrite it\n"
    )


def test_a_score_just_below_chance_prints_as_zero_not_minus_zero(tmp_path):
    from mai.eval.runner import format_results

    record = eval_record(0.249999)
    record["tasks"]["arc_easy"] |= {"examples": 3, "examples_per_s": 1.0}
    table = format_results(EvalRecord.model_validate(record))
    assert "+0.0000" in table and "-0.0000" not in table
    runs = [write_run(tmp_path / "a", 0.249999), write_run(tmp_path / "b", 0.5)]
    table = compare(runs, tmp_path / "chart.png")
    assert "-0.0000" not in table and "+0.0000" in table


def test_the_eval_table_heads_its_columns_as_the_report_does():
    """eval.json's `baseline` is each task's chance score: both the table and report.md call it chance."""
    from mai.eval.runner import format_results
    from mai.report import _eval_section

    data = eval_record(0.5)
    data["tasks"]["arc_easy"] |= {"examples": 3, "examples_per_s": 1.0}
    record = EvalRecord.model_validate(data)
    table = next(line for line in format_results(record).splitlines() if " task " in line)
    report = next(line for line in _eval_section(record).splitlines() if line.startswith("| task "))
    columns = [c.strip() for c in table.strip("┃ ").split("┃")]
    assert (
        columns[:5]
        == [c.strip() for c in report.strip("| ").split("|")]
        == [
            "task",
            "metric",
            "score",
            "chance",
            "centred",
        ]
    )
