"""The `mai` command: each subcommand parses its arguments, then calls one function elsewhere.

A MaiError, like a usage error (unknown option, missing argument), becomes one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from mai.errors import MaiError


class DefaultToRun(TyperGroup):
    """`mai eval RUN ...` means `mai eval run RUN ...`: a first word naming no subcommand goes to `run`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mai: data → tokenizer → train → generate → export.",
)
model_app = typer.Typer(no_args_is_help=True, help="Model shapes and sizes.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare training data.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train the BPE tokenizer.")
config_app = typer.Typer(no_args_is_help=True, help="Presets and resolved configs.")
export_app = typer.Typer(no_args_is_help=True, help="Export a run to other formats.")
import_app = typer.Typer(no_args_is_help=True, help="Import checkpoints from other formats.")
eval_app = typer.Typer(
    cls=DefaultToRun,
    no_args_is_help=True,
    help="Evaluate a model: bits per byte, benchmark tasks, a CORE-style aggregate; `mai eval RUN` runs them.",
)
for sub, name in [
    (model_app, "model"),
    (data_app, "data"),
    (tokenizer_app, "tokenizer"),
    (config_app, "config"),
    (export_app, "export"),
    (import_app, "import"),
    (eval_app, "eval"),
]:
    app.add_typer(sub, name=name)

Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
]


def path_value(text: str) -> Path:
    """A path from the command line; an empty one would silently mean the current folder."""
    if not text:
        raise typer.BadParameter("an empty path; name a file or folder ('.' for the current one)")
    return Path(text)


RunArg = Annotated[Path, typer.Argument(parser=path_value, help="Run directory, e.g. runs/demo.")]


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def run(
    preset: Annotated[str, typer.Argument(help="Preset name or path to a .toml config.")],
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", parser=path_value, help="Run directory (default runs/PRESET).")
    ] = None,
    set_: Overrides = None,
):
    """Run every stage (data, tokenizer, train, samples, report), skipping completed ones."""
    from mai.config import load_config
    from mai.pipeline import run_all
    from mai.run import RunDir

    config = load_config(preset, set_ or [])
    run_all(RunDir(run_dir or Path("runs") / config.preset), config)


@app.command()
def init(
    run_dir: RunArg,
    preset: Annotated[str, typer.Option(help="Preset name or .toml path.")] = "tiny",
    set_: Overrides = None,
):
    """Create a run directory holding the resolved config."""
    from mai.config import load_config
    from mai.pipeline import init_run
    from mai.run import RunDir

    run, config = RunDir(run_dir), load_config(preset, set_ or [])
    init_run(run, config)
    _out(f"{run.config_path}: preset {config.preset}; next `mai data prepare {run.path}`\n")


@config_app.command("show")
def config_show(
    preset: Annotated[str, typer.Argument(help="Preset name or .toml path.")] = "tiny", set_: Overrides = None
):
    """Print the fully resolved config as TOML."""
    from mai.config import config_to_toml, load_config

    _out(config_to_toml(load_config(preset, set_ or [])))


@config_app.command("presets")
def config_presets():
    """List the built-in presets."""
    from mai.config import preset_names

    _out("\n".join(preset_names()) + "\n")


