"""The chapter 12 checkers accept correct answers and reject typical mistakes with a useful hint."""

import math

import pytest
import torch
import torch.distributed as dist  # noqa: F401 (the all-reduce answers below use it)
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch12
from lmkit.train import lm_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("exercise", ["training_memory", "accumulate_gradients",
                                      "all_reduce_mean", "profile_summary"])
def test_stub_fails(exercise):
    assert_stub_raises(ch12, exercise)


# ------------------------------------------------------------------ 1: memory

STATES = {"sgd": 0, "momentum": 1, "adamw": 2}


def memory(n, optimizer, world_size, sharded):
    total = n * 4 * (2 + STATES[optimizer])
    return total // world_size if sharded else total


def memory_wrong(change):
    def fn(n, optimizer, world_size, sharded):
        return change(n, STATES[optimizer], world_size if sharded else 1, world_size)
    return fn


MEMORY_WRONG = {  # n parameters, s states each, divided by d (sharded) of w processes
    "no_grads": lambda n, s, d, w: n * 4 * (1 + s) / d,
    "bits": lambda n, s, d, w: n * 32 * (2 + s) / d,
    "half": lambda n, s, d, w: n * 2 * (2 + s) / d,
    "values": lambda n, s, d, w: n * (2 + s) / d,
    "megabytes": lambda n, s, d, w: n * 4 * (2 + s) / d / 2**20,
    "not_divided": lambda n, s, d, w: n * 4 * (2 + s),
    "ddp_divided": lambda n, s, d, w: n * 4 * (2 + s) / w,
    "states_only": lambda n, s, d, w: n * 8 + n * 4 * s / d,
    "adamw_one": lambda n, s, d, w: n * 4 * (2 + {2: 1, 1: 1, 0: 0}[s]) / d,
    "adamw_three": lambda n, s, d, w: n * 4 * (2 + {2: 3, 1: 1, 0: 0}[s]) / d,
    "momentum_two": lambda n, s, d, w: n * 4 * (2 + {2: 2, 1: 2, 0: 0}[s]) / d,
    "sgd_state": lambda n, s, d, w: n * 4 * (2 + {2: 2, 1: 1, 0: 1}[s]) / d,
}


def test_training_memory(capsys):
    ch12.check_training_memory(memory)
    assert "✓ training_memory" in capsys.readouterr().out
    assert memory(7_000_000_000, "adamw", 1, False) == 112_000_000_000  # 16 bytes/param


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


ACCUM_WRONG = {  # changes to accumulate_factory's right defaults
    "times_K": dict(divide=False),
    "stale": dict(zero_first=False),
    "zero_inside": dict(zero_inside=True),
    "zero_inside_undivided": dict(zero_inside=True, divide=False),
    "by_batch": dict(by_batch=True),
    "first_only": dict(only="first"),
    "dim1": dict(dim=1),
    "loss_sum": dict(ret="sum"),
    "loss_last": dict(ret="last"),
    "inplace": dict(in_place=True),
}


def test_accumulate_gradients(capsys):
    ch12.check_accumulate_gradients(accumulate)
    assert "✓ accumulate_gradients" in capsys.readouterr().out
    ch12.check_accumulate_gradients(accumulate_factory())  # the factory's default is right


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


def last_scaled_loss(model, x, y, K):  # the loop's last `loss`, already divided by K
    model.zero_grad(set_to_none=True)
    for xk, yk in zip(x.chunk(K), y.chunk(K)):
        loss = lm_loss(model(xk), yk) / K
        loss.backward()
    return loss.item()


def extra_forward(model, x, y, K):  # a grad-enabled forward of the whole batch for the loss
    accumulate(model, x, y, K)
    return lm_loss(model(x), y).item()


def loss_without_grad(model, x, y, K):  # right: the forward under no_grad is not training
    accumulate(model, x, y, K)
    with torch.no_grad():
        return lm_loss(model(x), y).item()


def test_accumulate_gradients_must_accumulate():
    """Right gradients and loss are not enough: the micro-batches must run one at a time (the
    whole batch at once and one backward after K forwards are in the catalogue)."""
    with pytest.raises(AssertionError,
                       match="expected K=2 rounds of \\(forward on B/K=4 windows, then backward\\)"):
        ch12.check_accumulate_gradients(extra_forward)


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


ALL_REDUCE_WRONG = {
    "dtype": to_float64, "sum": summed, "twice": divided_twice, "no_comm": no_communication,
    "inplace": in_place, "broadcast": broadcast_rank0, "max": maximum, "reduce": reduce_to_rank0,
    "element_mean": element_mean, "shape": gathered, "by_rank": by_rank,
    "no_return": forgot_return,
}


