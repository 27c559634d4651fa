"""The chapter 12 checkers accept correct answers and reject typical mistakes with a useful hint."""

import math

import pytest
import torch
import torch.distributed as dist  # noqa: F401 (the all-reduce answers below use it)
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected

from lmkit.checks import ch12
from lmkit.train import lm_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


@pytest.mark.parametrize("check", [ch12.check_training_memory, ch12.check_accumulate_gradients,
                                   ch12.check_all_reduce_mean, ch12.check_profile_summary])
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


# ------------------------------------------------------------------ 1: memory

STATES = {"sgd": 0, "momentum": 1, "adamw": 2}


def memory(n, optimizer, world_size, sharded):
    total = n * 4 * (2 + STATES[optimizer])
    return total // world_size if sharded else total


def memory_wrong(change):
    def fn(n, optimizer, world_size, sharded):
        return change(n, STATES[optimizer], world_size if sharded else 1, world_size)
    return fn


MEMORY_MISTAKES = [
    (lambda n, s, d, w: n * 4 * (1 + s) / d, "left out the gradients"),
    (lambda n, s, d, w: n * 32 * (2 + s) / d, "counted bits"),
    (lambda n, s, d, w: n * 2 * (2 + s) / d, "not 2"),
    (lambda n, s, d, w: n * (2 + s) / d, "counted values, not bytes"),
    (lambda n, s, d, w: n * 4 * (2 + s) / d / 2**20, "not megabytes"),
    (lambda n, s, d, w: n * 4 * (2 + s), "divide by world_size"),
    (lambda n, s, d, w: n * 4 * (2 + s) / w, "FULL copy"),
    (lambda n, s, d, w: n * 8 + n * 4 * s / d, "not only the optimizer states"),
    (lambda n, s, d, w: n * 4 * (2 + {2: 1, 1: 1, 0: 0}[s]) / d, "TWO values per parameter"),
    (lambda n, s, d, w: n * 4 * (2 + {2: 3, 1: 1, 0: 0}[s]) / d, "not three"),
    (lambda n, s, d, w: n * 4 * (2 + {2: 2, 1: 2, 0: 0}[s]) / d, "ONE value per parameter"),
    (lambda n, s, d, w: n * 4 * (2 + {2: 2, 1: 1, 0: 1}[s]) / d, "no state at all"),
]


def test_training_memory(capsys):
    ch12.check_training_memory(memory)
    assert "✓ training_memory" in capsys.readouterr().out
    assert memory(7_000_000_000, "adamw", 1, False) == 112_000_000_000  # 16 bytes/param


@pytest.mark.parametrize("change,hint", MEMORY_MISTAKES)
def test_training_memory_mistakes(change, hint):
    with pytest.raises(AssertionError, match=hint):
        ch12.check_training_memory(memory_wrong(change))


# ------------------------------------------------------------ 2: accumulation


def accumulate(model, x, y, K):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for xk, yk in zip(x.chunk(K), y.chunk(K)):
        loss = lm_loss(model(xk), yk) / K
        loss.backward()
        total += loss.item()
    return total


def accumulate_factory(divide=True, zero_first=True, zero_inside=False, dim=0, only=None,
                       ret="mean", by_batch=False, in_place=False):
    def fn(model, x, y, K):
        if zero_first:
            model.zero_grad(set_to_none=True)
        pieces = list(zip(x.chunk(K, dim=dim), y.chunk(K, dim=dim)))
        if only == "last":
            pieces = pieces[-1:]
        elif only == "first":
            pieces = pieces[:1]
        losses = []
        for xk, yk in pieces:
            if zero_inside:
                model.zero_grad(set_to_none=True)
            loss = lm_loss(model(xk), yk)
            scale = (1 / x.shape[0]) if by_batch else (1 / K if divide else 1.0)
            (loss * scale).backward()
            losses.append(loss.item())
        if in_place:
            x.zero_()
        return {"mean": sum(losses) / len(losses), "sum": sum(losses),
                "last": losses[-1]}[ret]
    return fn


