"""Chapter 07, exercise 6 (one AdamW step): the checker accepts right answers, fails on the stub,
and rejects a catalogue of plausible wrong answers, each with the hint meant for it."""

import math

import pytest
import torch

from lmkit.checks import ch07


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


def good(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    p = p * (1 - lr * weight_decay)
    p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p, m, v


def good_torch_style(p, grad, m, v, t, lr, betas, eps, weight_decay):
    """Another right answer, arranged as PyTorch does (step size and denominator apart)."""
    beta1, beta2 = betas
    m = torch.lerp(m, grad, 1 - beta1)
    v = v * beta2 + (1 - beta2) * grad * grad
    step_size = lr / (1 - beta1**t)
    denom = v.sqrt() / math.sqrt(1 - beta2**t) + eps
    return p.mul(1 - lr * weight_decay) - step_size * m / denom, m, v


def test_stub_fails():
    with pytest.raises(NotImplementedError):
        ch07.check_adamw_step(stub)


@pytest.mark.parametrize("answer", [good, good_torch_style])
def test_right_answers_pass(answer, capsys):
    ch07.check_adamw_step(answer)
    assert "✓ adamw_step: all 6 cases passed" in capsys.readouterr().out


# ---- the catalogue: wrong answers as a student would write them, and the hint each must get


def no_bias_correction(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    p = p * (1 - lr * weight_decay)
    return p - lr * m / (v.sqrt() + eps), m, v


def bias_correction_t_minus_1(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas  # counts steps from 0: the first step divides by 1 - beta**0 = 0
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1 ** (t - 1)), v / (1 - beta2 ** (t - 1))
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def bias_correction_t_plus_1(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1 ** (t + 1)), v / (1 - beta2 ** (t + 1))
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def l2_instead_of_decoupled(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    grad = grad + weight_decay * p  # Adam + L2, not AdamW
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


def decay_without_lr(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    p = p - weight_decay * p
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


def forgot_decay(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


def decay_after_update(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p - lr * weight_decay * p, m, v


def eps_inside_sqrt(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / torch.sqrt(v_hat + eps), m, v


def adam_paper_form(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas  # Kingma and Ba's compact step: eps before the bias correction
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return p * (1 - lr * weight_decay) - step_size * m / (v.sqrt() + eps), m, v


def no_sqrt(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat + eps), m, v


def swapped_betas(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta2, beta1 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def v_not_squared(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def v_of_abs(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad.abs()
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def gradient_ascent(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) + lr * m_hat / (v_hat.sqrt() + eps), m, v


def returns_old_moments(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m_new = beta1 * m + (1 - beta1) * grad
    v_new = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m_new / (1 - beta1**t), v_new / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


def in_place(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m.mul_(beta1).add_((1 - beta1) * grad)  # changes the caller's m
    v.mul_(beta2).add_((1 - beta2) * grad**2)
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    p *= 1 - lr * weight_decay
    p -= lr * m_hat / (v_hat.sqrt() + eps)
    return p, m, v


def returns_p_only(p, grad, m, v, t, lr, betas, eps, weight_decay):
    return good(p, grad, m, v, t, lr, betas, eps, weight_decay)[0]


def returns_float64(p, grad, m, v, t, lr, betas, eps, weight_decay):
    p, m, v = good(p.double(), grad.double(), m.double(), v.double(), t, lr, betas, eps,
                   weight_decay)
    return p.flatten(), m, v  # flattened p: a shape slip


def typo_in_m(p, grad, m, v, t, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + beta1 * grad  # beta1 where 1 - beta1 belongs
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return p * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps), m, v


CATALOGUE = [
    (no_bias_correction, "no bias correction"),
    (bias_correction_t_minus_1, r"not 1 - beta\*\*\(t - 1\)"),
    (bias_correction_t_plus_1, r"not 1 - beta\*\*\(t \+ 1\)"),
    (l2_instead_of_decoupled, "Adam with L2 regularisation"),
    (decay_without_lr, "scaled by the learning rate"),
    (forgot_decay, "no weight decay"),
    (decay_after_update, "weights from before this step's update"),
    (eps_inside_sqrt, "eps goes outside the square root"),
    (adam_paper_form, "the Adam paper's compact form"),
    (no_sqrt, "not by v_hat itself"),
    (swapped_betas, "beta1 and beta2 are swapped"),
    (v_not_squared, "running mean of the SQUARED gradient: v ="),
    (v_of_abs, "not of its absolute value"),
    (gradient_ascent, "the update goes the wrong way"),
    (returns_old_moments, "return the UPDATED moments"),
    (in_place, "changed one of its input tensors in place"),
    (returns_p_only, r"should return a tuple \(p, m, v\)"),
    (returns_float64, "the new p has shape"),
    (typo_in_m, r"the new m is wrong .*m = beta1 \* m \+ \(1 - beta1\) \* grad"),
]


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 8


@pytest.mark.parametrize("answer, hint", CATALOGUE, ids=[f.__name__ for f, _ in CATALOGUE])
def test_wrong_answer_is_rejected_with_its_hint(answer, hint):
    with pytest.raises(AssertionError, match=hint):
        ch07.check_adamw_step(answer)


def test_reference_is_torch_adamw():
    """The checker's reference is torch.optim.AdamW itself, run over three real steps."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    p, m, v = w.detach().clone(), torch.zeros(4, 3), torch.zeros(4, 3)
    for t in range(1, 4):
        grad = torch.randn(4, 3)
        w.grad = grad.clone()
        opt.step()
        p, m, v = good(p, grad, m, v, t, 0.1, (0.9, 0.95), 1e-8, 0.1)
        torch.testing.assert_close(p, w.detach())
        torch.testing.assert_close(m, opt.state[w]["exp_avg"])
        torch.testing.assert_close(v, opt.state[w]["exp_avg_sq"])
