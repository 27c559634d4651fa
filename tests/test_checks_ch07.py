"""The chapter 07 checkers accept correct answers and reject typical mistakes with a useful hint."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch07
from lmkit.train import lm_loss, lr_at


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize("check", [ch07.check_cross_entropy, ch07.check_make_batch,
                                   ch07.check_lr_schedule, ch07.check_clip_by_global_norm,
                                   ch07.check_train_step])
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def test_cross_entropy(capsys):
    def good(logits, targets):
        lse = torch.logsumexp(logits, dim=-1)
        return (lse - logits[torch.arange(len(targets)), targets]).mean()

    ch07.check_cross_entropy(good)
    assert "✓ cross_entropy" in capsys.readouterr().out

    def naive(logits, targets):  # no log-sum-exp: exp(1000) overflows
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -p[torch.arange(len(targets)), targets].log().mean()

    with pytest.raises(AssertionError, match="log-sum-exp"):
        ch07.check_cross_entropy(naive)
    with pytest.raises(AssertionError, match="you summed"):
        ch07.check_cross_entropy(lambda lg, t: F.cross_entropy(lg, t, reduction="sum"))
    with pytest.raises(AssertionError, match="not log-probabilities"):
        ch07.check_cross_entropy(
            lambda lg, t: -torch.softmax(lg, -1)[torch.arange(len(t)), t].mean())
    with pytest.raises(AssertionError, match="most likely token, not the target"):
        ch07.check_cross_entropy(lambda lg, t: F.cross_entropy(lg, lg.argmax(-1)))
    with pytest.raises(AssertionError, match="one number"):
        ch07.check_cross_entropy(lambda lg, t: F.cross_entropy(lg, t, reduction="none"))

    def column_indexing(logits, targets):  # [:, targets] takes an (N, N) block
        return -torch.log_softmax(logits, -1)[:, targets].mean()

    with pytest.raises(AssertionError, match=r"picks an \(N, N\) block"):
        ch07.check_cross_entropy(column_indexing)

    def wrong_dim(logits, targets):  # logsumexp over the rows instead of the vocabulary
        return (torch.logsumexp(logits, dim=0) - logits[torch.arange(len(targets)), targets]).mean()

    with pytest.raises(AssertionError, match="logsumexp over the rows"):
        ch07.check_cross_entropy(wrong_dim)


def test_make_batch(capsys):
    def good(ids, starts, T):
        x = torch.stack([ids[s:s + T] for s in starts])
        y = torch.stack([ids[s + 1:s + T + 1] for s in starts])
        return x, y

    ch07.check_make_batch(good)
    assert "✓ make_batch" in capsys.readouterr().out

    def unshifted(ids, starts, T):
        x = torch.stack([ids[s:s + T] for s in starts])
        return x, x.clone()

    with pytest.raises(AssertionError, match="NEXT token"):
        ch07.check_make_batch(unshifted)

    def backwards(ids, starts, T):  # shifted the wrong way
        x = torch.stack([ids[s + 1:s + T + 1] for s in starts])
        y = torch.stack([ids[s:s + T] for s in starts])
        return x, y

    with pytest.raises(AssertionError, match=r"x\[0\] should be"):
        ch07.check_make_batch(backwards)
    with pytest.raises(AssertionError, match="expected \\(B, T\\)"):
        ch07.check_make_batch(lambda ids, s, T: tuple(t.flatten() for t in good(ids, s, T)))


def test_lr_schedule(capsys):
    ch07.check_lr_schedule(lr_at)
    assert "✓ lr_schedule" in capsys.readouterr().out

    def warmup_from_zero(step, lr, min_lr, warmup, total):
        if step < warmup:
            return lr * step / warmup
        return lr_at(step, lr, min_lr, warmup, total)

    with pytest.raises(AssertionError, match="step 0 gave 0"):
        ch07.check_lr_schedule(warmup_from_zero)

    def never_reaches_min(step, lr, min_lr, warmup, total):
        import math
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)  # off by one: 1 only after the last step
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))

    with pytest.raises(AssertionError, match="land exactly on min_lr"):
        ch07.check_lr_schedule(never_reaches_min)


def test_clip_by_global_norm(capsys):
    def good(grads, max_norm):
        total = torch.sqrt(sum((g ** 2).sum() for g in grads))
        scale = min(1.0, max_norm / (total.item() + 1e-6))
        return [g * scale for g in grads], total

    ch07.check_clip_by_global_norm(good)
    assert "✓ clip_by_global_norm" in capsys.readouterr().out

    def per_tensor(grads, max_norm):
        total = torch.sqrt(sum((g ** 2).sum() for g in grads))
        return [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads], total

    with pytest.raises(AssertionError, match="clipped each tensor separately"):
        ch07.check_clip_by_global_norm(per_tensor)

    def normalise(grads, max_norm):
        total = torch.sqrt(sum((g ** 2).sum() for g in grads))
        return [g * max_norm / total for g in grads], total

    with pytest.raises(AssertionError, match="already below max_norm"):
        ch07.check_clip_by_global_norm(normalise)

    def norm_sum(grads, max_norm):
        clipped, _ = good(grads, max_norm)
        return clipped, sum(g.norm() for g in grads)

    with pytest.raises(AssertionError, match="global norm is"):
        ch07.check_clip_by_global_norm(norm_sum)


def good_step(model, optimizer, x, y, max_norm):
    optimizer.zero_grad()
    loss = lm_loss(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


def test_train_step(capsys):
    ch07.check_train_step(good_step)
    assert "✓ train_step" in capsys.readouterr().out

    def no_zero_grad(model, optimizer, x, y, max_norm):
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return loss.item()

    with pytest.raises(AssertionError, match="zero_grad"):
        ch07.check_train_step(no_zero_grad)

    def clip_too_early(model, optimizer, x, y, max_norm):
        optimizer.zero_grad()
        loss = lm_loss(model(x), y)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # no gradients yet
        loss.backward()
        optimizer.step()
        return loss.item()

    with pytest.raises(AssertionError, match="never clipped"):
        ch07.check_train_step(clip_too_early)

    def step_before_backward(model, optimizer, x, y, max_norm):
        optimizer.zero_grad()
        loss = lm_loss(model(x), y)
        optimizer.step()
        loss.backward()
        return loss.item()

    with pytest.raises(AssertionError, match="did not change the weights"):
        ch07.check_train_step(step_before_backward)

    def zero_grad_after_backward(model, optimizer, x, y, max_norm):
        loss = lm_loss(model(x), y)
        loss.backward()
        optimizer.zero_grad()  # erases the gradients backward() just computed
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return loss.item()

    with pytest.raises(AssertionError, match="zero_grad between backward and step"):
        ch07.check_train_step(zero_grad_after_backward)