ACCUM_MISTAKES = [
    (dict(divide=False), "times too large"),
    (dict(zero_first=False), "previous step's"),
    (dict(zero_inside=True), "only the last micro-batch's gradient survived: don't zero the "
     "gradients between micro-batches; backward"),
    (dict(zero_inside=True, divide=False), "and divide each loss by K"),
    (dict(by_batch=True), "not by the batch size"),
    (dict(only="first"), "only the first micro-batch"),
    (dict(dim=1), "split along the sequence"),
    (dict(ret="sum"), "sum of the micro-batch losses"),
    (dict(ret="last"), "only the last micro-batch's loss"),
    (dict(in_place=True), "changed one of its input tensors in place, `x`"),
]


def test_accumulate_gradients(capsys):
    ch12.check_accumulate_gradients(accumulate)
    assert "✓ accumulate_gradients" in capsys.readouterr().out
    ch12.check_accumulate_gradients(accumulate_factory())  # the factory's default is right


@pytest.mark.parametrize("changes,hint", ACCUM_MISTAKES)
def test_accumulate_gradients_mistakes(changes, hint):
    with pytest.raises(AssertionError, match=hint):
        ch12.check_accumulate_gradients(accumulate_factory(**changes))


def whole_batch(model, x, y, K):  # no accumulation at all: the big batch itself
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model(x), y)
    loss.backward()
    return loss.item()


def one_backward(model, x, y, K):  # K forwards, then one backward: every activation kept
    model.zero_grad(set_to_none=True)
    loss = torch.stack([lm_loss(model(xk), yk) for xk, yk in zip(x.chunk(K), y.chunk(K))]).mean()
    loss.backward()
    return loss.item()


def extra_forward(model, x, y, K):  # a grad-enabled forward of the whole batch for the loss
    accumulate(model, x, y, K)
    return lm_loss(model(x), y).item()


def loss_without_grad(model, x, y, K):  # right: the forward under no_grad is not training
    accumulate(model, x, y, K)
    with torch.no_grad():
        return lm_loss(model(x), y).item()


ACCUM_ORDER_MISTAKES = [
    (whole_batch, "whole batch in one forward and one backward"),
    (one_backward, "you called backward once, after all K forward passes"),
    (extra_forward, "expected K=2 rounds of \\(forward on B/K=4 windows, then backward\\)"),
]


@pytest.mark.parametrize("fn,hint", ACCUM_ORDER_MISTAKES, ids=lambda v: getattr(v, "__name__", ""))
def test_accumulate_gradients_must_accumulate(fn, hint):
    """Right gradients and loss are not enough: the micro-batches must run one at a time."""
    with pytest.raises(AssertionError, match=hint):
        ch12.check_accumulate_gradients(fn)


def test_accumulate_gradients_allows_a_forward_without_grad(capsys):
    ch12.check_accumulate_gradients(loss_without_grad)
    assert "✓ accumulate_gradients" in capsys.readouterr().out


# -------------------------------------------------------------- 3: all-reduce


def all_reduce_mean(t):
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def summed(t):
    out = t.clone()
    dist.all_reduce(out)
    return out


def divided_twice(t):
    out = t.clone() / dist.get_world_size()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def no_communication(t):
    return t / dist.get_world_size()


def in_place(t):
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return t


def broadcast_rank0(t):
    out = t.clone()
    dist.broadcast(out, src=0)
    return out


def maximum(t):
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def reduce_to_rank0(t):
    out = t.clone()
    dist.reduce(out, dst=0)
    return out / dist.get_world_size()


def average_op(t):  # correct too: gloo has ReduceOp.AVG in this PyTorch
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.AVG)
    return out


def element_mean(t):
    out = t.clone()
    dist.all_reduce(out)
    return out.mean() / dist.get_world_size()


def gathered(t):
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.stack(parts)


def by_rank(t):
    out = t.clone()
    dist.all_reduce(out)
    return out / (dist.get_rank() + 1)


def forgot_return(t):
    out = t.clone()
    dist.all_reduce(out)
    out /= dist.get_world_size()


def to_float64(t):
    out = t.double()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def divided_by_two(t):  # right on two processes only
    out = t.clone()
    dist.all_reduce(out)
    return out / 2


