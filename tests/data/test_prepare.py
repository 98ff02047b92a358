import numpy as np

from mai.loading import load_tokenizer
from mai.run import sha256_file


def test_manifest_describes_checksummed_shards(prepared_run):
    manifest = prepared_run.read_manifest()
    assert manifest.tokens.train > 100_000 and manifest.tokens.val > 5_000
    for shard in manifest.shards:
        path = prepared_run.data_dir / shard.path
        assert sha256_file(path) == shard.sha256
        assert path.stat().st_size == shard.tokens * np.dtype(manifest.dtype).itemsize
    assert manifest.tokenizer_sha256 == sha256_file(prepared_run.tokenizer_path)
    assert 2.5 < manifest.bytes_per_token.val < 6
    assert manifest.sources["shakespeare"].documents >= 5
    assert manifest.val_documents and all(d.startswith("shakespeare/") for d in manifest.val_documents)
    assert [row.step for row in manifest.steps][:3] == ["📚 corpus: shakespeare", "✂️ extract html", "🌍 language"]


def test_shards_start_each_document_with_bos(prepared_run):
    tokenizer = load_tokenizer(prepared_run)
    tokens = prepared_run.read_tokens("val")
    assert tokens[0] == tokenizer.bos_id
    assert int((tokens == tokenizer.bos_id).sum()) == len(prepared_run.read_manifest().val_documents)
    text = tokenizer.decode(tokens[1:200].tolist())
    assert len(text) > 400 and "\n" in text  # real multi-line play text
