"""A pipeline that keeps too little to train on stops with one line saying what it dropped and where."""

import json
import re

import pytest

from conftest import run_mai
from mai.config import load_config
from mai.data.prepare import prepare_data
from mai.errors import MaiError
from mai.run import RunDir
from mai.stages import init_run

ENGLISH = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate.",
    "Every morning she walks along the river to the market, where she buys bread, cheese and apples.",
    "He wrote a long letter to his brother about the storm that had flooded the village last winter.",
]


# The stages after filtering cannot change these outcomes; skipping them saves ~45 s a test.
NO_DEDUP = ["data.exact_dedup=false", "data.minhash_dedup=false", "data.decontaminate=false", "data.tasks=1"]


def prepare(tmp_path, source: dict):
    fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in source.items())
    config = load_config("tiny", [f"data.sources=[{{{fields}}}]", *NO_DEDUP])
    run = RunDir(tmp_path / "run")
    init_run(run, config)
    return run, lambda: prepare_data(run, config)


def write_files(folder, contents: list[bytes]):
    folder.mkdir()
    for i, content in enumerate(contents):
        (folder / f"doc{i}.txt").write_bytes(content)
    return str(folder)


def test_dropping_every_document_is_one_line_naming_the_step(tmp_path):
    run = tmp_path / "run"
    sources = 'data.sources=[{name = "shakespeare", max_mb = 0.3}]'
    run_mai("init", str(run), "--preset", "tiny", "--set", sources, "--set", 'data.languages=["fr"]')
    result = run_mai("data", "prepare", str(run), check=False)
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"error: the pipeline dropped all (\d+) documents \(language: \1\); "
        rf"the dropped documents are in {re.escape(str(run / 'data' / 'rejected'))}/",
        last,
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert (run / "data" / "rejected" / "language.jsonl").is_file()


def test_an_unknown_language_code_is_refused_before_the_pipeline(tmp_path):
    run = tmp_path / "run"
    run_mai("init", str(run), "--preset", "tiny", "--set", 'data.languages=["en", "klingon"]')
    result = run_mai("data", "prepare", str(run), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "'klingon', which py3langid never identifies" in result.stderr and " fr," in result.stderr
    assert not (run / "data").exists()


def test_text_source_of_binary_files(tmp_path):
    path = write_files(tmp_path / "docs", [b"\x00\x01binary" * 10] * 3)
    run, prepare_run = prepare(tmp_path, {"name": "docs", "kind": "text", "path": path})
    with pytest.raises(MaiError, match=r"dropped all 3 documents \(read_docs binary: 3\)"):
        prepare_run()
    assert len((run.data_dir / "rejected" / "read_docs.jsonl").read_text().splitlines()) == 3


def test_jsonl_records_without_the_text_field(tmp_path):
    (tmp_path / "records").mkdir()
    lines = [json.dumps({"body": text}) for text in ENGLISH]
    (tmp_path / "records" / "part.jsonl").write_text("\n".join(lines) + "\n")
    run, prepare_run = prepare(tmp_path, {"name": "recs", "kind": "jsonl", "path": str(tmp_path / "records")})
    with pytest.raises(MaiError, match=r"dropped all 3 documents \(read_recs no_text: 3\)"):
        prepare_run()
    rejected = [json.loads(line) for line in (run.data_dir / "rejected" / "read_recs.jsonl").read_text().splitlines()]
    assert rejected[0]["metadata"]["detail"] == "no text in field 'text'; the record has 'body'"


def test_one_document_left_counts_what_was_dropped(tmp_path):
    path = write_files(tmp_path / "docs", [ENGLISH[0].encode(), b"\x00binary"])
    _, prepare_run = prepare(tmp_path, {"name": "docs", "kind": "text", "path": path, "quality": "none"})
    with pytest.raises(MaiError, match=r"the pipeline kept only 1 of 2 documents \(read_docs binary: 1\)"):
        prepare_run()


def test_vocab_too_large_for_all_the_data_asks_for_data_not_a_bigger_sample(tmp_path):
    path = write_files(tmp_path / "docs", [text.encode() for text in ENGLISH])
    _, prepare_run = prepare(tmp_path, {"name": "docs", "kind": "text", "path": path, "quality": "none"})
    with pytest.raises(MaiError) as raised:
        prepare_run()
    message = str(raised.value)
    assert re.match(
        r"the tokenizer sample \(all the data\) only supports \d+ tokens, fewer than model.vocab_size 4096", message
    )
    assert message.endswith("; add data or lower model.vocab_size") and "sample_mb" not in message