ALL_REDUCE_MISTAKES = [
    (to_float64, "keep the input's dtype"),
    (summed, "SUM of the tensors"),
    (divided_twice, "world size twice"),
    (no_communication, "no communication"),
    (in_place, "in place"),
    (broadcast_rank0, "broadcast"),
    (maximum, "MAX"),
    (reduce_to_rank0, "only rank 0 got the average"),
    (element_mean, "averages the tensor's elements"),
    (gathered, "gather or stack"),
    (by_rank, "rank \\+ 1"),
    (forgot_return, "returned None"),
]


@pytest.mark.slow  # starts two Python processes
def test_all_reduce_mean(capsys):
    ch12.check_all_reduce_mean(all_reduce_mean)
    assert "✓ all_reduce_mean" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="SUM of the tensors"):
        ch12.check_all_reduce_mean(summed)


@pytest.mark.slow
def test_all_reduce_mean_mistakes():
    """Every wrong answer, run in one pair of processes, gets the hint meant for it."""
    hints = ch12.all_reduce_hints([all_reduce_mean, average_op]
                                  + [fn for fn, _ in ALL_REDUCE_MISTAKES])
    assert hints[:2] == [None, None]
    for (fn, expected), hint in zip(ALL_REDUCE_MISTAKES, hints[2:]):
        assert hint is not None and __import__("re").search(expected, hint), (fn.__name__, hint)


@pytest.mark.slow
def test_all_reduce_mean_on_three_processes():
    """A world size written in as 2 passes on two processes; the check also runs three."""
    assert ch12.all_reduce_hints([all_reduce_mean, average_op, divided_by_two], world=3) == [
        None, None, "right on 2 processes, but on 3 you divided the sum by 2: the number of "
        "processes is dist.get_world_size(), do not write it in"]
    assert ch12.all_reduce_hints([divided_by_two])[0] is None  # why two processes are not enough
    with pytest.raises(AssertionError, match="on 3 you divided the sum by 2"):
        ch12.check_all_reduce_mean(divided_by_two)


# -------------------------------------------------------------- 4: profiler


def ms(s):
    return float(s[:-2]) / 1000 if s.endswith("us") else float(s[:-2])


def summary(rows, matmul=("aten::addmm", "aten::mm", "aten::bmm"), self_time=ms, top_col=1,
            scale=1.0, per_call=True, total_for_share=False, top_total_col=2):
    self_ms = [self_time(r[1]) for r in rows]
    total_ms = [ms(r[2]) for r in rows]
    top = max(range(len(rows)), key=[self_ms, total_ms][top_col - 1].__getitem__)
    top_total = max(range(len(rows)), key=[self_ms, total_ms][top_total_col - 1].__getitem__)
    times = total_ms if total_for_share else self_ms
    share = sum(t for r, t in zip(rows, times) if r[0] in matmul) / sum(times) * scale
    return {"top_self": rows[top][0], "top_total": rows[top_total][0], "matmul_share": share,
            "ms_per_call": self_ms[top] / rows[top][3] if per_call else self_ms[top]}


def summary_us(rows):
    out = summary(rows)
    out["ms_per_call"] *= 1000
    return out


PROFILE_MISTAKES = [
    (dict(top_col=2), "largest SELF time"),
    (dict(self_time=lambda s: float(s[:-2])), "mixes units"),
    (dict(scale=100.0), "not a percentage"),
    (dict(per_call=False), "divided by its number of calls"),
    (dict(matmul=("aten::mm",)), "are matrix products too"),
    (dict(matmul=("aten::mm", "aten::bmm")), "aten::addmm .* is a matrix product too"),
    (dict(matmul=("aten::addmm", "aten::mm", "aten::bmm", "aten::linear")),
     "aten::linear does almost nothing itself"),
    (dict(total_for_share=True), "use the SELF times for shares"),
    (dict(top_total_col=1), "top_total is the op with the largest CPU TOTAL"),
]


def test_profile_summary(capsys):
    ch12.check_profile_summary(summary)
    assert "✓ profile_summary" in capsys.readouterr().out
    got = summary(ch12.PROFILE_TABLE)
    assert got["top_self"] == "aten::addmm" and got["top_total"] == "aten::linear"
    assert math.isclose(got["ms_per_call"], 61.207 / 38)
    with pytest.raises(AssertionError, match="milliseconds"):
        ch12.check_profile_summary(summary_us)


