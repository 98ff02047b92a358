"""Each source kind read directly through its datatrove reader, including broken files."""

import gzip
import io

import pyarrow as pa
import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mai.config import SourceConfig
from mai.data.corpus import bible
from mai.data.filters import ExtractHtml
from mai.data.readers import build_reader

PSALM = dict(bible())["Psalms"][:3000]


def read(source: SourceConfig) -> list:
    return list(build_reader(source, seed=0, rejects_writer=None).run())


def write_warc(path, pages: dict[str, str]) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode()), http_headers=headers)
            writer.write_record(record)


def test_warc_pages_are_read_and_extracted(tmp_path):
    body = "".join(f"<p>{line}</p>" for line in PSALM.split("\n"))
    write_warc(
        tmp_path / "crawl.warc.gz",
        {"https://example.org/psalms": f"<html><body><nav>Home | About</nav><main>{body}</main></body></html>"},
    )
    docs = read(SourceConfig(name="crawl", kind="warc", path=str(tmp_path)))
    assert len(docs) == 1 and docs[0].metadata["url"] == "https://example.org/psalms"
    (doc,) = ExtractHtml().run(iter(docs))
    assert PSALM.split("\n")[0] in doc.text and "Home | About" not in doc.text


def test_truncated_warc_keeps_what_was_read(tmp_path):
    pages = {f"https://example.org/{i}": f"<html><body><p>{PSALM}</p></body></html>" for i in range(20)}
    write_warc(tmp_path / "full.warc.gz", pages)
    data = (tmp_path / "full.warc.gz").read_bytes()
    (tmp_path / "full.warc.gz").write_bytes(data[: len(data) * 2 // 3])
    docs = read(SourceConfig(name="crawl", kind="warc", path=str(tmp_path)))
    assert 0 < len(docs) < 20


def test_parquet_and_jsonl_with_a_custom_text_field(tmp_path):
    pq.write_table(pa.table({"content": [PSALM, "second"], "id": ["a", "b"]}), tmp_path / "part.parquet")
    docs = read(SourceConfig(name="books", kind="parquet", path=str(tmp_path), text_key="content"))
    assert [d.text for d in docs] == [PSALM, "second"] and docs[0].metadata["source"] == "books"
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl.gz").write_bytes(
        gzip.compress(b'{"content": "hello"}\nnot json\n{"content": "world"}\n')
    )
    docs = read(SourceConfig(name="j", kind="jsonl", path=str(tmp_path / "j"), text_key="content"))
    assert [d.text for d in docs] == ["hello", "world"]


def test_code_directory_with_glob(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    docs = read(SourceConfig(name="code", kind="text", path=str(tmp_path), glob="**/*.py", quality="code"))
    assert [d.id for d in docs] == ["pkg/a.py"] and docs[0].metadata["rules"] == "code"
