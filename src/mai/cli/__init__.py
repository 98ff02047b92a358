"""The `mai` command: each subcommand parses its arguments, then calls one function elsewhere.

A MaiError, like a usage error (unknown option, missing argument), becomes one line on stderr and exit
code 2; anything else is a bug and keeps its traceback. `mai eval`'s subcommands are in eval.py.
"""

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from mai.cli.common import Overrides, RunArg, path_value, write
from mai.cli.eval import eval_app
from mai.errors import MaiError
from mai.precision import InferencePrecision

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mai: data → tokenizer → train → generate → export.",
)
model_app = typer.Typer(no_args_is_help=True, help="Model shapes and sizes.")
launch_app = typer.Typer(no_args_is_help=True, help="Start training on a cluster.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare training data.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train the BPE tokenizer.")
config_app = typer.Typer(no_args_is_help=True, help="Presets and resolved configs.")
export_app = typer.Typer(no_args_is_help=True, help="Export a run to other formats.")
import_app = typer.Typer(no_args_is_help=True, help="Import checkpoints from other formats.")
for sub, name in [
    (model_app, "model"),
    (launch_app, "launch"),
    (data_app, "data"),
    (tokenizer_app, "tokenizer"),
    (config_app, "config"),
    (export_app, "export"),
    (import_app, "import"),
    (eval_app, "eval"),
]:
    app.add_typer(sub, name=name)


@app.command()
def run(
    preset: Annotated[str, typer.Argument(help="Preset name or path to a .toml config.")],
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", parser=path_value, help="Run directory (default runs/PRESET).")
    ] = None,
    set_: Overrides = None,
):
    """Run every stage (data, tokenizer, train, samples, eval, report), skipping completed ones."""
    from mai.config import load_config
    from mai.run import RunDir
    from mai.stages import run_all

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
    from mai.run import RunDir
    from mai.stages import init_run

    run, config = RunDir(run_dir), load_config(preset, set_ or [])
    init_run(run, config)
    write(f"{run.config_path}: preset {config.preset}; next `mai data prepare {run.path}`\n")


@config_app.command("show")
def config_show(
    preset: Annotated[str, typer.Argument(help="Preset name or .toml path.")] = "tiny",
    set_: Overrides = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Every key with its type, bounds, default and description.")
    ] = False,
):
    """Print the fully resolved config as TOML."""
    from mai.config import config_to_toml, load_config
    from mai.config_docs import explain_config

    config = load_config(preset, set_ or [])
    write(explain_config(config) if explain else config_to_toml(config))


@config_app.command("presets")
def config_presets():
    """List the built-in presets."""
    from mai.config import preset_names

    write("\n".join(preset_names()) + "\n")


