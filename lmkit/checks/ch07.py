"""Checkers for the chapter 07 exercises (training)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..model import ModelConfig, TransformerLM
from ..train import lm_loss, lr_at
from .common import INPLACE, Mistake, call, checker, close, fail, forbid, forbidden, passed

__all__ = ["check_cross_entropy", "check_make_batch", "check_lr_schedule",
           "check_clip_by_global_norm", "check_train_step", "check_adamw_step", "MISTAKES"]

M = Mistake
MISTAKES: dict[str, dict[str, Mistake]] = {
    "cross_entropy": {
        "forbidden": forbidden("F.cross_entropy", "compute logsumexp(logits) - logits[target] "
                                                  "yourself"),
        "overflow": M("exp of large logits without subtracting the max (inf, NaN)",
                      "exp() overflows. Use the log-sum-exp trick: subtract each row's max "
                      "before exp (or use torch.logsumexp)"),
        "sum": M("summing the row losses instead of averaging", "you summed over the rows; "
                                                                "take the mean"),
        "probs": M("averaging probabilities instead of log-probabilities",
                   "you averaged probabilities, not log-probabilities: the loss is -log "
                   "p(target)"),
        "block": M("`log_probs[:, targets]` (an N × N block)",
                   "log_probs[:, targets] picks an (N, N) block (every row at every target), "
                   "not one entry per row; pick log_probs[torch.arange(N), targets]"),
        "dim0": M("logsumexp over the rows (dim=0)", "you took logsumexp over the rows (dim=0); "
                                                     "softmax runs over the vocabulary, the "
                                                     "last dimension: logsumexp(logits, dim=-1)"),
        "argmax": M("scoring the most likely token instead of the target",
                    "you scored the most likely token, not the target: pick log_probs[row, "
                    "targets[row]] for each row"),
        "scalar": M("returning one loss per row", "return one number (a scalar tensor): "
                                                  "average the per-row losses"),
        "sign": M("forgetting the minus sign", "the loss is MINUS the mean log-probability of "
                                               "the targets (a positive number)"),
        "type": M("returning a float instead of a tensor", "return a torch.Tensor (a scalar), "
                                                           "so that .backward() works"),
        "inplace": INPLACE,
    },
    "make_batch": {
        "dtype": M("targets (or inputs) converted to int32 or float",
                   "keep the ids' dtype, torch.int64 (torch.long): nn.Embedding and "
                   "F.cross_entropy refuse int32 or float ids"),
        "same": M("y equal to x (no shift)", "the target at each position is the NEXT token: "
                                             "y[b] = ids[s + 1 : s + 1 + T]"),
        "shift_back": M("y shifted the wrong way (`ids[s - 1 : ...]`)",
                        "y is x shifted LEFT by one: y[b] = ids[s + 1 : s + 1 + T]"),
        "x_window": M("x from the wrong window (off by one)",
                      "x[b] is the window ids[s : s + T], starting at s itself"),
        "shape": M("(T, B) instead of (B, T), or a missing batch dimension",
                   "x and y are (B, T): one row of T tokens per start (torch.stack the rows)"),
        "length": M("windows of T + 1 or T - 1 tokens", "each row holds exactly T tokens"),
        "type": M("returning a list or one tensor instead of the pair (x, y)",
                  "return a pair of tensors (x, y)"),
        "inplace": INPLACE,
    },
    "lr_schedule": {
        "warmup_start": M("warm-up starting at 0 (`lr * step / warmup_steps`)",
                          "warm-up is linear: step s gets lr * (s + 1) / warmup_steps, so step 0 "
                          "already learns a little and step warmup_steps - 1 reaches lr"),
        "last_step": M("progress divided by total - warmup (never reaches min_lr)",
                       "the last step must land exactly on min_lr: the cosine's progress is "
                       "(step - warmup_steps) / (total_steps - 1 - warmup_steps), reaching 1 at "
                       "step total_steps - 1"),
        "cosine_start": M("the cosine not starting at lr after warm-up",
                          "the cosine starts at lr at step warmup_steps (progress 0): min_lr + "
                          "0.5 * (lr - min_lr) * (1 + cos(pi * progress))"),
        "cosine": M("a wrong cosine formula (linear decay, no 0.5, no min_lr)",
                    "after warm-up: min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * progress)), "
                    "progress = (step - warmup_steps) / (total_steps - 1 - warmup_steps)"),
        "no_room": M("no guard when there is no room to decay (division by zero at "
                     "warmup_steps == total_steps - 1)",
                     "when total_steps - 1 - warmup_steps <= 0 there is no room to decay: "
                     "return min_lr after warm-up instead of dividing by zero"),
        "no_warmup": M("no guard for warmup_steps == 0 (division by zero)",
                       "with warmup_steps = 0 there is no warm-up: check step < warmup_steps "
                       "before dividing by warmup_steps"),
        "type": M("returning a tensor or None", "return a Python number (a float)"),
    },
    "clip_by_global_norm": {
        "sum_norms": M("adding the per-tensor norms",
                       "the global norm is the square root of the sum of every squared entry, "
                       "not the sum of the tensors' norms"),
        "no_sqrt": M("forgetting the square root", "take the square root of the sum of "
                                                   "squares: the global norm is an L2 norm"),
        "norm": M("another norm (max, mean, or the norm after clipping)",
                  "return the global L2 norm measured BEFORE clipping: sqrt of the sum of "
                  "every squared entry of every tensor"),
        "normalise": M("scaling even when the norm is already below max_norm",
                       "when the norm is already below max_norm the gradients must come back "
                       "unchanged (clip, don't normalise)"),
        "per_tensor": M("clipping each tensor separately",
                        "you clipped each tensor separately. Compute ONE norm over all "
                        "gradients and scale every tensor by the same factor max_norm / "
                        "total_norm, so the direction of the whole gradient is kept"),
        "factor": M("scaling by total_norm / max_norm (upside down)",
                    "scale every tensor by min(1, max_norm / total_norm)"),
        "count": M("dropping or merging gradients", "return one clipped tensor per gradient, "
                                                    "each with its shape"),
        "type": M("returning only the gradients (not the pair)",
                  "return a pair (clipped_grads, total_norm)"),
    },
    "train_step": {
        "no_update": M("the weights not updated (no backward, no step, or zero_grad between "
                       "backward and step)",
                       "optimizer.step() found no gradients: call loss.backward() before "
                       "optimizer.step(), and optimizer.zero_grad() before backward() "
                       "(zero_grad between backward and step erases the gradients)"),
        "no_clip": M("clipping before backward, after step, or not at all",
                     "the weights moved as if the gradients were never clipped: clip after "
                     "loss.backward() and before optimizer.step() (clipping earlier sees no "
                     "gradients, later is too late)"),
        "no_zero_grad": M("forgetting optimizer.zero_grad() (gradients accumulate)",
                          "gradients accumulate across steps unless you call "
                          "optimizer.zero_grad() in every step"),
        "loss_fn": M("another loss (a sum instead of lm_loss's mean)",
                     "compute the loss with lm_loss(logits, y), the mean cross-entropy over all "
                     "positions; a sum makes the gradients B * T times larger"),
        "loss_value": M("returning the loss after the update or of another batch",
                        "return the loss of this batch, computed before the update"),
        "type": M("returning the loss tensor of shape (B, T), or None",
                  "return the loss as one Python number (loss.item())"),
    },
    "adamw_step": {
        "no_bias_correction": M('no bias correction of m and v',
                 "no bias correction: m and v start at 0, so early on they are too small; divide by " "(1 - beta1**t) and (1 - beta2**t) before using them"),
        "t_minus_1": M('bias correction with t - 1',
                 "the bias correction uses the wrong power: t is the number of this step counting from 1 " "(the first step has t = 1), so divide by 1 - beta**t, not 1 - beta**(t - 1)"),
        "t_plus_1": M('bias correction with t + 1',
                 "the bias correction uses the wrong power: t already counts this step (the first step " "has t = 1), so divide by 1 - beta**t, not 1 - beta**(t + 1)"),
        "l2": M('Adam + L2 (decay through the gradient) instead of decoupled decay',
                 "you added weight_decay * p to the gradient: that is Adam with L2 regularisation, whose " "decay is then rescaled by 1/sqrt(v). AdamW's decay is decoupled: p = p - lr * " "weight_decay * p, applied to the weights directly, outside m and v"),
        "decay_no_lr": M('decay not scaled by the learning rate',
                 "the decay shrinks p by weight_decay * p; it must be scaled by the learning rate too: " "p = p * (1 - lr * weight_decay)"),
        "no_decay": M('no weight decay',
                 "no weight decay: AdamW shrinks the weights, p = p * (1 - lr * weight_decay), before " "the Adam update"),
        "decay_after": M('decay applied after the Adam update',
                 "the decay must use the weights from before this step's update (as torch.optim.AdamW " "does): p = p * (1 - lr * weight_decay), then p = p - lr * m_hat / (sqrt(v_hat) + eps)"),
        "eps_paper": M("eps added before the bias correction (the Adam paper's form)",
                 "you added eps to sqrt(v) before the bias correction (the Adam paper's compact form, " "lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)); torch.optim.AdamW, " "and this exercise, add eps after it: m_hat / (sqrt(v_hat) + eps)"),
        "eps_inside": M('eps inside the square root',
                 "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps), not sqrt(v_hat + eps)"),
        "no_sqrt": M('dividing by v_hat instead of its square root',
                 "divide by the square root of v_hat (the gradient's typical size), not by v_hat itself"),
        "swap_betas": M('beta1 and beta2 swapped',
                 "beta1 and beta2 are swapped: m (the mean of the gradient) uses beta1 = betas[0], v " "(the mean of its square) uses beta2 = betas[1]"),
        "v_not_squared": M('v from the gradient, not its square',
                 "v is the running mean of the SQUARED gradient: v = beta2 * v + (1 - beta2) * grad**2"),
        "v_abs": M('v from |grad|, not grad²',
                 "v is the running mean of the SQUARED gradient (grad**2), not of its absolute value"),
        "ascent": M('the update in the wrong direction',
                 "the update goes the wrong way: subtract lr * m_hat / (sqrt(v_hat) + eps), against the " "gradient"),
        "old_moments": M('returning the old moments',
                 "return the UPDATED moments m and v (the optimizer keeps them for the next step), not " "the ones you were given"),
        "type": M("returning p alone, or float64 tensors",
                  "return a tuple (p, m, v) of three tensors, each with its input's shape and dtype"),
        "inplace": INPLACE,
    },
}


def _is_tensor(x, name: str, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        fail(f"{name} should return a torch.Tensor ({what}), got {type(x).__name__}")


@checker
def check_cross_entropy(fn) -> None:
    """Exercise 1: fn(logits (N, V), targets (N,)) -> mean of -log softmax(logits)[target]."""
    H = MISTAKES["cross_entropy"]
    g = torch.Generator().manual_seed(0)
    cases = [
        ("one row", torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])),
        ("uniform logits", torch.zeros(4, 10), torch.tensor([0, 3, 9, 5])),
        ("random", torch.randn(8, 5, generator=g), torch.randint(5, (8,), generator=g)),
        ("confident and wrong", torch.tensor([[10.0, -10.0], [-10.0, 10.0]]),
         torch.tensor([1, 1])),
        ("huge logits", torch.tensor([[1000.0, 990.0, 0.0], [-500.0, 200.0, 300.0]]),
         torch.tensor([1, 2])),
        ("a target 1000 below the best logit", torch.tensor([[1000.0, 0.0]]), torch.tensor([1])),
    ]
    for name, logits, targets in cases:
        with forbid(["torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss"],
                    "cross_entropy", H["forbidden"]):
            got = call(fn, logits.clone(), targets.clone(), name="cross_entropy")
        want = F.cross_entropy(logits, targets)
        if not isinstance(got, torch.Tensor):
            fail(f"cross_entropy returned {type(got).__name__}: {H['type'].hint}")
        if got.numel() != 1:
            fail(f"cross_entropy returned shape {tuple(got.shape)}: {H['scalar'].hint}")
        got = got.reshape(()).float()
        if torch.allclose(got, want, atol=1e-4):
            continue
        if not torch.isfinite(got):
            fail(f"case '{name}': you returned {got.item()} for logits up to "
                 f"{logits.abs().max().item():.0f}: {H['overflow'].hint}")
        if torch.allclose(got, -want, atol=1e-4):
            fail(f"case '{name}': you returned {got.item():.4f}: {H['sign'].hint}")
        N = len(targets)
        if N > 1 and torch.allclose(got, want * N, atol=1e-3):
            fail(f"case '{name}': you returned {got.item():.4f}, which is {N} x the expected "
                 f"{want.item():.4f}: {H['sum'].hint}")
        probs = torch.softmax(logits, -1)[torch.arange(N), targets]
        if torch.allclose(got, -probs.mean(), atol=1e-4) or \
                torch.allclose(got, 1 - probs.mean(), atol=1e-4):
            fail(f"case '{name}': {H['probs'].hint}")
        log_probs = torch.log_softmax(logits, -1)  # (N, V)
        if N > 1 and torch.allclose(got, -log_probs[:, targets].mean(), atol=1e-4):
            fail(f"case '{name}': {H['block'].hint}")
        lse0 = torch.logsumexp(logits, dim=0)  # (V,): over the rows, the wrong dimension
        picked = logits[torch.arange(N), targets]  # (N,)
        if lse0.shape == picked.shape or N == 1:  # shapes the student's code could subtract
            if torch.allclose(got, (lse0 - picked).mean(), atol=1e-4):
                fail(f"case '{name}': {H['dim0'].hint}")
        wrong_target = F.cross_entropy(logits, logits.argmax(-1))
        if not torch.allclose(want, wrong_target) and torch.allclose(got, wrong_target,
                                                                     atol=1e-4):
            fail(f"case '{name}': {H['argmax'].hint}")
        fail(f"case '{name}': expected {want.item():.4f}, got {got.item():.4f}. The loss of a row "
             "is logsumexp(logits) - logits[target]; the result is the mean over rows")
    passed("cross_entropy", len(cases))


@checker
def check_make_batch(fn) -> None:
    """Exercise 2: fn(ids, starts, T) -> (x, y), x[b] = ids[s:s+T], y[b] = ids[s+1:s+T+1], int64."""
    H = MISTAKES["make_batch"]
    ids = torch.arange(100, 160)  # id + 1 is always the next token: easy to read in hints
    cases = [([0], 4), ([3, 10, 20], 5), ([55], 4), ([0, 0], 1), ([7, 1, 30, 42], 8)]
    for starts, T in cases:
        got = call(fn, ids.clone(), torch.tensor(starts), T, name="make_batch")
        where = f"starts={starts}, T={T}"
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"make_batch returned {type(got).__name__}: {H['type'].hint}")
        x, y = got
        _is_tensor(x, "make_batch", "x")
        _is_tensor(y, "make_batch", "y")
        want_x = torch.stack([ids[s:s + T] for s in starts])
        want_y = torch.stack([ids[s + 1:s + T + 1] for s in starts])
        B = len(starts)
        for name, t in (("x", x), ("y", y)):
            if tuple(t.shape) != (B, T):
                key = "length" if t.dim() == 2 and t.shape[0] == B else "shape"
                fail(f"{where}: {name} has shape {tuple(t.shape)}, expected (B, T) = ({B}, {T}): "
                     f"{H[key].hint}")
            if t.dtype != torch.long:
                fail(f"{where}: {name} has dtype {t.dtype}: {H['dtype'].hint}")
        if torch.equal(x, want_y) and torch.equal(y, want_x):
            fail(f"{where}: x and y are swapped: {H['shift_back'].hint}")
        if not torch.equal(x, want_x):
            fail(f"{where}: x[0] should be ids[{starts[0]}:{starts[0] + T}] = "
                 f"{want_x[0].tolist()}, got {x[0].tolist()}: {H['x_window'].hint}")
        if torch.equal(y, x):
            fail(f"{where}: y equals x. {H['same'].hint} (here {want_y[0].tolist()})")
        if not torch.equal(y, want_y):
            key = "shift_back" if torch.equal(y, want_x - 1) else "same"
            fail(f"{where}: y[0] should be {want_y[0].tolist()} (x shifted left by one), got "
                 f"{y[0].tolist()}: {H[key].hint}")
    passed("make_batch", len(cases))


@checker
def check_lr_schedule(fn) -> None:
    """Exercise 3: fn(step, lr, min_lr, warmup_steps, total_steps) -> warm-up then cosine."""
    H = MISTAKES["lr_schedule"]
    # the last two leave no room to decay: warmup_steps == total_steps - 1 and == total_steps
    cases = [(1.0, 0.1, 10, 100), (3e-4, 3e-5, 5, 50), (1e-3, 0.0, 1, 20), (2.0, 0.5, 0, 30),
             (1.0, 0.1, 4, 12), (1.0, 0.1, 11, 12), (0.5, 0.05, 6, 6)]
    n = 0
    for lr, min_lr, warmup, total in cases:
        key_steps = [s for s in (0, warmup - 1, warmup, total - 1) if 0 <= s < total]
        order = list(dict.fromkeys(key_steps + list(range(total))))  # the telling steps first
        where = f"(lr={lr}, min_lr={min_lr}, warmup_steps={warmup}, total_steps={total})"
        for step in order:
            try:
                got = call(fn, step, lr, min_lr, warmup, total, name="lr_schedule")
            except AssertionError as e:
                if isinstance(e.__cause__, ZeroDivisionError):
                    key = "no_warmup" if warmup == 0 else "no_room"
                    fail(f"step {step} {where}: {e}\n{H[key].hint}")
                raise
            want = lr_at(step, lr, min_lr, warmup, total)
            n += 1
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                fail(f"step {step} {where}: lr_schedule returned {type(got).__name__}: "
                     f"{H['type'].hint}")
            if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                continue
            if step < warmup:
                key = "warmup_start"
            elif warmup >= total - 1:
                key = "no_room"
            elif step == total - 1 or math.isclose(got, min_lr + 0.5 * (lr - min_lr) * (
                    1 + math.cos(math.pi * (step - warmup) / (total - warmup))), rel_tol=1e-6):
                key = "last_step"
            elif step == warmup and not math.isclose(got, min_lr + 2 * (lr - min_lr)):
                key = "cosine_start"
            else:
                key = "cosine"
            extra = " (step 0 gave 0, so the first step learns nothing)" if (
                step == 0 and got == 0 and key == "warmup_start") else ""
            fail(f"step {step} {where}: expected {want:.6g}, got {got:.6g}{extra}; {H[key].hint}")
    passed("lr_schedule", n)


@checker
def check_clip_by_global_norm(fn) -> None:
    """Exercise 4: fn(grads, max_norm) -> (clipped grads, norm before clipping)."""
    H = MISTAKES["clip_by_global_norm"]
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
        # clipping in place, as torch.nn.utils.clip_grad_norm_ does, is allowed
        got = call(fn, [t.clone() for t in grads], max_norm, name="clip_by_global_norm",
                   may_change=(0,))
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"clip_by_global_norm returned {type(got).__name__}: {H['type'].hint}")
        clipped, norm = got
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in originals]
        for p, t in zip(params, originals):
            p.grad = t.clone()
        want_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not isinstance(clipped, (list, tuple)) or len(clipped) != len(grads):
            fail(f"case '{name}': {len(grads)} gradients in, "
                 f"{len(clipped) if isinstance(clipped, (list, tuple)) else 'one tensor'} out: "
                 f"{H['count'].hint}")
        for k, (c, p) in enumerate(zip(clipped, params)):
            _is_tensor(c, "clip_by_global_norm", "each clipped gradient")
            if c.shape != p.grad.shape:
                fail(f"case '{name}': gradient {k} has shape {tuple(c.shape)}, expected "
                     f"{tuple(p.grad.shape)}: {H['count'].hint}")
        norm = float(norm)
        total = want_norm.item()
        if not math.isclose(norm, total, rel_tol=1e-4):
            norms = [t.norm().item() for t in originals]
            key = ("sum_norms" if math.isclose(norm, sum(norms), rel_tol=1e-4) else
                   "no_sqrt" if math.isclose(norm, total ** 2, rel_tol=1e-4) else "norm")
            fail(f"case '{name}': the global norm is {total:.4f}, got {norm:.4f}: "
                 f"{H[key].hint}")
        if all(torch.allclose(c, p.grad, atol=1e-5) for c, p in zip(clipped, params)):
            continue
        if total <= max_norm and not all(torch.allclose(c, t) for c, t in zip(clipped, originals)):
            fail(f"case '{name}': the norm {total:.3f} is already below max_norm={max_norm}: "
                 f"{H['normalise'].hint}")
        per_tensor = [t * min(1.0, max_norm / (t.norm().item() + 1e-6)) for t in originals]
        if all(torch.allclose(c, w, atol=1e-5) for c, w in zip(clipped, per_tensor)):
            fail(f"case '{name}': {H['per_tensor'].hint}")
        fail(f"case '{name}': gradient values differ from the expected ones: "
             f"{H['factor'].hint} = {min(1.0, max_norm / total):.4f}")
    passed("clip_by_global_norm", len(cases))


def _tiny_model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.gpt2(vocab_size=16, context_length=8, d_model=16,
                                          n_layers=1, n_heads=2))


def _reference_step(model, optimizer, x, y, max_norm, clip=True, summed=False):
    optimizer.zero_grad()
    loss = lm_loss(model(x), y) * (y.numel() if summed else 1)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


@checker
def check_train_step(fn) -> None:
    """Exercise 5: fn(model, optimizer, x, y, max_norm) -> loss; three steps like lmkit's."""
    H = MISTAKES["train_step"]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(16, (4, 8), generator=g), torch.randint(16, (4, 8), generator=g))
               for _ in range(3)]
    base = _tiny_model()

    # step 1 is not clipped (so the size of the loss shows), steps 2 and 3 are
    max_norms = [100.0, 0.1, 0.1]

    def run(step_fn, **kw):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        losses, states = [], []
        for (x, y), max_norm in zip(batches, max_norms):
            losses.append(step_fn(model, opt, x, y, max_norm, **kw))
            states.append([p.detach().clone() for p in model.parameters()])
        return losses, states

    want_losses, want_states = run(_reference_step)
    _, no_clip_states = run(_reference_step, clip=False)
    _, summed_states = run(_reference_step, summed=True)
    got_losses, got_states = [], []
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    for k, (x, y) in enumerate(batches):
        loss = call(fn, model, opt, x, y, max_norms[k], name="train_step", may_change=(0, 1))
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                fail(f"train_step returned shape {tuple(loss.shape)}: {H['type'].hint}")
            loss = loss.item()
        if isinstance(loss, bool) or not isinstance(loss, (int, float)):
            fail(f"train_step returned {type(loss).__name__}: {H['type'].hint}")
        got_losses.append(loss)
        got_states.append([p.detach().clone() for p in model.parameters()])
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_states[-1],
                                                                   want_states[k]))
        if same:
            continue
        if k == 0 and all(torch.equal(a, b) for a, b in zip(got_states[0], before)):
            fail(f"step 1 did not change the weights: {H['no_update'].hint}")
        if all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_states[-1],
                                                               summed_states[k])):
            fail(f"step {k + 1}: {H['loss_fn'].hint}")
        if all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_states[-1],
                                                               no_clip_states[k])):
            fail(f"step {k + 1}: {H['no_clip'].hint}")
        if k > 0:
            fail(f"step 1 matched but step {k + 1} did not: {H['no_zero_grad'].hint}")
        fail("step 1 gave different weights than zero_grad -> forward -> loss -> backward -> "
             "clip -> step")
    for k, (a, b) in enumerate(zip(got_losses, want_losses)):
        if not math.isclose(a, b, rel_tol=1e-5):
            fail(f"step {k + 1}: returned loss {a:.4f}, expected {b:.4f}: {H['loss_value'].hint}")
    passed("train_step", len(batches))


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
    (dict(bias_correction=False), "no_bias_correction"),
    (dict(t_shift=-1), "t_minus_1"),
    (dict(t_shift=1), "t_plus_1"),
    (dict(decay="l2"), "l2"),
    (dict(decay="no_lr"), "decay_no_lr"),
    (dict(decay="none"), "no_decay"),
    (dict(decay_after=True), "decay_after"),
    (dict(eps_uncorrected=True), "eps_paper"),
    (dict(eps_inside=True), "eps_inside"),
    (dict(sqrt=False), "no_sqrt"),
    (dict(swap_betas=True), "swap_betas"),
    (dict(v_from=lambda g: g), "v_not_squared"),
    (dict(v_from=lambda g: g.abs()), "v_abs"),
    (dict(sign=-1.0), "ascent"),
    (dict(old_moments=True), "old_moments"),
]


@checker
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
                 f"{type(got).__name__}" + (" (did you forget `return`?)" if got is None else "")
                 + f": {MISTAKES['adamw_step']['type'].hint}")
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
        for switches, key in ADAMW_MISTAKES:
            hint = MISTAKES["adamw_step"][key].hint
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
