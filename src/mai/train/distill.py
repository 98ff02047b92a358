"""`mai distill`: train the run's model (the student) towards a teacher's next-token distributions,
mixed with cross-entropy on the data (config section distill).

The teacher comes in one of three ways:

    a local model, live (top_k = 0)   run on every batch; its full distribution is the target
    a local model, cached (top_k > 0) run once over every training window; its top-k ids and
                                       log-probabilities are kept in distill/teacher_top<k>/ and
                                       read back each epoch (a killed build resumes)
    "synth"                            the top-k log-probabilities an API teacher returned to
                                       `mai synth`; the student trains on those samples

Teacher and student must share a tokenizer; a local teacher's vocabulary is compared with the
run's, an API teacher's tokens are looked up in it by their bytes.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from mai.config import DistillConfig, RunConfig
from mai.console import console, say
from mai.errors import MaiError
from mai.loading import load_pretrained
from mai.precision import autocast
from mai.run import RunDir, atomic_write_json
from mai.run_files import SynthRecord, decode_logprobs
from mai.tokenizer import Tokenizer
from mai.train.batches import ShuffledOrder, WindowSampler
from mai.train.loop import NextToken, train
from mai.train.objectives import cross_entropy, divergence, masked_mean

CACHE_CHUNK = 8  # windows per teacher forward while the cache is built, and per progress record


def load_teacher(path: str, tokenizer: Tokenizer, device: torch.device):
    """The teacher model (eval mode, no gradients), refused unless its vocabulary is the student's."""
    model, teacher_tokenizer, _ = load_pretrained(Path(path), device)
    if teacher_tokenizer.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise MaiError(
            f"the teacher {path} ({teacher_tokenizer.vocab_size} tokens) and this run's student "
            f"({tokenizer.vocab_size} tokens) tokenize differently; distillation needs one tokenizer: start a new "
            f"run with tokenizer.copy_from = {path!r} and model.vocab_size = {teacher_tokenizer.vocab_size}",
            parameter="distill.teacher",
        )
    return model.requires_grad_(False)


@torch.no_grad()
def teacher_logprobs(teacher, inputs: torch.Tensor, top_k: int, device, precision):
    """(ids or None, log-probabilities): the teacher's top-k at every position, or its whole distribution."""
    with autocast(device, precision):
        logits = teacher(inputs.to(device))
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if not top_k:
        return None, logprobs
    values, ids = logprobs.topk(top_k, dim=-1)
    return ids, values


class LiveTeacherSampler(WindowSampler):
    """The training windows, each batch with the teacher's distribution computed there and then."""

    def __init__(self, tokens, tc, teacher, top_k, device, precision):
        super().__init__(tokens, tc.seq_len, tc.batch_size, tc.seed)
        self.teacher, self.top_k, self.device, self.precision = teacher, top_k, device, precision

    def next_batch(self):
        inputs, targets = self.windows(self.next_indices())
        ids, logprobs = teacher_logprobs(self.teacher, inputs, self.top_k, self.device, self.precision)
        return inputs, targets, (ids, logprobs, torch.ones(inputs.shape, dtype=torch.bool))


class CachedTeacherSampler(WindowSampler):
    """The training windows, each batch with the teacher's top-k read from the cache."""

    def __init__(self, tokens, tc, cache: tuple[np.ndarray, np.ndarray]):
        super().__init__(tokens, tc.seq_len, tc.batch_size, tc.seed)
        self.cache_ids, self.cache_values = cache

    def next_batch(self):
        indices = self.next_indices()
        inputs, targets = self.windows(indices)
        ids = torch.from_numpy(self.cache_ids[indices].astype(np.int64))
        values = torch.from_numpy(self.cache_values[indices].astype(np.float32))
        return inputs, targets, (ids, values, torch.ones(inputs.shape, dtype=torch.bool))