@model_app.command("info")
def model_info_cmd(
    preset: Annotated[str, typer.Option(help="Preset name or .toml path.")] = "tiny",
    set_: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Parameters, FLOPs per token and memory, computed on the meta device (nothing allocated)."""
    from mai.config import load_config
    from mai.model.info import format_info, model_info
    from mai.plan import one_device_memory

    config = load_config(preset, set_ or [])
    tc = config.train
    info = model_info(config.model, tc.seq_len)
    memory = one_device_memory(config.model, tc)
    if as_json:
        write(json.dumps({"preset": config.preset, **info, "training_memory_bytes": memory}, indent=2) + "\n")
    else:
        write(format_info(config.preset, info, memory))


@launch_app.command("slurm")
def launch_slurm(
    run_dir: RunArg,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes to train on.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="GPUs (processes) per node.")] = 8,
    partition: Annotated[str, typer.Option(help="Slurm partition (empty: the cluster's default).")] = "",
    time: Annotated[str, typer.Option(help="Time limit, e.g. 48:00:00 (empty: the partition's).")] = "",
    account: Annotated[str, typer.Option(help="Slurm account to charge (empty: your default).")] = "",
    port: Annotated[int, typer.Option(help="Rendezvous port on the first node.")] = 29500,
    submit: Annotated[bool, typer.Option(help="Submit it with sbatch too.")] = False,
):
    """Write RUN/launch/train.sbatch: torchrun on every node runs `mai train RUN --resume`."""
    from mai.run import RunDir
    from mai.train.launch import slurm_script, write_slurm_script
    from mai.train.launch import submit as submit_script

    run = RunDir(run_dir).require()
    options = {k: v for k, v in (("partition", partition), ("time", time), ("account", account)) if v}
    script = write_slurm_script(run, slurm_script(run, run.read_config(), nodes, gpus_per_node, options, port))
    write(f"{script}\n")
    if submit:
        write(submit_script(script) + "\n")


@app.command()
def plan(
    preset: Annotated[str, typer.Option(help="Preset name or .toml path.")] = "mai-1",
    gpus: Annotated[int, typer.Option(help="GPUs to train on.")] = 1024,
    gpu: Annotated[str, typer.Option(help="GPU kind: h100, h200, a100, b200 (or cpu).")] = "h100",
    tokens: Annotated[str, typer.Option(help="Training tokens, e.g. 10T, 500B.")] = "1T",
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation, end to end.")] = 0.40,
    batch_tokens: Annotated[str, typer.Option(help="Tokens per step (default: 4M, or a sequence per rank).")] = "",
    layout: Annotated[str, typer.Option(help="Evaluate one layout instead: tp=8,pp=16,dp=128.")] = "",
    ac: Annotated[str, typer.Option(help="With --layout: activation checkpointing none|selective|full.")] = "none",
    set_: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Per-GPU memory, step time, tokens/day and GPU-hours of every layout on a cluster; recommends one."""
    from mai.config import load_config
    from mai.plan import plan_command

    config = load_config(preset, set_ or [])
    write(plan_command(config, gpus, gpu, tokens, mfu, batch_tokens, layout, ac, as_json))


@data_app.command("prepare")
def data_prepare(run_dir: RunArg):
    """Run the data pipeline (extract, filter, dedup, decontaminate), train the tokenizer, write shards."""
    from mai.data.prepare import prepare_data
    from mai.report import format_steps
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    manifest = prepare_data(run, run.read_config())
    write(format_steps(manifest.steps) + "\n\n")
    write(
        f"tokens: {manifest.tokens.train:,} train, {manifest.tokens.val:,} val; "
        f"{manifest.bytes_per_token.val:.2f} bytes/token on validation text\n"
    )


@data_app.command("stats")
def data_stats(run_dir: RunArg):
    """Per-step table of the data pipeline: documents in and out, size, top reasons for drops."""
    from mai.report import format_steps
    from mai.run import RunDir

    write(format_steps(RunDir(run_dir).require().read_manifest().steps) + "\n")


@tokenizer_app.command("train")
def tokenizer_train(run_dir: RunArg):
    """Retrain the BPE tokenizer on the pipeline's output; print bytes per token on validation text.

    Shards made with the previous tokenizer no longer match: rerun `mai data prepare` after this.
    """
    from mai.data.prepare import retrain_tokenizer
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    tokenizer, held_out = retrain_tokenizer(run, run.read_config())
    write(f"{run.tokenizer_path}: {tokenizer.vocab_size} tokens, {held_out:.3f} bytes/token on validation text\n")


@app.command()
def synth(run_dir: RunArg, set_: Overrides = None):
    """Generate a data set (config section synth) from a teacher behind an OpenAI-compatible API; a rerun resumes."""
    from mai.config import apply_overrides
    from mai.data.synth import synthesize
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    summary = synthesize(run, apply_overrides(run.read_config(), set_ or []))
    write(summary.model_dump_json() + "\n")


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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        write(record.model_dump_json() + "\n")


@app.command()
def distill(
    run_dir: RunArg,
    resume: Annotated[bool, typer.Option(help="Continue from checkpoints/latest.")] = False,
    set_: Overrides = None,
):
    """Train the run's model from a teacher (config section distill); --resume continues exactly."""
    from mai.config import apply_overrides
    from mai.run import RunDir
    from mai.train.distill import distill as distill_run

    run = RunDir(run_dir).require()
    record = distill_run(run, resume=resume, config=apply_overrides(run.read_config(), set_ or []))
    write(record.model_dump_json() + "\n")


@app.command()
def sft(
    run_dir: RunArg,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/sft's latest checkpoint.")] = False,
    set_: Overrides = None,
):
    """Fine-tune the run's model (or sft.init_from's) on conversations (config section sft) into RUN/sft/."""
    from mai.config import apply_overrides
    from mai.run import RunDir
    from mai.stages import fine_tune_run, fine_tuned

    run = RunDir(run_dir).require()
    record = fine_tune_run(run, apply_overrides(run.read_config(), set_ or []), resume)
    write(f"{fine_tuned(record)}\n{run.sft_dir / 'report.md'}; talk to it with `mai chat {run.sft_dir}`\n")


INFERENCE_PRECISION_HELP = (
    "auto (bf16 where the CPU or GPU computes it natively), fp32, bf16, or int8/int4 weights (CPU; compiled)."
)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(parser=path_value, help="Run directory, or a .gguf file.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(min=0, help="0 disables.")] = 50,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Above 0; 1 disables.")] = 1.0,
    seed: Annotated[int | None, typer.Option(min=0, max=2**64 - 1, help="Seed for reproducible sampling.")] = None,
    precision: Annotated[InferencePrecision, typer.Option(help=INFERENCE_PRECISION_HELP)] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile", help="Decode through torch.compile: 2-4x faster per token after ~10-20 s.")
    ] = False,
):
    """Write the prompt followed by its completion to stdout (logs go to stderr)."""
    from mai.console import say
    from mai.generate import completion_pieces, load_model_for_generation
    from mai.precision import weight_bits

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (Python keeps them as surrogates)
        raise MaiError("--prompt is not valid UTF-8 text", parameter="prompt") from None
    if top_p == 0:  # would keep no token at all; the server refuses it too
        raise MaiError("--top-p must be above 0 (1 keeps every token)", parameter="top_p")
    model, tokenizer = load_model_for_generation(run_dir, precision)
    if weight_bits(precision) and not compile:
        compile = True
        say(f"{precision} weights decode fast only compiled: compiling the decode step, 10-20 s before the first token")
    elif compile:
        say("compiling the decode step (--compile): 10-20 s before the first token")
    pieces = completion_pieces(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, compile)
    first = next(pieces, "")  # checks the prompt (its length too) before anything reaches stdout
    write(prompt + first)
    for piece in pieces:
        write(piece)
    write("\n")


