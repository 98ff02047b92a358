"""report.md before training: what the run has so far, without empty plots or a 0% change."""

from conftest import copy_run
from mai.report import write_report
from mai.run import append_metrics
from mai.run_files import MetricsRecord


def test_report_of_an_untrained_run_says_so(prepared_run, tmp_path):
    run = copy_run(prepared_run, tmp_path / "run")
    text = write_report(run)
    assert "No training metrics yet." in text and "## Training" not in text
    assert "![Documents kept after each data pipeline step](data_steps.png)" in text
    assert (run.path / "data_steps.png").is_file() and not (run.path / "loss.png").exists()

    append_metrics(run, MetricsRecord(step=0, val_loss=8.3, val_bpb=3.5667))  # what training logs before step 1
    text = write_report(run)
    assert "Not trained yet: validation bits per byte 3.5667 at step 0." in text and "changed by" not in text
