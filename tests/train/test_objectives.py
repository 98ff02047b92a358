"""The distillation losses: zero at the teacher, exact gradients, top-k = full at k = V, the tail beyond
the top-k counted, masks honoured."""

import pytest
import torch

from mai.train.objectives import divergence, masked_mean

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_zero_when_the_student_is_the_teacher(kind, temperature):
    student = logits(3, 5, 11)
    teacher = torch.log_softmax(student, -1)
    assert divergence(student, teacher, kind=kind, temperature=temperature).abs().max() < 1e-12
    top, ids = teacher.topk(4, dim=-1)
    assert divergence(student, top, ids, kind=kind, temperature=temperature).abs().max() < 1e-12
    assert (divergence(logits(3, 5, 11, seed=1), teacher, kind=kind) > 1e-3).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [None, 3])
def test_gradients_match_finite_differences(kind, top_k):
    student = logits(2, 7, seed=2).requires_grad_()
    teacher = torch.log_softmax(logits(2, 7, seed=3), -1)
    ids = None
    if top_k:
        teacher, ids = teacher.topk(top_k, dim=-1)
        teacher[0, -1] = float("-inf")  # a padded alternative
    assert torch.autograd.gradcheck(lambda s: divergence(s, teacher, ids, kind=kind, temperature=1.5).sum(), (student,))


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_with_k_equal_to_the_vocabulary_is_full_distillation(kind):
    student, vocab = logits(4, 6, 13, seed=4), 13
    teacher = torch.log_softmax(logits(4, 6, 13, seed=5) * 3, -1)
    top, ids = teacher.topk(vocab, dim=-1)
    full = divergence(student, teacher, kind=kind, temperature=2.0)
    assert torch.allclose(divergence(student, top, ids, kind=kind, temperature=2.0), full, atol=1e-12)
    smaller = divergence(student, *teacher.topk(5, dim=-1), kind=kind, temperature=2.0)
    assert not torch.allclose(smaller, full)


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_counts_the_probability_a_student_puts_outside_the_teachers_tokens(kind):
    teacher_logits = logits(3, 11, seed=8)
    top, ids = torch.log_softmax(teacher_logits, -1).topk(4, dim=-1)
    student = teacher_logits.clone()
    outside = torch.ones_like(student, dtype=torch.bool).scatter(-1, ids, False)
    student[outside] += 5.0  # the same odds among the teacher's 4 tokens, most mass elsewhere
    assert (divergence(student, top, ids, kind=kind) > 0.1).all()  # JSD is at most ln 2
    assert divergence(teacher_logits, top, ids, kind=kind).abs().max() < 1e-12


def test_masked_positions_contribute_nothing():
    student = logits(2, 5, 9, seed=6).requires_grad_()
    teacher = torch.log_softmax(logits(2, 5, 9, seed=7), -1)
    teacher[1, 3] = float("nan")  # garbage where the mask is off must not leak, not even as NaN
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3] = False
    loss = masked_mean(divergence(student, teacher), mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert student.grad[1, 3].abs().max() == 0
    kept = divergence(student.detach(), teacher)[mask]
    assert torch.allclose(loss.detach(), kept.mean())
