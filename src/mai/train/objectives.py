"""Distillation losses: how far a student's next-token distribution is from a teacher's.

The teacher may give its whole distribution (log-probabilities over the vocabulary) or only its
top-k tokens (their ids and log-probabilities, as a cache or an API's `top_logprobs` hold them).
With top-k, both distributions become k + 1 outcomes: the teacher's k tokens and "the rest of
the vocabulary", whose probability is what the k leave over. The student therefore cannot hide
probability in tokens the teacher ranks low (renormalising both over the k alone would let it),
and with k = vocabulary there is no rest: exactly the full divergence. Both are softened by a
temperature T (over those k + 1 outcomes when top-k) and the divergence is scaled by T², which
keeps its gradients the size of cross-entropy's (Hinton et al., 2015). Padding in a top-k row
(fewer than k alternatives) is a log-probability of -inf: its probability belongs to the rest.
"""

from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
REST_FLOOR = 1e-6  # least probability "the rest" keeps, so a log of it stays finite (fp16 caches round up to 1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ a (log a − log b) over the last dimension, with 0 · log 0 = 0.

    The logs are zeroed outside a's support before use, not after: −inf − (−inf) there would
    otherwise make NaN gradients, even though the term itself is masked out.
    """
    a = log_a.exp()
    inside = a > 0
    return (a * (torch.where(inside, log_a, 0.0) - torch.where(inside, log_b, 0.0))).sum(-1)


def divergence(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor | None = None,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """The divergence at each position: student_logits (..., V); teacher_logprobs (..., V), or (..., k)
    with teacher_ids (..., k) naming the tokens. Returns (...)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits are computed in fp32
    student, teacher = student_logits.to(dtype), teacher_logprobs.to(dtype)
    if teacher_ids is not None:
        student = F.log_softmax(student, -1).gather(-1, teacher_ids)
        student = student.masked_fill(torch.isneginf(teacher), float("-inf"))
        if teacher_ids.shape[-1] < student_logits.shape[-1]:
            student, teacher = with_rest(student), with_rest(teacher)
    log_q, log_p = F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1)
    if kind == "forward_kl":
        value = _kl(log_p, log_q)
    elif kind == "reverse_kl":
        value = _kl(log_q, log_p)
    else:
        m = jsd_beta * log_p.exp() + (1 - jsd_beta) * log_q.exp()
        log_m = torch.where(m > 0, m, 1.0).log()  # outside the support _kl ignores it: keep its gradient finite
        value = jsd_beta * _kl(log_p, log_m) + (1 - jsd_beta) * _kl(log_q, log_m)
    return value * temperature**2


def with_rest(logprobs: torch.Tensor) -> torch.Tensor:
    """Top-k log-probabilities (..., k) and, appended, the log-probability of every other token together."""
    rest = -torch.expm1(torch.logsumexp(logprobs, -1, keepdim=True))  # 1 − Σ p, accurate when Σ p is near 1
    return torch.cat([logprobs, rest.clamp(min=REST_FLOOR).log()], -1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is true; positions outside it contribute nothing, gradients included."""
    mask = mask.to(values.dtype)
    return torch.where(mask > 0, values, 0.0).sum() / mask.sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not -100 (masked)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