@model_app.command("info")
def model_info_cmd(
    preset: Annotated[str, typer.Option(help="Preset name or .toml path.")] = "tiny",
    set_: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Parameters, FLOPs per token and memory, computed on the meta device (nothing allocated)."""
    from mai.config import load_config
    from mai.model.info import model_info

    config = load_config(preset, set_ or [])
    info = model_info(config.model, config.train.seq_len)
    if as_json:
        _out(json.dumps({"preset": config.preset, **info}, indent=2) + "\n")
        return
    lines = [f"{config.preset}: {info['params']:,} parameters ({info['params'] / 1e9:.3f}B)"]
    lines += [
        f"  {name:<10} {count:>18,}  {100 * count / info['params']:5.1f}%" for name, count in info["breakdown"].items()
    ]
    lines += [
        f"training FLOPs/token  {info['flops_per_token']:.3e}  (seq_len {info['seq_len']})",
        f"weights in bf16       {info['memory_bf16_weights_bytes'] / 2**30:,.2f} GiB",
        f"training state        {info['memory_training_bytes'] / 2**30:,.2f} GiB  (bf16 + fp32 master, grads, Adam)",
        f"KV cache per token    {info['kv_cache_bytes_per_token_bf16'] / 2**10:,.1f} KiB (bf16)",
    ]
    _out("\n".join(lines) + "\n")


@data_app.command("prepare")
def data_prepare(run_dir: RunArg):
    """Run the data pipeline (extract, filter, dedup, decontaminate), train the tokenizer, write shards."""
    from mai.data.prepare import prepare_data
    from mai.data.stats import format_table
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    manifest = prepare_data(run, run.read_config())
    _out(format_table(manifest["steps"]) + "\n\n")
    _out(
        f"tokens: {manifest['tokens']['train']:,} train, {manifest['tokens']['val']:,} val; "
        f"{manifest['bytes_per_token']['val']:.2f} bytes/token on validation text\n"
    )


@data_app.command("stats")
def data_stats(run_dir: RunArg):
    """Per-step table of the data pipeline: documents in and out, size, top reasons for drops."""
    from mai.data.stats import format_table
    from mai.run import RunDir

    _out(format_table(RunDir(run_dir).require().read_manifest()["steps"]) + "\n")


@tokenizer_app.command("train")
def tokenizer_train(run_dir: RunArg):
    """Retrain the BPE tokenizer on the pipeline's output; print bytes per token on validation text.

    Shards made with the previous tokenizer no longer match: rerun `mai data prepare` after this.
    """
    from mai.data.prepare import retrain_tokenizer
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    tokenizer, held_out = retrain_tokenizer(run, run.read_config())
    _out(f"{run.tokenizer_path}: {tokenizer.vocab_size} tokens, {held_out:.3f} bytes/token on validation text\n")


@app.command()
def train(
    run_dir: RunArg,
    resume: Annotated[bool, typer.Option(help="Continue from checkpoints/latest.")] = False,
    set_: Overrides = None,
):
    """Train the run's model; --resume continues exactly where the last checkpoint left off."""
    from mai.config import apply_overrides
    from mai.run import RunDir
    from mai.train.loop import train as train_run

    run = RunDir(run_dir).require()
    record = train_run(run, resume=resume, config=apply_overrides(run.read_config(), set_ or []))
    _out(json.dumps(record) + "\n")


@app.command()
def generate(
    run_dir: RunArg,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(min=0, help="0 disables.")] = 50,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Above 0; 1 disables.")] = 1.0,
    seed: Annotated[int | None, typer.Option(min=0, max=2**64 - 1, help="Seed for reproducible sampling.")] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU or GPU computes it natively), fp32 or bf16.")
    ] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile", help="Decode through torch.compile: 2-4x faster per token after ~10-20 s.")
    ] = False,
):
    """Write the prompt followed by its completion to stdout (logs go to stderr)."""
    from mai.run import RunDir
    from mai.sample import load_for_generation, stream_completion

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (Python keeps them as surrogates)
        raise MaiError("--prompt is not valid UTF-8 text", parameter="prompt") from None
    if top_p == 0:  # would keep no token at all; the server refuses it too
        raise MaiError("--top-p must be above 0 (1 keeps every token)", parameter="top_p")
    model, _, tokenizer = load_for_generation(RunDir(run_dir).require(), precision)
    if compile:
        sys.stderr.write("compiling the decode step (--compile): 10-20 s before the first token\n")
    pieces = stream_completion(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, compile)
    first = next(pieces, "")  # checks the prompt (its length too) before anything reaches stdout
    _out(prompt + first)
    for piece in pieces:
        _out(piece)
    _out("\n")


@app.command()
def serve(
    path: Annotated[
        Path,
        typer.Argument(parser=path_value, help="Run directory, transformers checkpoint directory, or a .gguf file."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key clients must send as Bearer.")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Sequences decoded together (KV cache rows).")] = 16,
    max_context: Annotated[
        int | None, typer.Option(min=2, help="Tokens per sequence, prompt included (default: the model's).")
    ] = None,
    max_waiting: Annotated[int, typer.Option(min=1, help="Queued sequences before answering 429.")] = 256,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU or GPU computes it natively), fp32 or bf16.")
    ] = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="CPU: decode through torch.compile, 5-20 s per batch-size bucket at start (CUDA: graphs).",
        ),
    ] = False,
):
    """Serve the model over an OpenAI-compatible API, with a chat page at /."""
    from mai.serve.server import serve as run_server

    run_server(path, host, port, api_key_env, max_batch, max_context, max_waiting, precision, compile)


@app.command()
def gateway(
    config: Annotated[
        Path, typer.Argument(parser=path_value, help="Gateway config (TOML): model aliases, backends, keys.")
    ],
):
    """Route OpenAI-compatible requests to in-house servers and vendors: weighted splits, fallbacks, quotas.

    The config format is documented in src/mai/serve/gateway.py and the README.
    """
    from mai.serve.gateway import run_gateway

    run_gateway(config)