def build_teacher_cache(run: RunDir, config: RunConfig, teacher, windows: WindowSampler, device, precision):
    """The teacher's top-k over every training window, in distill/teacher_top<k>/ (ids.npy, values.npy as
    memory maps); built once, resumed after a kill from the last recorded chunk, rebuilt for another
    teacher, k or data. Returns the two arrays, (windows, seq_len, k) each."""
    dc, seq_len = config.distill, windows.seq_len
    folder = run.path / "distill" / f"teacher_top{dc.top_k}"
    key = {
        "teacher": str(Path(dc.teacher).resolve()),
        "top_k": dc.top_k,
        "seq_len": seq_len,
        "windows": windows.num_items,
        "precision": precision,
        "shards": [s.sha256 for s in run.read_manifest().shards if s.split == "train"],
    }
    progress_path = folder / "progress.json"
    done = 0
    if progress_path.is_file():
        recorded = json.loads(progress_path.read_text())
        done = recorded["windows_done"] if recorded["key"] == key else -1
    if done < 0 or not progress_path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        done = 0
    shape = (windows.num_items, seq_len, dc.top_k)
    id_dtype = np.uint16 if config.model.vocab_size <= 2**16 else np.int32
    mode = "r+" if done else "w+"
    ids = np.lib.format.open_memmap(folder / "ids.npy", mode=mode, dtype=id_dtype, shape=shape)
    values = np.lib.format.open_memmap(folder / "values.npy", mode=mode, dtype=np.float16, shape=shape)
    bytes_per_token = dc.top_k * (ids.itemsize + values.itemsize)
    if done < windows.num_items:
        say(
            f"distill: caching the teacher's top-{dc.top_k} over {windows.num_items * seq_len:,} training tokens "
            f"({bytes_per_token} bytes/token, {ids.nbytes + values.nbytes:,} bytes) in {folder}"
        )
        columns = [
            TextColumn("[bold]teacher"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("teacher", total=windows.num_items, completed=done)
            for start in range(done, windows.num_items, CACHE_CHUNK):
                chunk = list(range(start, min(start + CACHE_CHUNK, windows.num_items)))
                inputs, _ = windows.windows(chunk)
                top_ids, top_values = teacher_logprobs(teacher, inputs, dc.top_k, device, precision)
                ids[chunk], values[chunk] = top_ids.cpu().numpy(), top_values.cpu().numpy()
                ids.flush(), values.flush()
                atomic_write_json(
                    progress_path, {"key": key, "windows_done": chunk[-1] + 1, "bytes_per_token": bytes_per_token}
                )
                progress.update(task, completed=chunk[-1] + 1)
    else:
        say(f"distill: the teacher's top-{dc.top_k} is cached ({bytes_per_token} bytes/token) in {folder}")
    return ids, values


def synth_rows(run: RunDir, tokenizer: Tokenizer, seq_len: int, teacher: str) -> list:
    """The kept synth samples that carry log-probabilities, as (tokens, teacher ids, teacher values,
    first completion position): the prompt then the teacher's own tokens, looked up by their bytes."""
    path = run.synth_dir / "samples.jsonl"
    if not path.is_file():
        raise MaiError(
            f"{run.path} has no synth/samples.jsonl; run `mai synth {run.path}` first", parameter="distill.teacher"
        )
    id_of = {raw: i for i, raw in enumerate(tokenizer.token_byte_strings) if raw}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = SynthRecord.model_validate_json(line)
        if record.logprobs is None:
            continue
        strings, index, values = decode_logprobs(record.logprobs)
        unknown = [s for s in (strings[i] for i in index[:, 0]) if s and s not in id_of]
        if unknown:
            raise MaiError(
                f"the teacher {record.teacher!r} wrote tokens this run's tokenizer does not have (e.g. {unknown[0]!r}); "
                "distilling from API log-probabilities needs the teacher's tokenizer: set tokenizer.copy_from to "
                "the teacher's model and prepare the data in a new run",
                parameter="distill.teacher",
            )
        student_ids = np.array([id_of.get(s, -1) for s in strings])[index]
        values = np.where(student_ids >= 0, values, -np.inf)
        chosen = student_ids[:, 0]
        end = int(np.argmax(chosen < 0)) if (chosen < 0).any() else len(chosen)  # a special token ends the text
        chosen, student_ids, values = chosen[:end], student_ids[:end], values[:end]
        # the sampled token usually is among the top-k too: count it once
        values[(student_ids[:, 1:] == chosen[:, None]).any(1), 0] = -np.inf
        prompt = tokenizer.encode(record.messages[-1]["content"] + "\n\n")
        tokens = np.array(prompt + chosen.tolist())[: seq_len + 1]
        if len(prompt) >= len(tokens):
            continue  # the prompt alone fills the window: nothing of the teacher's is left to learn
        rows.append((tokens, student_ids.clip(min=0), values, len(prompt)))
    if not rows:
        raise MaiError(
            f"{path} has no samples with log-probabilities; rerun `mai synth` with synth.top_logprobs = 20 "
            "(the teacher's API must return logprobs)",
            parameter="distill.teacher",
        )
    return rows


class SynthSampler(ShuffledOrder):
    """Batches of synth samples, one per row (padded): cross-entropy on the teacher's tokens, the
    divergence at each of them to the top-k the API returned."""

    def __init__(self, rows: list, tc):
        super().__init__(len(rows), min(tc.batch_size, len(rows)), tc.seed)
        self.rows, self.seq_len = rows, tc.seq_len
        self.k = rows[0][1].shape[1]

    def next_batch(self):
        B, T, K = self.batch_size, self.seq_len, self.k
        inputs = torch.zeros(B, T, dtype=torch.int64)
        targets = torch.full((B, T), -100, dtype=torch.int64)
        ids = torch.zeros(B, T, K, dtype=torch.int64)
        values = torch.full((B, T, K), float("-inf"))
        values[..., 0] = 0.0  # positions without a teacher hold a valid one-token distribution, masked out
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b, i in enumerate(self.next_indices()):
            tokens, top_ids, top_values, start = self.rows[i]
            n = len(tokens) - 1
            inputs[b, :n] = torch.from_numpy(tokens[:-1])
            completion = slice(start - 1, n)
            targets[b, completion] = torch.from_numpy(tokens[start:])
            taught = n - start + 1
            ids[b, completion] = torch.from_numpy(top_ids[:taught])
            values[b, completion] = torch.from_numpy(top_values[:taught])
            mask[b, completion] = True
        return inputs, targets, (ids, values, mask)


class Distillation(NextToken):
    """The objective `train` runs for `mai distill`: pretraining's data and validation, with the
    teacher's part in every batch and the divergence to it in the loss."""

    def __init__(self, run: RunDir, config: RunConfig, tokenizer: Tokenizer, device, precision):
        super().__init__(run, config, tokenizer, device, precision)
        self.run, self.config, self.tokenizer = run, config, tokenizer
        self.distill: DistillConfig = config.distill
        if not self.distill.teacher:
            raise MaiError(
                'set distill.teacher: a teacher run directory, transformers directory or .gguf file, or "synth"',
                parameter="distill.teacher",
            )
        if tokenizer.vocab_size != config.model.vocab_size:
            raise MaiError(
                f"the student's model.vocab_size is {config.model.vocab_size} but its tokenizer has "
                f"{tokenizer.vocab_size} tokens; distillation compares distributions over one vocabulary: "
                f"set model.vocab_size = {tokenizer.vocab_size}",
                parameter="model.vocab_size",
            )

    def sampler(self):
        dc, tc, train_tokens = self.distill, self.settings, self.train_tokens
        if dc.teacher == "synth":
            return SynthSampler(synth_rows(self.run, self.tokenizer, tc.seq_len, self.config.synth.model), tc)
        teacher = load_teacher(dc.teacher, self.tokenizer, self.device)
        if not dc.top_k:
            return LiveTeacherSampler(train_tokens, tc, teacher, 0, self.device, self.precision)
        windows = WindowSampler(train_tokens, tc.seq_len, tc.batch_size, tc.seed)
        cache = build_teacher_cache(self.run, self.config, teacher, windows, self.device, self.precision)
        del teacher
        return CachedTeacherSampler(train_tokens, tc, cache)

    def loss(self, model, inputs, targets, teacher, device, precision) -> torch.Tensor:
        dc = self.distill
        ids, values, mask = teacher
        with autocast(device, precision):
            logits = model(inputs.to(device))
        kd = divergence(
            logits, values.to(device), None if ids is None else ids.to(device), dc.loss, dc.temperature, dc.jsd_beta
        )
        ce = cross_entropy(logits, targets.to(device))
        return dc.alpha * masked_mean(kd, mask.to(device)) + (1 - dc.alpha) * ce


def distill(run: RunDir, resume: bool = False, config: RunConfig | None = None, device: str | None = None):
    """Train the run's model by distillation (config.distill); as `train`, resumable, returning the final record."""
    return train(run, resume, config, device, objective=Distillation)