@app.command()
def chat(
    path: Annotated[
        Path, typer.Argument(parser=path_value, help="Run directory, transformers directory or .gguf file.")
    ],
    system: Annotated[str, typer.Option(help="System prompt (/system changes it).")] = "",
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens of an answer.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy (/temp changes it).")] = 0.7,
    top_k: Annotated[int, typer.Option(min=0, help="0 disables.")] = 50,
    seed: Annotated[int | None, typer.Option(min=0, max=2**64 - 1, help="Seed for reproducible sampling.")] = None,
    precision: Annotated[InferencePrecision, typer.Option(help="auto, fp32 or bf16.")] = "auto",
):
    """Talk to a model in the terminal: answers stream; Ctrl-C stops one, Ctrl-D quits."""
    from mai.chat import Chat, repl
    from mai.generate import load_model_for_generation
    from mai.precision import check_precision

    check_precision(precision, allowed=("auto", "fp32", "bf16"))
    model, tokenizer = load_model_for_generation(path, precision)
    chat_session = Chat(model, tokenizer, max_tokens, temperature, top_k, seed, system)
    repl(chat_session, f"mai chat: {path} (context {model.config.max_seq_len} tokens)")


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
    precision: Annotated[InferencePrecision, typer.Option(help=INFERENCE_PRECISION_HELP)] = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="CPU: decode through torch.compile, 5-20 s per batch-size bucket at start (CUDA: graphs).",
        ),
    ] = False,
):
    """Serve the model over an OpenAI-compatible API, with a chat page at /."""
    from mai.serve.launch import ServeSettings
    from mai.serve.launch import serve as run_server

    run_server(
        ServeSettings(
            path=path,
            host=host,
            port=port,
            api_key_env=api_key_env,
            max_batch=max_batch,
            max_context=max_context,
            max_waiting=max_waiting,
            precision=precision,
            compile=compile,
        )
    )


