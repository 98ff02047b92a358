"""lm-evaluation-harness interop: our models as lm-eval's model `mai`.

    mai eval lm-eval --model mai --model_args run=runs/demo --include_path DIR --tasks mai_arc_easy
    python -m mai.eval.harness --model mai --model_args run=runs/demo ...      (the same)

Both run lm-eval's own command line after registering `mai` (lm-eval finds only the models of
its own package by name, so the plain `lm_eval` command cannot see it). From Python,
`import mai.eval.harness` is enough for `lm_eval.simple_evaluate(model="mai", ...)`.
Model arguments: run (a run directory or a transformers/GGUF directory), precision (fp32, bf16, int8, int4 or
auto), batch_tokens. Scores come from the same `Scorer` as `mai eval`, so the two agree.
"""

import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  (see below)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from mai.errors import MaiError
from mai.eval.runner import load_for_eval
from mai.eval.scoring import Scorer
from mai.precision import INFERENCE_PRECISIONS, check_precision


# lm-eval registers its own models (hf, local-completions, ...) only when its registry is still empty at
# the first lookup: importing lm_eval.models above registers them first, so that registering `mai`
# does not hide them from a process that uses both.
@register_model("mai")
class MaiLM(LM):
    def __init__(
        self,
        run: str | None = None,
        precision: str = "fp32",
        batch_tokens: int | None = None,
        device: str | None = None,
        batch_size=None,  # lm-eval passes these to every model; we batch by tokens instead
        max_batch_size=None,
    ):
        super().__init__()
        if run is None:
            raise MaiError("--model_args needs run=PATH (a run directory or a transformers checkpoint directory)")
        check_precision(precision, allowed=INFERENCE_PRECISIONS)
        use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        model, tokenizer, _, _ = load_for_eval(Path(str(run)), "cuda" if use_cuda else "cpu")
        self.scorer = Scorer(model, tokenizer, precision, int(batch_tokens) if batch_tokens else None)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        bar = tqdm(total=len(requests), desc="mai loglikelihood", disable=disable_tqdm)
        results = self.scorer.loglikelihood([r.args for r in requests], lambda done: bar.update(len(done)))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.scorer.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in tqdm(requests, desc="mai generate_until", disable=disable_tqdm):
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if kwargs.get("do_sample") and kwargs.get("temperature", 0) > 0:
                raise MaiError("the mai model decodes greedily; set do_sample: false in the task's generation_kwargs")
            outputs.append(self.scorer.generate(context, tuple(until), int(kwargs.get("max_gen_toks", 256))))
        return outputs


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with `mai` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
