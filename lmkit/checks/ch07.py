"""Checkers for the chapter 07 exercises (training)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..model import ModelConfig, TransformerLM
from ..train import lm_loss, lr_at
from .common import call, close, fail, passed

__all__ = ["check_cross_entropy", "check_make_batch", "check_lr_schedule",
           "check_clip_by_global_norm", "check_train_step", "check_adamw_step"]


def _is_tensor(x, name: str, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        fail(f"{name} should return a torch.Tensor ({what}), got {type(x).__name__}")


def check_cross_entropy(fn) -> None:
    """Exercise 1: fn(logits (N, V), targets (N,)) -> mean of -log softmax(logits)[target]."""
    g = torch.Generator().manual_seed(0)
    cases = [
        ("one row", torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])),
        ("uniform logits", torch.zeros(4, 10), torch.tensor([0, 3, 9, 5])),
        ("random", torch.randn(8, 5, generator=g), torch.randint(5, (8,), generator=g)),
        ("confident and wrong", torch.tensor([[10.0, -10.0], [-10.0, 10.0]]),
         torch.tensor([1, 1])),
        ("huge logits", torch.tensor([[1000.0, 990.0, 0.0], [-500.0, 200.0, 300.0]]),
         torch.tensor([1, 2])),
    ]
    for name, logits, targets in cases:
        got = call(fn, logits.clone(), targets.clone(), name="cross_entropy")
        want = F.cross_entropy(logits, targets)
        _is_tensor(got, "cross_entropy", "a scalar")
        if got.numel() != 1:
            fail(f"cross_entropy should return one number (a scalar tensor), got shape "
                 f"{tuple(got.shape)}: average the per-row losses")
        got = got.reshape(()).float()
        if torch.allclose(got, want, atol=1e-4):
            continue
        if not torch.isfinite(got):
            fail(f"case '{name}': you returned {got.item()} for logits up to "
                 f"{logits.abs().max().item():.0f}: exp() overflows. Use the log-sum-exp trick: "
                 "subtract each row's max before exp (or use torch.logsumexp)")
        N = len(targets)
        if N > 1 and torch.allclose(got, want * N, atol=1e-3):
            fail(f"case '{name}': you returned {got.item():.4f}, which is {N} x the expected "
                 f"{want.item():.4f}: you summed over the {N} rows; take the mean")
        probs = torch.softmax(logits, -1)[torch.arange(N), targets]
        if torch.allclose(got, -probs.mean(), atol=1e-4) or \
                torch.allclose(got, 1 - probs.mean(), atol=1e-4):
            fail(f"case '{name}': you averaged probabilities, not log-probabilities: "
                 "the loss is -log p(target)")
        log_probs = torch.log_softmax(logits, -1)  # (N, V)
        if N > 1 and torch.allclose(got, -log_probs[:, targets].mean(), atol=1e-4):
            fail(f"case '{name}': log_probs[:, targets] picks an (N, N) block (every row at every "
                 "target), not one entry per row; pick log_probs[torch.arange(N), targets]")
        lse0 = torch.logsumexp(logits, dim=0)  # (V,): over the rows, the wrong dimension
        picked = logits[torch.arange(N), targets]  # (N,)
        if lse0.shape == picked.shape or N == 1:  # shapes the student's code could subtract
            if torch.allclose(got, (lse0 - picked).mean(), atol=1e-4):
                fail(f"case '{name}': you took logsumexp over the rows (dim=0); softmax runs over "
                     "the vocabulary, the last dimension: logsumexp(logits, dim=-1)")
        wrong_target = F.cross_entropy(logits, logits.argmax(-1))
        if not torch.allclose(want, wrong_target) and torch.allclose(got, wrong_target,
                                                                     atol=1e-4):
            fail(f"case '{name}': you scored the most likely token, not the target: pick "
                 "log_probs[row, targets[row]] for each row")
        fail(f"case '{name}': expected {want.item():.4f}, got {got.item():.4f}. The loss of a row "
             "is logsumexp(logits) - logits[target]; the result is the mean over rows")
    passed("cross_entropy", len(cases))


def check_make_batch(fn) -> None:
    """Exercise 2: fn(ids, starts, T) -> (x, y), x[b] = ids[s:s+T], y[b] = ids[s+1:s+T+1]."""
    ids = torch.arange(100, 160)  # id + 1 is always the next token: easy to read in hints
    cases = [([0], 4), ([3, 10, 20], 5), ([55], 4), ([0, 0], 1), ([7, 1, 30, 42], 8)]
    for starts, T in cases:
        got = call(fn, ids, torch.tensor(starts), T, name="make_batch")
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"make_batch should return a pair (x, y), got {type(got).__name__}")
        x, y = got
        _is_tensor(x, "make_batch", "x")
        _is_tensor(y, "make_batch", "y")
        want_x = torch.stack([ids[s:s + T] for s in starts])
        want_y = torch.stack([ids[s + 1:s + T + 1] for s in starts])
        B = len(starts)
        for name, t in (("x", x), ("y", y)):
            if tuple(t.shape) != (B, T):
                fail(f"starts={starts}, T={T}: {name} has shape {tuple(t.shape)}, expected "
                     f"(B, T) = ({B}, {T}): one row of T tokens per start")
        if not torch.equal(x, want_x):
            fail(f"starts={starts}, T={T}: x[0] should be ids[{starts[0]}:{starts[0] + T}] = "
                 f"{want_x[0].tolist()}, got {x[0].tolist()}")
        if torch.equal(y, x):
            fail(f"starts={starts}, T={T}: y equals x. The target at each position is the NEXT "
                 f"token: y[b] = ids[s + 1 : s + 1 + T] (here {want_y[0].tolist()})")
        if not torch.equal(y, want_y):
            fail(f"starts={starts}, T={T}: y[0] should be {want_y[0].tolist()} (x shifted left "
                 f"by one), got {y[0].tolist()}")
    passed("make_batch", len(cases))


def check_lr_schedule(fn) -> None:
    """Exercise 3: fn(step, lr, min_lr, warmup_steps, total_steps) -> warm-up then cosine."""
    cases = [(1.0, 0.1, 10, 100), (3e-4, 3e-5, 5, 50), (1e-3, 0.0, 1, 20), (2.0, 0.5, 0, 30),
             (1.0, 0.1, 4, 12)]
    n = 0
    for lr, min_lr, warmup, total in cases:
        key_steps = [s for s in (0, warmup - 1, warmup, total - 1) if 0 <= s < total]
        order = list(dict.fromkeys(key_steps + list(range(total))))  # the telling steps first
        for step in order:
            got = call(fn, step, lr, min_lr, warmup, total, name="lr_schedule")
            want = lr_at(step, lr, min_lr, warmup, total)
            n += 1
            if isinstance(got, torch.Tensor):
                got = got.item()
            if not isinstance(got, (int, float)):
                fail(f"lr_schedule should return a number, got {type(got).__name__}")
            if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                continue
            where = f"(lr={lr}, min_lr={min_lr}, warmup_steps={warmup}, total_steps={total})"
            if step < warmup:
                hint = ("warm-up is linear: step s gets lr * (s + 1) / warmup_steps, so step 0 "
                        "already learns a little and step warmup_steps - 1 reaches lr")
                if step == 0 and got == 0:
                    hint = "step 0 gave 0, so the first step learns nothing: " + hint
            elif step == total - 1:
                hint = ("the last step must land exactly on min_lr: the cosine's progress is "
                        "(step - warmup_steps) / (total_steps - 1 - warmup_steps), reaching 1 "
                        "at step total_steps - 1")
            elif step == warmup:
                hint = ("the cosine starts at lr at step warmup_steps (progress 0): "
                        "min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * progress))")
            else:
                hint = ("after warm-up: min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * progress)), "
                        "progress = (step - warmup_steps) / (total_steps - 1 - warmup_steps)")
            fail(f"step {step} {where}: expected {want:.6g}, got {got:.6g}; {hint}")
    passed("lr_schedule", n)


def check_clip_by_global_norm(fn) -> None:
    """Exercise 4: fn(grads, max_norm) -> (clipped grads, norm before clipping)."""
    g = torch.Generator().manual_seed(0)
    cases = [
        ("two tensors, norm 13 > 1", [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])], 1.0),
        ("already small", [torch.tensor([0.3, 0.4]), torch.tensor([0.0])], 1.0),
        ("one tensor", [torch.tensor([6.0, 8.0])], 5.0),
        ("random", [torch.randn(4, 3, generator=g) * 5, torch.randn(7, generator=g)], 2.0),
        ("uneven sizes", [torch.full((10, 10), 0.5), torch.tensor([0.1, -0.1])], 1.0),
    ]
    for name, grads, max_norm in cases:
        originals = [t.clone() for t in grads]
        got = call(fn, [t.clone() for t in grads], max_norm, name="clip_by_global_norm")
        if not (isinstance(got, tuple) and len(got) == 2):
            fail("clip_by_global_norm should return a pair (clipped_grads, total_norm)")
        clipped, norm = got
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in originals]
        for p, t in zip(params, originals):
            p.grad = t.clone()
        want_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if len(clipped) != len(grads):
            fail(f"case '{name}': {len(grads)} gradients in, {len(clipped)} out")
        for k, (c, p) in enumerate(zip(clipped, params)):
            _is_tensor(c, "clip_by_global_norm", "each clipped gradient")
            if c.shape != p.grad.shape:
                fail(f"case '{name}': gradient {k} has shape {tuple(c.shape)}, expected "
                     f"{tuple(p.grad.shape)}")
        norm = float(norm)
        if not math.isclose(norm, want_norm.item(), rel_tol=1e-4):
            fail(f"case '{name}': the global norm is {want_norm.item():.4f} (the L2 norm of all "
                 f"gradients together: sqrt of the sum of every squared entry), got {norm:.4f}")
        if all(torch.allclose(c, p.grad, atol=1e-5) for c, p in zip(clipped, params)):
            continue
        total = want_norm.item()
        if total <= max_norm and not all(torch.allclose(c, t) for c, t in zip(clipped, originals)):
            fail(f"case '{name}': the norm {total:.3f} is already below max_norm={max_norm}, so "
                 "the gradients must come back unchanged (clip, don't normalise)")
        per_tensor = [t * min(1.0, max_norm / (t.norm().item() + 1e-6)) for t in originals]
        if all(torch.allclose(c, w, atol=1e-5) for c, w in zip(clipped, per_tensor)):
            fail(f"case '{name}': you clipped each tensor separately. Compute ONE norm over all "
                 "gradients and scale every tensor by the same factor max_norm / total_norm, so "
                 "the direction of the whole gradient is kept")
        fail(f"case '{name}': gradient values differ from the expected ones (scale every tensor "
             f"by min(1, max_norm / total_norm) = {min(1.0, max_norm / total):.4f})")
    passed("clip_by_global_norm", len(cases))


def _tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.gpt2(vocab_size=16, context_length=8, d_model=16,
                                          n_layers=1, n_heads=2))


def _reference_step(model, optimizer, x, y, max_norm, clip=True):
    optimizer.zero_grad()
    loss = lm_loss(model(x), y)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


def check_train_step(fn) -> None:
    """Exercise 5: fn(model, optimizer, x, y, max_norm) -> loss; three steps like lmkit's."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(16, (4, 8), generator=g), torch.randint(16, (4, 8), generator=g))
               for _ in range(3)]
    base = _tiny_model()

    def run(step_fn, **kw):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        losses, states = [], []
        for x, y in batches:
            losses.append(step_fn(model, opt, x, y, 0.1, **kw))
            states.append([p.detach().clone() for p in model.parameters()])
        return losses, states

    want_losses, want_states = run(_reference_step)
    _, no_clip_states = run(_reference_step, clip=False)
    got_losses, got_states = [], []
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    for k, (x, y) in enumerate(batches):
        loss = call(fn, model, opt, x, y, 0.1, name="train_step")
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                fail(f"train_step should return the loss, one number; got shape "
                     f"{tuple(loss.shape)}")
            loss = loss.item()
        if not isinstance(loss, (int, float)):
            fail(f"train_step should return the loss as a number, got {type(loss).__name__}")
        got_losses.append(loss)
        got_states.append([p.detach().clone() for p in model.parameters()])
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_states[-1],
                                                                   want_states[k]))
        if same:
            continue
        if k == 0 and all(torch.equal(a, b) for a, b in zip(got_states[0], before)):
            fail("step 1 did not change the weights, so optimizer.step() found no gradients: "
                 "call loss.backward() before optimizer.step(), and optimizer.zero_grad() before "
                 "backward() (zero_grad between backward and step erases the gradients)")
        if all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_states[-1],
                                                               no_clip_states[k])):
            fail(f"step {k + 1}: the weights moved as if the gradients were never clipped: "
                 "clip after loss.backward() and before optimizer.step() (clipping earlier "
                 "sees no gradients, later is too late)")
        if k > 0:
            fail(f"step 1 matched but step {k + 1} did not: gradients accumulate across steps "
                 "unless you call optimizer.zero_grad() in every step")
        fail("step 1 gave different weights than zero_grad -> forward -> loss -> backward -> "
             "clip -> step")
    for k, (a, b) in enumerate(zip(got_losses, want_losses)):
        if not math.isclose(a, b, rel_tol=1e-5):
            fail(f"step {k + 1}: returned loss {a:.4f}, expected {b:.4f} (the loss of this "
                 "batch, computed before the update)")
    passed("train_step", len(batches))