@app.command()
def gateway(
    config: Annotated[
        Path, typer.Argument(parser=path_value, help="Gateway config (TOML): model aliases, backends, keys.")
    ],
):
    """Route OpenAI-compatible requests to in-house servers and vendors: weighted splits, fallbacks, quotas.

    The config format is documented in docs/gateway.md.
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
    write(f"{run.report_path}\n")


@export_app.command("hf")
def export_hf_cmd(
    run_dir: RunArg,
    out: Annotated[Path, typer.Argument(parser=path_value, help="Output directory for the transformers checkpoint.")],
    dtype: Annotated[Literal["float32", "bfloat16"], typer.Option(help="Weights' dtype.")] = "float32",
):
    """Write config.json, model.safetensors and tokenizer files that transformers loads."""
    from mai.export import export_hf
    from mai.run import RunDir

    write(f"{export_hf(RunDir(run_dir).require(), out, dtype)}\n")


@export_app.command("gguf")
def export_gguf_cmd(
    run_dir: RunArg,
    out: Annotated[Path, typer.Argument(parser=path_value, help="The .gguf file to write.")],
    dtype: Annotated[
        Literal["f16", "bf16", "q8_0", "q4_0", "q4_k_m"],
        typer.Option(help="Weights' type: f16, bf16, q8_0 (8 bits), q4_0 (4 bits), q4_k_m (llama.cpp's 4-bit mix)."),
    ] = "f16",
):
    """Write one GGUF file that llama.cpp, Ollama and LM Studio run: weights, tokenizer, chat template."""
    from mai.export import export_gguf
    from mai.run import RunDir

    write(f"{export_gguf(RunDir(run_dir).require(), out, dtype)}\n")


@app.command("quant-eval")
def quant_eval_cmd(
    run_dir: RunArg,
    ggufs: Annotated[
        list[Path] | None,
        typer.Argument(
            parser=path_value, help="GGUF files to score through llama.cpp (default: f16, q8_0, q4_0 exports)."
        ),
    ] = None,
    text: Annotated[
        Path | None, typer.Option(parser=path_value, help="Held-out text to score (default: the validation split).")
    ] = None,
    tokens: Annotated[int, typer.Option(min=1, help="Held-out tokens to score.")] = 4096,
    decode_tokens: Annotated[int, typer.Option(min=0, help="Tokens to decode for tokens/s (0 skips it).")] = 64,
):
    """Held-out bits per byte, KL from fp32, memory, size and tokens/s of each precision, mai's and llama.cpp's."""
    from mai.quant_eval import format_quant_eval, quant_eval
    from mai.run import RunDir

    run = RunDir(run_dir).require()
    record = quant_eval(run, ggufs or [], text, tokens, decode_tokens)
    write(format_quant_eval(record) + f"{run.quant_eval_path} and {run.quant_eval_path.with_suffix('.png')}\n")


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
    write(
        f"{run_dir}: {config.model.n_layers} layers, d_model {config.model.d_model}, vocab {config.model.vocab_size}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """The `mai` command; argv defaults to the process's arguments."""
    try:
        exit_code = app(args=argv, prog_name="mai", standalone_mode=False)
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
