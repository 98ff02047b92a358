"""datatrove readers for every source kind; a file that cannot be read is skipped with a reason.

Each reader is named after its source (in stats, `mai data stats` and the report). Each document gets
metadata `source` (the source's name), `rules` (web, code or none) and, for HTML, `html: true` so the
extraction step knows to run. A binary, invalid-UTF-8, empty or truncated file never stops a task:
it is written to the `read` rejects with its reason, as is a record without text.
"""

import random
import sys
from collections.abc import Iterator

from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader, BaseReader

from mai.config import SourceConfig
from mai.data.corpus import check_installed, read_source
from mai.errors import MaiError

BINARY_PROBE = 8192
SYNTH_SAMPLES = "samples.jsonl"  # of a synth/ folder: what `mai synth` kept


class NamedBySource:
    """Mixin for readers: the step's name ends with its source's, e.g. "📚 corpus: bible"."""

    def __init__(self, *args, source_name: str, **kwargs):
        self.name = f"{self.name}: {source_name}"  # before PipelineStep.__init__, which names the stats
        super().__init__(*args, **kwargs)


class SkipBadFiles:
    """Mixin for datatrove disk readers: a file that raises while read is rejected, not fatal."""

    rejects = None  # a datatrove JsonlWriter, set by build_reader

    def read_file(self, filepath: str):
        try:
            yield from super().read_file(filepath)
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
            self.reject(filepath, "unreadable", f"{type(e).__name__}: {e}")

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str):
        document = super().get_document_from_dict(data, source_file, id_in_file)
        if document is None:  # datatrove skips a record without text, uncounted
            detail = f"no text in field {self.text_key!r}; the record has {', '.join(map(repr, data)) or 'no fields'}"
            self.reject(f"{source_file}#{id_in_file}", "no_text", detail)
        return document

    def reject(self, filepath: str, reason: str, detail: str = "") -> None:
        self.stat_update(f"rejected_{reason}")
        if self.rejects is not None:
            doc = Document(text="", id=filepath, metadata={"filter_reason": reason, "detail": detail[:200]})
            self.rejects.write(doc, self._rank)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self._rank = rank
        if self.rejects is None:
            yield from super().run(data, rank, world_size)
            return
        with self.rejects:
            yield from super().run(data, rank, world_size)


class FileReader(NamedBySource, SkipBadFiles, BaseDiskReader):
    """One document per file (source code, text, or an HTML page)."""

    name = "📄 files"

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb") as f:
            raw = f.read()
        if not raw.strip():
            return self.reject(filepath, "empty")
        if b"\x00" in raw[:BINARY_PROBE]:
            return self.reject(filepath, "binary")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.reject(filepath, "invalid_utf8")
        document = self.get_document_from_dict({"text": text, "id": filepath}, filepath, 0)
        if document:
            yield document


class SafeJsonlReader(NamedBySource, SkipBadFiles, JsonlReader):
    pass


class SynthReader(SafeJsonlReader):
    """The samples `mai synth` kept (synth/samples.jsonl)."""

    name = "🧑‍🏫 synth"


class SafeParquetReader(NamedBySource, SkipBadFiles, ParquetReader):
    pass


class SafeWarcReader(NamedBySource, SkipBadFiles, WarcReader):
    pass


class CorpusReader(NamedBySource, BaseReader):
    """A built-in offline corpus, capped and shuffled the same way in every task, then split by rank."""

    name = "📚 corpus"

    def __init__(self, source: SourceConfig, seed: int, metadata: dict):
        super().__init__(default_metadata=metadata, source_name=source.name)
        self.source, self.seed = source, seed

    def documents(self) -> list[tuple[str, str]]:
        docs = [(name, text) for name, text in read_source(self.source.name) if text.strip()]
        random.Random(self.seed).shuffle(docs)
        if self.source.max_mb is None:
            return docs
        budget, taken = int(self.source.max_mb * 1e6), []
        for name, text in docs:
            if budget <= 0:
                break
            taken.append((name, text))
            budget -= len(text.encode())
        return taken

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if data:
            yield from data
        for name, text in self.documents()[rank::world_size]:
            document = self.get_document_from_dict({"text": text, "id": f"{self.source.name}/{name}"}, name, 0)
            self.update_doc_stats(document)
            yield document


def check_source_files(sources: list[SourceConfig]) -> None:
    """Raise if a source's path is missing or holds no file its reader would take, or a corpus's
    package is not installed.

    Called before any pipeline work: datatrove would otherwise fail in every task, each with a traceback.
    """
    for source in sources:
        if source.kind == "corpus":
            check_installed(source.name)
            continue
        folder = get_datafolder(source.path)
        if source.kind == "synth" and not folder.exists(SYNTH_SAMPLES):
            raise MaiError(
                f"data source {source.name!r}: {source.path} has no {SYNTH_SAMPLES}; generate it with `mai synth RUN`",
                parameter="data.sources",
            )
        if not folder.exists(""):
            raise MaiError(f"data source {source.name!r}: {source.path} does not exist", parameter="data.sources")
        if not folder.list_files(recursive=True, glob_pattern=source.glob):
            matching = f" matching glob {source.glob!r}" if source.glob else ""
            raise MaiError(
                f"data source {source.name!r}: {source.path} holds no files{matching}", parameter="data.sources"
            )


def progress_bars() -> bool:
    """Whether readers draw datatrove's per-document progress bars: on a terminal, not in a log file,
    where every update of every worker's bar would become a fragment of one long line."""
    return sys.stderr.isatty()


def build_reader(source: SourceConfig, seed: int, rejects_writer) -> BaseReader:
    """The datatrove reader of one configured source."""
    metadata = {"source": source.name, "rules": source.rules}
    if source.kind == "corpus":
        return CorpusReader(source, seed, metadata)
    if source.kind == "html":
        metadata["html"] = True
    common = {
        "glob_pattern": source.glob,
        "default_metadata": metadata,
        "doc_progress": progress_bars(),
        "source_name": source.name,
    }
    readers = {
        "text": lambda: FileReader(source.path, recursive=True, **common),
        "html": lambda: FileReader(source.path, recursive=True, **common),
        "warc": lambda: SafeWarcReader(source.path, **common),
        "jsonl": lambda: SafeJsonlReader(source.path, text_key=source.text_key, **common),
        "parquet": lambda: SafeParquetReader(source.path, text_key=source.text_key, **common),
        "synth": lambda: SynthReader(source.path, text_key="text", **common | {"glob_pattern": SYNTH_SAMPLES}),
    }
    reader = readers[source.kind]()
    reader.rejects = rejects_writer
    if source.kind == "warc":
        reader.default_metadata = metadata | {"html": True}
    return reader
