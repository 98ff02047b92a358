import json

import numpy as np

from mai.run import sha256_file


def test_manifest_describes_checksummed_shards(prepared_run):
    manifest = prepared_run.read_manifest()
    assert manifest["tokens"]["train"] > 100_000 and manifest["tokens"]["val"] > 5_000
    for shard in manifest["shards"]:
        path = prepared_run.data_dir / shard["path"]
        assert sha256_file(path) == shard["sha256"]
        assert path.stat().st_size == shard["tokens"] * np.dtype(manifest["dtype"]).itemsize
    assert manifest["tokenizer_sha256"] == sha256_file(prepared_run.tokenizer_path)
    assert 2.5 < manifest["bytes_per_token"]["val"] < 6


def test_split_is_by_whole_document(prepared_run):
    def names(split):
        lines = (prepared_run.text_dir / f"{split}.jsonl").read_text().splitlines()
        return {(d["source"], d["name"]) for d in map(json.loads, lines)}

    train, val = names("train"), names("val")
    assert val and train and not train & val
    assert {f"{s}/{n}" for s, n in val} == set(prepared_run.read_manifest()["val_documents"])


def test_shards_start_each_document_with_bos(prepared_run):
    from mai.run import load_tokenizer

    tokenizer = load_tokenizer(prepared_run)
    tokens = prepared_run.read_tokens("val")
    docs = (prepared_run.text_dir / "val.jsonl").read_text().splitlines()
    assert tokens[0] == tokenizer.bos_id
    assert int((tokens == tokenizer.bos_id).sum()) == len(docs)
    first_doc = json.loads(docs[0])["text"]
    n = len(tokenizer.encode(first_doc))
    assert tokenizer.decode(tokens[1:n].tolist()) == first_doc