# ----------------------------------------------------------------------------- exercise 6: AdamW


def _adamw_torch(p, grad, m, v, t, lr, betas, eps, weight_decay):
    """The reference: one step of torch.optim.AdamW from the state (m, v) after t - 1 steps."""
    param = torch.nn.Parameter(p.clone())
    opt = torch.optim.AdamW([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    opt.state[param] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(),
                        "exp_avg_sq": v.clone()}
    param.grad = grad.clone()
    opt.step()
    state = opt.state[param]
    return param.detach().clone(), state["exp_avg"].clone(), state["exp_avg_sq"].clone()


def _adamw_variant(p, g, m, v, t, lr, betas, eps, wd, *, bias_correction=True, decay="decoupled",
                   eps_inside=False, v_from=None, swap_betas=False, t_shift=0, sqrt=True,
                   sign=1.0, decay_after=False, old_moments=False, eps_uncorrected=False):
    """One AdamW step written out, with switches that reproduce the typical mistakes."""
    b1, b2 = (betas[1], betas[0]) if swap_betas else betas
    if decay == "l2":  # Adam + L2: the decay goes through the gradient (and the moments)
        g = g + wd * p
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * (g * g if v_from is None else v_from(g))
    tt = t + t_shift
    m_hat = m_new / (1 - b1 ** tt) if bias_correction else m_new
    v_hat = v_new / (1 - b2 ** tt) if bias_correction else v_new
    if eps_uncorrected:  # the Adam paper's compact form: eps added before the v correction
        denom = (torch.sqrt(v_new) + eps) / math.sqrt(1 - b2 ** tt)
    elif eps_inside:
        denom = torch.sqrt(v_hat + eps)
    else:
        denom = (torch.sqrt(v_hat) if sqrt else v_hat) + eps
    update = m_hat / denom
    shrink = {"decoupled": 1 - lr * wd, "no_lr": 1 - wd, "l2": 1.0, "none": 1.0}[decay]
    if decay_after:
        p_new = (p - sign * lr * update) * shrink
    else:
        p_new = p * shrink - sign * lr * update
    if old_moments:
        return p_new, m.clone(), v.clone()
    return p_new, m_new, v_new


# Each typical mistake: the switches that reproduce it and the hint it should get.
ADAMW_MISTAKES = [
    (dict(bias_correction=False),
     "no bias correction: m and v start at 0, so early on they are too small; divide by "
     "(1 - beta1**t) and (1 - beta2**t) before using them"),
    (dict(t_shift=-1),
     "the bias correction uses the wrong power: t is the number of this step counting from 1 "
     "(the first step has t = 1), so divide by 1 - beta**t, not 1 - beta**(t - 1)"),
    (dict(t_shift=1),
     "the bias correction uses the wrong power: t already counts this step (the first step "
     "has t = 1), so divide by 1 - beta**t, not 1 - beta**(t + 1)"),
    (dict(decay="l2"),
     "you added weight_decay * p to the gradient: that is Adam with L2 regularisation, whose "
     "decay is then rescaled by 1/sqrt(v). AdamW's decay is decoupled: p = p - lr * "
     "weight_decay * p, applied to the weights directly, outside m and v"),
    (dict(decay="no_lr"),
     "the decay shrinks p by weight_decay * p; it must be scaled by the learning rate too: "
     "p = p * (1 - lr * weight_decay)"),
    (dict(decay="none"),
     "no weight decay: AdamW shrinks the weights, p = p * (1 - lr * weight_decay), before "
     "the Adam update"),
    (dict(decay_after=True),
     "the decay must use the weights from before this step's update (as torch.optim.AdamW "
     "does): p = p * (1 - lr * weight_decay), then p = p - lr * m_hat / (sqrt(v_hat) + eps)"),
    (dict(eps_uncorrected=True),
     "you added eps to sqrt(v) before the bias correction (the Adam paper's compact form, "
     "lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)); torch.optim.AdamW, "
     "and this exercise, add eps after it: m_hat / (sqrt(v_hat) + eps)"),
    (dict(eps_inside=True),
     "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps), not sqrt(v_hat + eps)"),
    (dict(sqrt=False),
     "divide by the square root of v_hat (the gradient's typical size), not by v_hat itself"),
    (dict(swap_betas=True),
     "beta1 and beta2 are swapped: m (the mean of the gradient) uses beta1 = betas[0], v "
     "(the mean of its square) uses beta2 = betas[1]"),
    (dict(v_from=lambda g: g),
     "v is the running mean of the SQUARED gradient: v = beta2 * v + (1 - beta2) * grad**2"),
    (dict(v_from=lambda g: g.abs()),
     "v is the running mean of the SQUARED gradient (grad**2), not of its absolute value"),
    (dict(sign=-1.0),
     "the update goes the wrong way: subtract lr * m_hat / (sqrt(v_hat) + eps), against the "
     "gradient"),
    (dict(old_moments=True),
     "return the UPDATED moments m and v (the optimizer keeps them for the next step), not "
     "the ones you were given"),
]


def check_adamw_step(fn) -> None:
    """Exercise 6: fn(p, grad, m, v, t, lr, betas, eps, weight_decay) -> (p, m, v) after one
    AdamW step, compared with torch.optim.AdamW."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    cases = [  # (name, p, grad, m, v, t, lr, betas, eps, weight_decay)
        ("first step (t = 1, m = v = 0)", rnd(5), rnd(5), torch.zeros(5), torch.zeros(5), 1,
         0.1, (0.9, 0.999), 1e-8, 0.1),
        ("second step", rnd(3, 4), rnd(3, 4), rnd(3, 4, scale=0.1), rnd(3, 4).square() * 0.01,
         2, 0.05, (0.9, 0.95), 1e-8, 0.5),
        ("step 10, no weight decay", rnd(6), rnd(6), rnd(6, scale=0.3),
         rnd(6).square() * 0.2, 10, 0.01, (0.8, 0.9), 1e-8, 0.0),
        ("small gradients, step 3 (eps matters)", rnd(4), rnd(4, scale=1e-3),
         rnd(4, scale=1e-3), rnd(4).square() * 1e-6, 3, 0.1, (0.9, 0.99), 1e-3, 0.1),
        ("tiny gradients (eps matters)", rnd(4), rnd(4, scale=1e-4), torch.zeros(4),
         torch.zeros(4), 1, 0.1, (0.9, 0.999), 1e-3, 0.1),
        ("large lr and decay", rnd(2, 3), rnd(2, 3, scale=3.0), rnd(2, 3),
         rnd(2, 3).square(), 3, 0.5, (0.9, 0.99), 1e-6, 0.8),
    ]
    names = ("p", "m", "v")
    for name, p, grad, m, v, t, lr, betas, eps, wd in cases:
        args = (p, grad, m, v, t, lr, betas, eps, wd)
        inputs = [p.clone(), grad.clone(), m.clone(), v.clone()]
        got = call(fn, *inputs, t, lr, betas, eps, wd, name="adamw_step")
        where = (f"case '{name}' (t={t}, lr={lr}, betas={betas}, eps={eps}, "
                 f"weight_decay={wd})")
        if not (isinstance(got, tuple) and len(got) == 3):
            fail(f"adamw_step should return a tuple (p, m, v) of three tensors, got "
                 f"{type(got).__name__}" + (" (did you forget `return`?)" if got is None else ""))
        for k, (out, ref) in enumerate(zip(got, (p, m, v))):
            if not isinstance(out, torch.Tensor):
                fail(f"adamw_step on {where}: the new {names[k]} should be a torch.Tensor, got "
                     f"{type(out).__name__}")
            if out.shape != ref.shape:
                fail(f"adamw_step on {where}: the new {names[k]} has shape {tuple(out.shape)}, "
                     f"expected {tuple(ref.shape)} (the same as the input {names[k]})")
        if any(not torch.equal(a, b) for a, b in zip(inputs, (p, grad, m, v))):
            fail(f"adamw_step on {where} changed one of its input tensors in place (e.g. "
                 "`p -= ...` or `m.mul_(beta1)`); compute new tensors and return them")
        want = _adamw_torch(*args)
        if all(close(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(got, want)):
            continue
        for switches, hint in ADAMW_MISTAKES:
            wrong = _adamw_variant(*args, **switches)
            differs = not all(close(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(wrong, want))
            if differs and all(close(a, b, atol=1e-6, rtol=1e-5, equal_nan=True)
                               for a, b in zip(got, wrong)):
                fail(f"adamw_step on {where}: {hint}")
        for k in (1, 2, 0):  # the moments first: a wrong m or v makes p wrong too
            a, b = got[k], want[k]
            if not close(a, b, atol=1e-6, rtol=1e-5):
                formula = {
                    0: "p = p * (1 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps), "
                       "m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t)",
                    1: "m = beta1 * m + (1 - beta1) * grad",
                    2: "v = beta2 * v + (1 - beta2) * grad**2",
                }[k]
                err = (a.double() - b.double()).abs().max().item()
                fail(f"adamw_step on {where}: the new {names[k]} is wrong (largest error "
                     f"{err:.3g}); {formula}")
    passed("adamw_step", len(cases))
