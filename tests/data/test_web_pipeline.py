"""The data pipeline on a web-like input built from real text, with the faults web data has.

Distinct documents are King James Bible chapters (JSONL); injected are exact copies, near-duplicates
with 1–10% of words edited, non-English text (spaCy's example sentences), boilerplate-heavy HTML
pages, binary, invalid-UTF-8 and empty files, a truncated gzip file, and a source whose every
document is one verse repeated (which the repetition filter drops).
"""

import gzip
import importlib
import json
import random
import re

import pytest

from conftest import PIPELINE_STAGES, run_mai
from mai.data.corpus import bible
from mai.data.prepare import read_documents
from mai.run import RunDir

N_DISTINCT, N_EXACT, N_NEAR = 240, 24, 100
NAV = "".join(f'<li><a href="/section/{i}">Section {i} menu link</a></li>' for i in range(60))


def chapters() -> list[tuple[str, str]]:
    docs = []
    for book, text in bible():
        verses = text.split("\n")
        docs += [(f"{book}-{i}", "\n".join(verses[i : i + 25])) for i in range(0, len(verses) - 24, 25)]
    return docs


def edit_words(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(fraction * len(words)))):
        words[i] = rng.choice(["lamp", "river", "stone", "bread", "silver", "mountain", "garden"])
    return " ".join(words)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def foreign_documents() -> list[str]:
    docs = []
    for language in ("fr", "de", "es"):
        sentences = importlib.import_module(f"spacy.lang.{language}.examples").sentences
        docs.append(" ".join(sentences * 3))
    return docs