@pytest.mark.slow  # starts two Python processes
def test_all_reduce_mean(capsys):
    ch12.check_all_reduce_mean(all_reduce_mean)
    assert "✓ all_reduce_mean" in capsys.readouterr().out


@pytest.mark.slow
def test_all_reduce_mean_on_three_processes():
    """A world size written in as 2 passes on two processes; the check also runs three."""
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


PROFILE_WRONG = {  # changes to summary's right defaults
    "by_total": dict(top_col=2),
    "units": dict(self_time=lambda s: float(s[:-2])),
    "percent": dict(scale=100.0),
    "per_call": dict(per_call=False),
    "only_mm": dict(matmul=("aten::mm",)),
    "no_addmm": dict(matmul=("aten::mm", "aten::bmm")),
    "no_bmm": dict(matmul=("aten::addmm", "aten::mm")),
    "linear": dict(matmul=("aten::addmm", "aten::mm", "aten::bmm", "aten::linear")),
    "total_share": dict(total_for_share=True),
    "top_total_self": dict(top_total_col=1),
}


def per_call_top(rows):  # top_self ranked by self time per call
    out = summary(rows)
    top = max(rows, key=lambda r: ms(r[1]) / r[3])
    return {**out, "top_self": top[0], "ms_per_call": ms(top[1]) / top[3]}


def children_top(rows):  # top_total ranked by the time in the ops it calls
    return {**summary(rows), "top_total": max(rows, key=lambda r: ms(r[2]) - ms(r[1]))[0]}


def hard_coded(rows):  # the names read off the table in the notebook
    return {**summary(rows), "top_self": "aten::addmm", "top_total": "aten::linear"}


def test_profile_summary(capsys):
    ch12.check_profile_summary(summary)
    assert "✓ profile_summary" in capsys.readouterr().out
    got = summary(ch12.PROFILE_TABLE)
    assert got["top_self"] == "aten::addmm" and got["top_total"] == "aten::linear"
    assert math.isclose(got["ms_per_call"], 61.207 / 38)
    with pytest.raises(AssertionError, match="milliseconds"):
        ch12.check_profile_summary(summary_us)


def test_profile_summary_rejects_names_read_off_one_table():
    with pytest.raises(AssertionError, match="top_self should be 'aten::gelu', got 'aten::addmm'"):
        ch12.check_profile_summary(hard_coded)


# -------------------------------------------------------------- the catalogue (tests/catalogue.py)
# Every wrong answer above, filed under the MISTAKES entry whose hint it must get.

def _own(t):
    return t.clone()


CATALOGUE = (
    [Wrong("training_memory", k, memory_wrong(change)) for k, change in MEMORY_WRONG.items()]
    + [Wrong("training_memory", "type", lambda n, o, w, s: f"{memory(n, o, w, s)} bytes")]
    + [Wrong("accumulate_gradients", k, accumulate_factory(**changes))
       for k, changes in ACCUM_WRONG.items()]
    + [Wrong("accumulate_gradients", "one_pass", whole_batch),
       Wrong("accumulate_gradients", "one_backward", one_backward),
       Wrong("accumulate_gradients", "loss_last_scaled", last_scaled_loss),
       Wrong("accumulate_gradients", "loss_type", lambda m, x, y, K: accumulate(m, x, y, K) and None)]
    + [Wrong("all_reduce_mean", k, fn) for k, fn in ALL_REDUCE_WRONG.items()]
    + [Wrong("all_reduce_mean", "own", _own), Wrong("all_reduce_mean", "world_size", divided_by_two)]
    + [Wrong("profile_summary", k, (lambda ch: lambda rows: summary(rows, **ch))(changes))
       for k, changes in PROFILE_WRONG.items()]
    + [Wrong("profile_summary", "microseconds", summary_us),
       Wrong("profile_summary", "keys", lambda rows: list(summary(rows).values())),
       Wrong("profile_summary", "per_call_top", per_call_top),
       Wrong("profile_summary", "children_top", children_top)]
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
    right = [all_reduce_mean, average_op]  # must get no hint, on two or three processes
    for world, answers in ((2, [w for w in wrong if w.mistake != "world_size"]),
                           (3, [w for w in wrong if w.mistake == "world_size"])):
        hints = ch12.all_reduce_hints(right + [w.fn for w in answers], world=world)
        assert hints[: len(right)] == [None] * len(right), (world, hints[: len(right)])
        for w, hint in zip(answers, hints[len(right):], strict=True):
            assert hint is not None and ch12.MISTAKES[w.exercise][w.mistake].hint in hint, (
                w.id, hint)


def test_the_accumulation_check_leaves_the_students_random_state_alone(capsys):
    """The check builds its models from fixed seeds without reseeding the notebook's RNG."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ch12.check_accumulate_gradients(accumulate)
    assert torch.equal(torch.random.get_rng_state(), before)
