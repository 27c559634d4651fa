"""The chapter 07 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import math

import pytest
import test_checks_ch07_adamw as adamw
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch07
from lmkit.train import lm_loss, lr_at

# ----------------------------------------------------------------- exercise 1: cross_entropy


def cross_entropy(logits, targets):
    lse = torch.logsumexp(logits, dim=-1)
    return (lse - logits[torch.arange(len(targets)), targets]).mean()


def naive(logits, targets):  # no log-sum-exp: exp(1000) overflows
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return -p[torch.arange(len(targets)), targets].log().mean()


def shift_in_place(logits, targets):
    logits -= logits.max(dim=-1, keepdim=True).values
    return cross_entropy(logits, targets)


def rows(logits, targets):
    return torch.logsumexp(logits, -1) - logits[torch.arange(len(targets)), targets]


W1 = [
    Wrong("cross_entropy", "overflow", naive),
    Wrong("cross_entropy", "sum", lambda lg, t: rows(lg, t).sum()),
    Wrong("cross_entropy", "probs", lambda lg, t: -torch.softmax(lg, -1)[torch.arange(len(t)), t]
          .mean()),
    Wrong("cross_entropy", "block", lambda lg, t: -torch.log_softmax(lg, -1)[:, t].mean()),
    Wrong("cross_entropy", "dim0", lambda lg, t: (torch.logsumexp(lg, 0) - lg[torch.arange(
        len(t)), t]).mean()),
    Wrong("cross_entropy", "argmax", lambda lg, t: rows(lg, lg.argmax(-1)).mean()),
    Wrong("cross_entropy", "scalar", rows),
    Wrong("cross_entropy", "sign", lambda lg, t: -cross_entropy(lg, t)),
    Wrong("cross_entropy", "type", lambda lg, t: cross_entropy(lg, t).item()),
    Wrong("cross_entropy", "inplace", shift_in_place),
]

# ----------------------------------------------------------------- exercise 2: make_batch


def batch(dx=0, dy=1, dtype=None, length=0, stack=True):
    def f(ids, starts, T):
        x = [ids[s + dx: s + dx + T + length] for s in starts.tolist()]
        y = [ids[s + dy: s + dy + T + length] for s in starts.tolist()]
        if not stack:
            return torch.cat(x), torch.cat(y)
        x, y = torch.stack(x), torch.stack(y)
        if dtype is not None:
            x, y = x, y.to(dtype)
        return x, y
    return f


def overwrites(ids, starts, T):
    x, y = batch()(ids, starts, T)
    ids[:] = 0  # "frees" the ids
    return x, y


W2 = [
    Wrong("make_batch", "dtype", batch(dtype=torch.int32)),
    Wrong("make_batch", "dtype", batch(dtype=torch.float32)),
    Wrong("make_batch", "same", batch(dy=0)),
    Wrong("make_batch", "same", batch(dy=2)),
    Wrong("make_batch", "shift_back", batch(dx=1, dy=0)),
    Wrong("make_batch", "x_window", batch(dx=1, dy=2)),
    Wrong("make_batch", "shape", lambda ids, s, T: tuple(t.T for t in batch()(ids, s, T))),
    Wrong("make_batch", "shape", batch(stack=False)),
    Wrong("make_batch", "length", batch(length=1)),
    Wrong("make_batch", "type", lambda ids, s, T: list(batch()(ids, s, T))),
    Wrong("make_batch", "inplace", overwrites),
]

# ----------------------------------------------------------------- exercise 3: lr_schedule


def schedule(warm_plus=1, denom_minus=1, guard=True, linear=False, half=0.5, start_shift=0,
             warm_guard=True):
    def f(step, lr, min_lr, warmup, total):
        if (step < warmup) if warm_guard else (min(1.0, (step + warm_plus) / warmup) < 1
                                                or step < warmup):
            return lr * (step + warm_plus) / warmup
        decay = total - denom_minus - warmup
        if guard and (decay <= 0 or step >= total - 1):
            return min_lr
        progress = (step - warmup + start_shift) / decay
        if linear:
            return lr - (lr - min_lr) * progress
        return min_lr + half * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    return f


def no_min(step, lr, min_lr, warmup, total):
    if step < warmup:
        return lr * (step + 1) / warmup
    decay = total - 1 - warmup
    if decay <= 0 or step >= total - 1:
        return min_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / decay))


W3 = [
    Wrong("lr_schedule", "warmup_start", schedule(warm_plus=0)),
    Wrong("lr_schedule", "last_step", schedule(denom_minus=0)),
    Wrong("lr_schedule", "cosine_start", schedule(start_shift=1)),
    Wrong("lr_schedule", "cosine", schedule(linear=True)),
    Wrong("lr_schedule", "cosine", schedule(half=1.0)),
    Wrong("lr_schedule", "cosine", no_min),
    Wrong("lr_schedule", "no_room", schedule(guard=False)),
    Wrong("lr_schedule", "no_warmup", schedule(warm_guard=False)),
    Wrong("lr_schedule", "type", lambda *a: torch.tensor([lr_at(*a)] * 2)),
    Wrong("lr_schedule", "type", lambda *a: None),
]

# ----------------------------------------------------------------- exercise 4: clip_by_global_norm


def clip(norm=lambda gs: torch.sqrt(sum((g ** 2).sum() for g in gs)), always=False,
         per_tensor=False, upside_down=False, keep=None):
    def f(grads, max_norm):
        total = norm(grads)
        if per_tensor:
            return [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads], total
        s = (total.item() / max_norm if upside_down else max_norm / (total.item() + 1e-6))
        scale = s if always else min(1.0, s)
        out = [g * scale for g in grads]
        return (out if keep is None else keep(out)), total
    return f


def clip_in_place(grads, max_norm):  # like clip_grad_norm_: allowed
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    for g in grads:
        g.mul_(min(1.0, max_norm / (total.item() + 1e-6)))
    return grads, total


W4 = [
    Wrong("clip_by_global_norm", "sum_norms", clip(norm=lambda gs: sum(g.norm() for g in gs))),
    Wrong("clip_by_global_norm", "no_sqrt", clip(norm=lambda gs: sum((g ** 2).sum() for g in gs))),
    Wrong("clip_by_global_norm", "norm", clip(norm=lambda gs: max(g.norm() for g in gs))),
    Wrong("clip_by_global_norm", "norm", clip(norm=lambda gs: torch.cat([g.flatten() for g in gs])
                                              .abs().mean())),
    Wrong("clip_by_global_norm", "normalise", clip(always=True)),
    Wrong("clip_by_global_norm", "per_tensor", clip(per_tensor=True)),
    Wrong("clip_by_global_norm", "factor", clip(upside_down=True)),
    Wrong("clip_by_global_norm", "count", clip(keep=lambda out: torch.cat([g.flatten()
                                                                           for g in out]))),
    Wrong("clip_by_global_norm", "count", clip(keep=lambda out: out[:1])),
    Wrong("clip_by_global_norm", "type", lambda grads, m: clip()(grads, m)[0]),
]

# ----------------------------------------------------------------- exercise 5: train_step


def step(zero="first", clip_at="after_backward", do_step=True, backward=True, ret="item",
         loss_after=False):
    def f(model, optimizer, x, y, max_norm):
        if zero == "first":
            optimizer.zero_grad()
        loss = lm_loss(model(x), y)
        if clip_at == "before_backward":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if backward:
            loss.backward()
        if zero == "after_backward":
            optimizer.zero_grad()
        if clip_at == "after_backward":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if do_step:
            optimizer.step()
        if clip_at == "after_step":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if loss_after:
            with torch.no_grad():
                loss = lm_loss(model(x), y)
        return {"item": lambda: loss.item(), "none": lambda: None,
                "rows": lambda: F.cross_entropy(model(x).flatten(0, 1), y.flatten(),
                                                reduction="none")}[ret]()
    return f


W5 = [
    Wrong("train_step", "no_update", step(backward=False)),
    Wrong("train_step", "no_update", step(zero="after_backward")),
    Wrong("train_step", "no_update", step(do_step=False)),
    Wrong("train_step", "no_clip", step(clip_at="before_backward")),
    Wrong("train_step", "no_clip", step(clip_at="after_step")),
    Wrong("train_step", "no_clip", step(clip_at=None)),
    Wrong("train_step", "no_zero_grad", step(zero=None)),
    Wrong("train_step", "loss_value", step(loss_after=True)),
    Wrong("train_step", "type", step(ret="none")),
    Wrong("train_step", "type", step(ret="rows")),
]

# exercise 6 (one AdamW step): its wrong answers live in tests/test_checks_ch07_adamw.py
_ADAMW_KEYS = {"no_bias_correction": "no_bias_correction",
               "bias_correction_t_minus_1": "t_minus_1", "bias_correction_t_plus_1": "t_plus_1",
               "l2_instead_of_decoupled": "l2", "decay_without_lr": "decay_no_lr",
               "forgot_decay": "no_decay", "decay_after_update": "decay_after",
               "eps_inside_sqrt": "eps_inside", "adam_paper_form": "eps_paper",
               "no_sqrt": "no_sqrt", "swapped_betas": "swap_betas",
               "v_not_squared": "v_not_squared", "v_of_abs": "v_abs",
               "gradient_ascent": "ascent", "returns_old_moments": "old_moments"}
W6 = [Wrong("adamw_step", _ADAMW_KEYS[fn.__name__], fn) for fn, _ in adamw.CATALOGUE
      if fn.__name__ in _ADAMW_KEYS]
W6 += [Wrong("adamw_step", "inplace", adamw.in_place),
       Wrong("adamw_step", "type", adamw.returns_p_only)]

CATALOGUE = W1 + W2 + W3 + W4 + W5 + W6
SOLUTIONS = {"cross_entropy": cross_entropy, "make_batch": batch(), "lr_schedule": lr_at,
             "clip_by_global_norm": clip(), "train_step": step(), "adamw_step": adamw.good}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys):
    assert_passes(ch07, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch07, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch07, wrong)


def test_catalogue_complete():
    assert_complete(ch07, CATALOGUE, SOLUTIONS)


def test_alternatives_pass(capsys):
    ch07.check_clip_by_global_norm(clip_in_place)  # in place, as clip_grad_norm_ does
    ch07.check_cross_entropy(lambda lg, t: -torch.log_softmax(lg, -1)[torch.arange(len(t)), t]
                             .mean())
    assert capsys.readouterr().out.count("✓") == 2


def test_int32_targets_really_fail_in_cross_entropy():
    """Why make_batch must keep int64: the issue's int32 targets break F.cross_entropy."""
    with pytest.raises(RuntimeError):
        F.cross_entropy(torch.randn(3, 5), torch.tensor([1, 2, 3], dtype=torch.int32))


def summed_loss(model, optimizer, x, y, max_norm):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item() / y.numel()


def log_of_softmax(logits, targets):
    return -torch.softmax(logits, -1)[torch.arange(len(targets)), targets].log().mean()


REVIEW = [
    Wrong("cross_entropy", "forbidden", lambda lg, t: F.cross_entropy(lg, t)),
    Wrong("cross_entropy", "forbidden", lambda lg, t: F.nll_loss(torch.log_softmax(lg, -1), t)),
    Wrong("cross_entropy", "overflow", log_of_softmax),
    Wrong("train_step", "loss_fn", summed_loss),
]
CATALOGUE += REVIEW


@pytest.mark.parametrize("wrong", REVIEW, ids=lambda w: w.id)
def test_review_wrong_answers(wrong):
    assert_rejected(ch07, wrong)