@pytest.mark.parametrize("changes,hint", PROFILE_MISTAKES)
def test_profile_summary_mistakes(changes, hint):
    with pytest.raises(AssertionError, match=hint):
        ch12.check_profile_summary(lambda rows: summary(rows, **changes))


# -------------------------------------------------------------- the catalogue (tests/catalogue.py)
# Every wrong answer above, filed under the MISTAKES entry whose hint it must get.

def _own(t):
    return t.clone()


_MEMORY_KEYS = ["no_grads", "bits", "half", "values", "megabytes", "not_divided", "ddp_divided",
                "states_only", "adamw_one", "adamw_three", "momentum_two", "sgd_state"]
_ACCUM_KEYS = ["times_K", "stale", "zero_inside", "zero_inside_undivided", "by_batch",
               "first_only", "dim1", "loss_sum", "loss_last", "inplace"]
_REDUCE_KEYS = ["sum", "twice", "no_comm", "inplace", "broadcast", "max", "reduce",
                "element_mean", "shape", "by_rank", "no_return"]
_PROFILE_KEYS = ["by_total", "units", "percent", "per_call", "only_mm", "no_addmm", "linear",
                 "total_share", "top_total_self"]

CATALOGUE = (
    [Wrong("training_memory", k, memory_wrong(change))
     for k, (change, _) in zip(_MEMORY_KEYS, MEMORY_MISTAKES, strict=True)]
    + [Wrong("training_memory", "type", lambda n, o, w, s: f"{memory(n, o, w, s)} bytes")]
    + [Wrong("accumulate_gradients", k, accumulate_factory(**changes))
       for k, (changes, _) in zip(_ACCUM_KEYS, ACCUM_MISTAKES, strict=True)]
    + [Wrong("accumulate_gradients", "one_pass", whole_batch),
       Wrong("accumulate_gradients", "one_backward", one_backward),
       Wrong("accumulate_gradients", "loss_type", lambda m, x, y, K: accumulate(m, x, y, K) and None)]
    + [Wrong("all_reduce_mean", k, fn)
       for k, (fn, _) in zip(_REDUCE_KEYS, ALL_REDUCE_MISTAKES[1:], strict=True)]
    + [Wrong("all_reduce_mean", "dtype", to_float64), Wrong("all_reduce_mean", "own", _own),
       Wrong("all_reduce_mean", "world_size", divided_by_two)]
    + [Wrong("profile_summary", k, (lambda ch: lambda rows: summary(rows, **ch))(changes))
       for k, (changes, _) in zip(_PROFILE_KEYS, PROFILE_MISTAKES, strict=True)]
    + [Wrong("profile_summary", "microseconds", summary_us),
       Wrong("profile_summary", "keys", lambda rows: list(summary(rows).values()))]
)
SOLUTIONS = {"training_memory": memory, "accumulate_gradients": accumulate,
             "all_reduce_mean": all_reduce_mean, "profile_summary": summary}


def test_catalogue_complete():
    assert_complete(ch12, CATALOGUE, SOLUTIONS)


@pytest.mark.parametrize("wrong", [w for w in CATALOGUE if w.exercise != "all_reduce_mean"],
                         ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong):
    assert_rejected(ch12, wrong)


@pytest.mark.parametrize("exercise", ["training_memory", "accumulate_gradients",
                                      "profile_summary"])
def test_solution_passes_without_warnings(exercise, capsys):
    assert_passes(ch12, exercise, SOLUTIONS[exercise], capsys)


@pytest.mark.slow
def test_all_reduce_catalogue_gets_its_hints():
    """The all-reduce answers run together (one group of processes per world size, rather than
    one per answer); each must get its table hint."""
    wrong = [w for w in CATALOGUE if w.exercise == "all_reduce_mean"]
    two = [w for w in wrong if w.mistake != "world_size"]
    three = [w for w in wrong if w.mistake == "world_size"]
    for w, hint in zip(two, ch12.all_reduce_hints([w.fn for w in two])):
        assert hint is not None and ch12.MISTAKES[w.exercise][w.mistake].hint in hint, (w.id, hint)
    for w, hint in zip(three, ch12.all_reduce_hints([w.fn for w in three], world=3)):
        assert hint is not None and ch12.MISTAKES[w.exercise][w.mistake].hint in hint, (w.id, hint)