@app.command()
def report(run_dir: RunArg):
    """Render report.md and PNG plots from the run directory."""
    from mai.report import write_report
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    write_report(run)
    _out(f"{run.report_path}\n")


@export_app.command("hf")
def export_hf_cmd(
    run_dir: RunArg,
    out: Annotated[Path, typer.Argument(parser=path_value, help="Output directory for the transformers checkpoint.")],
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
):
    """Write config.json, model.safetensors and tokenizer files that transformers loads."""
    from mai.export import export_hf
    from mai.run import RunDir

    if dtype not in ("float32", "bfloat16"):
        raise MaiError(f"--dtype must be float32 or bfloat16, not {dtype!r}", parameter="dtype")
    _out(f"{export_hf(RunDir(run_dir).require(), out, dtype)}\n")


@import_app.command("hf")
def import_hf_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            parser=path_value, help="transformers checkpoint directory, or a .gguf file (or a directory with one)."
        ),
    ],
    run_dir: RunArg,
):
    """Turn a Llama-family transformers checkpoint into a new run directory."""
    from mai.export import import_hf
    from mai.run import RunDir

    config = import_hf(source, RunDir(run_dir))
    _out(
        f"{run_dir}: {config.model.n_layers} layers, d_model {config.model.d_model}, vocab {config.model.vocab_size}\n"
    )


@eval_app.command("run")
def eval_run(
    path: Annotated[
        Path,
        typer.Argument(parser=path_value, help="Run directory, transformers checkpoint directory, or a .gguf file."),
    ],
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            "-t",
            help="Task names, suites (core, code, all) or .jsonl files; repeat or comma-separate. Default: core.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples of each task.")] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32 (default: the same scores on any machine), bf16 autocast, or auto (bf16 where the CPU "
            "or GPU computes it natively, as mai generate); eval.json records the one used."
        ),
    ] = "fp32",
    out: Annotated[
        Path | None,
        typer.Option(
            parser=path_value, help="Where to write eval.json (default: inside PATH if it is a run directory)."
        ),
    ] = None,
):
    """Bits per byte on the validation shards, each task, and the CORE-style aggregate; writes eval.json."""
    from mai.eval.runner import evaluate, format_table

    record = evaluate(path, tasks or ["core"], limit, precision, out)
    _out(format_table(record))


@eval_app.command("compare")
def eval_compare(
    paths: Annotated[
        list[Path], typer.Argument(parser=path_value, help="Run directories (or eval.json files) to compare.")
    ],
    chart: Annotated[Path, typer.Option(parser=path_value, help="Bar chart to write (PNG).")] = Path(
        "eval_compare.png"
    ),
):
    """Print the runs' eval results side by side and draw them as one grouped bar chart."""
    from mai.eval.compare import compare

    _out(compare(paths, chart) + f"chart: {chart}\n")


@eval_app.command("tasks")
def eval_tasks():
    """List the registered tasks: kind, metric, examples and where the data comes from."""
    from mai.taskdata import REGISTRY, SUITES, load_task

    for name, spec in REGISTRY.items():
        _out(f"{name:<15} {spec.kind:<9} {spec.metric:<12} {len(load_task(name).examples):>6}  {spec.source}\n")
    _out("".join(f"suite {suite}: {', '.join(names)}\n" for suite, names in SUITES.items()))


@eval_app.command("lm-eval-tasks")
def eval_lm_eval_tasks(
    folder: Annotated[
        Path, typer.Argument(parser=path_value, help="Folder for the task files (pass it to lm_eval's --include_path).")
    ],
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", "-t", help="Tasks or suites, as for `mai eval`.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Write only the first N examples of each task.")] = None,
):
    """Write our tasks as lm-evaluation-harness task files (JSONL + YAML), named mai_<task>."""
    from mai.eval.lm_eval_tasks import write_lm_eval_tasks

    names = write_lm_eval_tasks(folder, tasks or ["core"], limit)
    _out(f"{folder}: {','.join(names)}\n")


@eval_app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def eval_lm_eval(ctx: typer.Context):
    """lm-evaluation-harness's command line with our model registered as `mai` (takes lm_eval's arguments)."""
    from mai.eval.harness import main as lm_eval_main

    lm_eval_main(ctx.args)


def main() -> None:
    try:
        exit_code = app(standalone_mode=False)
    except MaiError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # a usage error (unknown option, bad value): one line, as for MaiError
        if type(e).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            sys.stderr.write(f"error: {usage_error_line(e)}\n")
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


def usage_error_line(error: typer.TyperException) -> str:
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


if __name__ == "__main__":
    main()