@pytest.fixture(scope="module")
def web_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    rng = random.Random(0)
    pool = chapters()
    rng.shuffle(pool)
    distinct = pool[:N_DISTINCT]
    records = [{"id": name, "text": text} for name, text in distinct]
    exact = [{"id": f"copy-{name}", "text": text} for name, text in distinct[:N_EXACT]]
    near = [
        {"id": f"near-{name}", "text": edit_words(text, 10 ** rng.uniform(-2, -1), rng)}  # 1–10%, log-uniform
        for name, text in distinct[N_EXACT : N_EXACT + N_NEAR]
    ]
    foreign = [{"id": f"foreign-{i}", "text": text} for i, text in enumerate(foreign_documents())]
    contact = "Write to john.doe@example.com or connect to 203.0.113.9 for the audio version."
    pii = [{"id": "pii-doc", "text": pool[N_DISTINCT + 10][1] + "\n" + contact}]
    (root / "jsonl").mkdir()
    for index, part in enumerate([records, exact + near + foreign + pii]):
        with gzip.open(root / "jsonl" / f"part{index}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    truncated = gzip.compress(("\n".join(json.dumps(r) for r in records[:20]) + "\n").encode())
    (root / "jsonl" / "truncated.jsonl.gz").write_bytes(truncated[: len(truncated) // 2])

    pages = root / "pages"
    pages.mkdir()
    for name, text in pool[N_DISTINCT : N_DISTINCT + 5]:
        body = "".join(f"<p>{line}</p>" for line in text.split("\n"))
        html = f"<html><head><title>{name}</title></head><body><nav><ul>{NAV}</ul></nav><article><h1>{name}</h1>{body}</article><footer>Copyright, privacy policy, cookie settings, contact us</footer></body></html>"
        (pages / f"{name}.html").write_text(html)
    (pages / "binary.html").write_bytes(bytes(range(256)) * 8)
    (pages / "invalid.html").write_bytes(b"<html><body>caf\xe9 \xff\xfe broken</body></html>" * 20)
    (pages / "empty.html").write_bytes(b"")

    notes = root / "notes"
    notes.mkdir()
    for name, text in pool[N_DISTINCT + 20 : N_DISTINCT + 23]:
        (notes / f"{name}.txt").write_text((text.split("\n")[0] + "\n") * 40)

    sources = (
        f'[{{name = "web", kind = "jsonl", path = "{root / "jsonl"}"}}, '
        f'{{name = "pages", kind = "html", path = "{pages}"}}, '
        f'{{name = "notes", kind = "text", path = "{notes}"}}]'
    )
    run = RunDir(root / "run")
    run_mai(
        "init", str(run.path), "--preset", "tiny", "--set", f"data.sources={sources}", "--set", "model.vocab_size=2048"
    )
    prepared = run_mai("data", "prepare", str(run.path))
    kept = dict(read_documents(run.data_dir / "work" / "clean"))
    return {
        "run": run,
        "stderr": prepared.stderr,
        "kept": kept,
        "distinct": distinct,
        "exact": exact,
        "near": near,
        "pages": pool[N_DISTINCT : N_DISTINCT + 5],
    }


def rejected(run: RunDir, step: str) -> list[dict]:
    path = run.data_dir / "rejected" / f"{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_exact_copies_are_all_removed(web_run):
    kept = web_run["kept"]
    for copy in web_run["exact"]:
        original = copy["id"].removeprefix("copy-")
        assert (copy["id"] in kept) + (original in kept) <= 1, original


def test_near_duplicates_removed_with_high_recall_and_few_distinct_lost(web_run):
    kept, by_id = web_run["kept"], dict(web_run["distinct"])
    pairs = [(n, n["id"].removeprefix("near-")) for n in web_run["near"]]
    similar = [(n, o) for n, o in pairs if jaccard(n["text"], by_id[o]) >= 0.8]
    assert len(similar) >= 25, "the injected edits should leave many pairs above Jaccard 0.8"
    caught = [(n, o) for n, o in similar if (n["id"] in kept) + (o in kept) <= 1]
    assert len(caught) / len(similar) >= 0.95
    injected = {o for _, o in pairs} | {c["id"].removeprefix("copy-") for c in web_run["exact"]}
    removed_by_dedup = {r["id"] for step in ("exact_dedup", "minhash_dedup") for r in rejected(web_run["run"], step)}
    lost = [name for name, _ in web_run["distinct"] if name not in injected and name in removed_by_dedup]
    assert len(lost) < 0.01 * (len(web_run["distinct"]) - len(injected))


def test_non_english_text_is_dropped_with_its_language(web_run):
    dropped = {r["id"]: r["metadata"] for r in rejected(web_run["run"], "language")}
    for i, language in enumerate(("fr", "de", "es")):
        assert dropped[f"foreign-{i}"]["language"] == language
        assert dropped[f"foreign-{i}"]["filter_reason"] == "wrong_language"


def test_email_and_ip_addresses_are_replaced(web_run):
    text = web_run["kept"]["pii-doc"]
    assert "Write to <EMAIL> or connect to <IP> for the audio version." in text
    assert "john.doe" not in text and "203.0.113.9" not in text


def test_html_boilerplate_is_removed(web_run):
    pages = [(name, text) for name, text in web_run["pages"]]
    extracted = [text for doc_id, text in web_run["kept"].items() if doc_id.endswith(".html")]
    assert extracted, "at least one page should survive extraction and the quality rules"
    for text in extracted:
        assert "menu link" not in text and "cookie settings" not in text
        assert any(text.split("\n")[-1][:40] in page for _, page in pages)


def test_bad_files_are_skipped_with_a_reason(web_run):
    reasons = {
        r["id"].rsplit("/", 1)[-1]: r["metadata"]["filter_reason"] for r in rejected(web_run["run"], "read_pages")
    }
    assert reasons == {"binary.html": "binary", "invalid.html": "invalid_utf8", "empty.html": "empty"}
    truncated = rejected(web_run["run"], "read_web")
    assert [r["metadata"]["filter_reason"] for r in truncated] == ["unreadable"]
    assert truncated[0]["id"].endswith("truncated.jsonl.gz")


def test_console_gets_one_line_per_stage_even_from_dedup_workers(web_run):
    # exact dedup's filter draws a bare tqdm bar per task in each worker process when duplicates exist
    assert [line.split(",")[0] for line in web_run["stderr"].splitlines()] == [
        f"data: {stage}" for stage in (*PIPELINE_STAGES, "shards")
    ], web_run["stderr"]


def test_stats_table_reports_every_step(web_run):
    table = run_mai("data", "stats", str(web_run["run"].path)).stdout
    for step in ("language", "Gopher Quality", "exact-deduplication", "MinHash", "decontaminate"):
        assert step in table
    assert "wrong_language 3" in table


def test_dedup_rejects_carry_their_reason(web_run):
    run = web_run["run"]
    for step, reason in (("exact_dedup", "exact_duplicate"), ("minhash_dedup", "near_duplicate")):
        records = rejected(run, step)
        assert records and {r["metadata"]["filter_reason"] for r in records} == {reason}
        assert [row.reasons for row in run.read_manifest().steps if reason in row.reasons] == [{reason: len(records)}]
    for path in (run.data_dir / "work" / "clean").glob("*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            assert not any("filter_reason" in json.loads(line)["metadata"] for line in f)


def test_report_names_each_source_and_keeps_an_emptied_one(web_run):
    run = web_run["run"]
    readers = run.read_manifest().steps[:3]
    assert [row.step for row in readers] == ["🐿 Jsonl: web", "📄 files: pages", "📄 files: notes"]
    run_mai("report", str(run.path))
    report = run.report_path.read_text()
    assert "| notes | 0 | 0.00 | 1.0 | 0 | 0 |" in report
    assert "| 📄 files: notes | 3 | 3 | 0 |" in report
