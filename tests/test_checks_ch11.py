"""The chapter 11 checkers accept right answers and reject typical mistakes with a useful hint."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.checks import ch11
from lmkit.inspect import hooks, run_with_cache


def stub(*args):
    raise NotImplementedError("exercise not solved yet")


CHECKS = [ch11.check_head_pattern, ch11.check_induction_score, ch11.check_logit_lens,
          ch11.check_head_dla, ch11.check_patch_resid, ch11.check_probe_with_control]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_stub_fails(check):
    with pytest.raises(NotImplementedError):
        check(stub)


def rejects(check, wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check(wrong)


# ----------------------------------------------------------------------------- 1 head pattern


def head_pattern(model, ids, layer, head):
    name = f"blocks.{layer}.attn.pattern"
    _, cache = run_with_cache(model, ids, names=[name])
    return cache[name][:, head]


def _pat(model, ids, layer):
    return run_with_cache(model, ids)[1][f"blocks.{layer}.attn.pattern"]


def test_head_pattern(capsys):
    ch11.check_head_pattern(head_pattern)
    assert "✓ head_pattern" in capsys.readouterr().out

    def leaves_hook(model, ids, layer, head):
        out = {}
        model.blocks[layer].attn.hook_pattern.register_forward_hook(
            lambda m, a, o: out.setdefault("p", o))
        model(ids)
        return out["p"][:, head]

    wrong = [
        (lambda m, i, k, h: _pat(m, i, k)[:, h].transpose(-1, -2), "you transposed it"),
        (lambda m, i, k, h: _pat(m, i, k)[:, :, h], "the head is dim 1"),
        (lambda m, i, k, h: _pat(m, i, k)[:, h].softmax(-1), "already softmaxed"),
        (lambda m, i, k, h: _pat(m, i, k).mean(1), "averaged over the heads"),
        (lambda m, i, k, h: _pat(m, i, k + 1)[:, h], "next block's pattern"),
        (lambda m, i, k, h: _pat(m, i, max(k - 1, 0))[:, h], "previous block's pattern"),
        (lambda m, i, k, h: _pat(m, i, k)[:, h + 1], "next head's pattern"),
        (lambda m, i, k, h: _pat(m, i, k)[:, max(h - 1, 0)], "previous head's pattern"),
        (lambda m, i, k, h: _pat(m, i, k)[0, h], "keep the batch"),
        (lambda m, i, k, h: _pat(m, i, k)[:, h // 2] if m.config.num_kv_heads < m.config.n_heads
         else _pat(m, i, k)[:, h], "one map per \\*query\\* head"),
        (leaves_hook, "left a hook on the model"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_head_pattern, fn, hint)


def test_head_pattern_cleans_up_after_a_failing_student():
    def crashes(model, ids, layer, head):
        raise RuntimeError("boom")
    with pytest.raises(AssertionError, match="RuntimeError: boom"):
        ch11.check_head_pattern(crashes)


# ----------------------------------------------------------------------------- 2 induction


def induction_score(pattern, N):
    t = torch.arange(N, 2 * N)
    return pattern[:, :, t, t - N + 1].mean(dim=(0, 2))


def test_induction_score(capsys):
    ch11.check_induction_score(induction_score)
    # the same thing with diagonal()
    ch11.check_induction_score(lambda p, N: p.diagonal(-(N - 1), -2, -1)[..., 1:].mean((0, 2)))
    assert capsys.readouterr().out.count("✓ induction_score") == 2

    def diag(offset, start):
        def fn(p, N):
            t = torch.arange(start(N), 2 * N)
            return p[:, :, t, t - offset(N)].mean(dim=(0, 2))
        return fn

    t_ = lambda N: torch.arange(N, 2 * N)  # noqa: E731
    wrong = [
        (diag(lambda N: N, lambda N: N), "duplicate-token head"),
        (diag(lambda N: 1, lambda N: N), "previous-token score"),
        (diag(lambda N: N - 1, lambda N: N - 1), "query N - 1 is the last token"),
        (diag(lambda N: N - 1, lambda N: N + 1), "start at query t = N"),
        (diag(lambda N: N - 1, lambda N: 1), "in the first half nothing has repeated"),
        (lambda p, N: p[:, :, t_(N), t_(N) - N + 1].sum(dim=(0, 2)), "do not sum"),
        (lambda p, N: p[:, :, t_(N), t_(N) - N + 1].amax(dim=(0, 2)), "maximum"),
        (lambda p, N: p[:, :, t_(N) - N + 1, t_(N)].mean(dim=(0, 2)), "you swapped them"),
        (lambda p, N: p[:, :, t_(N), t_(N) - N + 1].mean(dim=2), "keeping one score per head"),
        (lambda p, N: p[:, :, t_(N), t_(N) - N + 1].mean(dim=(0, 1)), "keeping one score"),
        (lambda p, N: None, "should return a tensor"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_induction_score, fn, hint)


# ----------------------------------------------------------------------------- 3 logit lens


def logit_lens(model, cache, pos, token):
    L = model.config.n_layers
    states = [cache["embed"]] + [cache[f"blocks.{i}.resid_post"] for i in range(L)]
    return torch.stack([model.lm_head(model.norm_f(s[:, pos])).softmax(-1)[:, token]
                        for s in states])


def lens_of(states_fn, norm=True, prob="softmax", pos_fn=lambda p: p):
    def fn(model, cache, pos, token):
        out = []
        for s in states_fn(model, cache):
            h = s[:, pos_fn(pos)]
            logits = model.lm_head(model.norm_f(h) if norm else h)
            if prob == "softmax":
                out.append(logits.softmax(-1)[:, token])
            elif prob == "log":
                out.append(logits.log_softmax(-1)[:, token])
            else:
                out.append(logits[:, token])
        return torch.stack(out)
    return fn


def post(model, cache):
    return [cache["embed"]] + [cache[f"blocks.{i}.resid_post"]
                               for i in range(model.config.n_layers)]


def test_logit_lens(capsys):
    ch11.check_logit_lens(logit_lens)
    assert "✓ logit_lens" in capsys.readouterr().out
    L = lambda m: m.config.n_layers  # noqa: E731
    wrong = [
        (lens_of(post, norm=False), "apply the final norm before the LM head"),
        (lens_of(post, prob="logits"), "return probabilities: softmax"),
        (lens_of(post, prob="log"), "not log-probabilities"),
        (lens_of(lambda m, c: [c["embed"]] + [c[f"blocks.{i}.resid_mid"] for i in range(L(m))]),
         "not after its attention"),
        (lens_of(lambda m, c: post(m, c)[:-1] + [c["final"]]), "final norm twice"),
        (lens_of(lambda m, c: [c["embed"]] + [c[f"blocks.{i}.mlp.out"] for i in range(L(m))]),
         "not what the MLP"),
        (lens_of(post, pos_fn=lambda p: 0 if p != 0 else -1), "read the position `pos`"),
        (lens_of(lambda m, c: [c[f"blocks.{i}.resid_pre"] for i in range(L(m))]),
         "not the L resid_pre"),
        (lens_of(lambda m, c: post(m, c)[1:]), "include the embedding"),
        (lambda m, c, p, t: logit_lens(m, c, p, t).T, "stack the layers first"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_logit_lens, fn, hint)


# ----------------------------------------------------------------------------- 4 head DLA


def head_dla(model, cache, layer, head, token):
    L = model.config.n_layers
    D = model.blocks[layer].attn.head_dim
    W_O = model.blocks[layer].attn.o_proj.weight  # (C, H * D)
    piece = cache[f"blocks.{layer}.attn.z"][:, -1, head] @ W_O[:, head * D:(head + 1) * D].T
    resid = cache[f"blocks.{L - 1}.resid_post"][:, -1]  # (B, C)
    norm = model.norm_f
    if hasattr(norm, "bias"):  # LayerNorm
        scale = torch.sqrt(resid.var(-1, keepdim=True, unbiased=False) + norm.eps)
        x = (piece - piece.mean(-1, keepdim=True)) / scale * norm.weight
    else:  # RMSNorm
        x = piece * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    return x @ model.lm_head.weight[token]


def dla_variant(piece_fn=None, norm="frozen", resid_fn=None, pos=-1, center=True, bias=False):
    def fn(model, cache, layer, head, token):
        L = model.config.n_layers
        D = model.blocks[layer].attn.head_dim
        W_O = model.blocks[layer].attn.o_proj.weight
        if piece_fn is None:
            piece = cache[f"blocks.{layer}.attn.z"][:, pos, head] @ W_O[:, head * D:(head + 1) * D].T
        else:
            piece = piece_fn(model, cache, layer, head, W_O, D)
        resid = (cache[f"blocks.{L - 1}.resid_post"] if resid_fn is None
                 else resid_fn(model, cache, layer))[:, pos]
        n = model.norm_f
        u = model.lm_head.weight[token]
        if norm == "none":
            return piece @ u
        if norm == "own":
            return n(piece) @ u
        if hasattr(n, "bias"):
            scale = torch.sqrt(resid.var(-1, keepdim=True, unbiased=False) + n.eps)
            x = ((piece - piece.mean(-1, keepdim=True)) if center else piece) / scale * n.weight
            if bias:
                x = x + n.bias
        else:
            x = piece * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + n.eps) * n.weight
        return x @ u
    return fn


def test_head_dla(capsys):
    ch11.check_head_dla(head_dla)
    assert "✓ head_dla" in capsys.readouterr().out
    wrong = [
        (dla_variant(norm="none"), "freeze the final norm's scale"),
        (dla_variant(norm="own"), "by its \\*own\\* size"),
        (dla_variant(piece_fn=lambda m, c, k, h, W, D: c[f"blocks.{k}.attn.z"][:, -1, h]
                     @ W[h * D:(h + 1) * D, :]), "owns the \\*columns\\*"),
        (dla_variant(piece_fn=lambda m, c, k, h, W, D: c[f"blocks.{k}.attn.out"][:, -1]),
         "all of the layer's heads"),
        (dla_variant(resid_fn=lambda m, c, k: c[f"blocks.{k}.resid_post"]),
         "scale of the \\*final\\* stream"),
        (dla_variant(pos=0), "the last position"),
        (dla_variant(bias=True), "the norm's bias is not part"),
        (dla_variant(center=False), "LayerNorm centres its input"),
        (dla_variant(piece_fn=lambda m, c, k, h, W, D: c[f"blocks.{k}.attn.z"][:, -1, h + 1]
                     @ W[:, (h + 1) * D:(h + 2) * D].T if h + 1 < m.config.n_heads
                     else c[f"blocks.{k}.attn.z"][:, -1, h] @ W[:, h * D:(h + 1) * D].T),
         "that is the next head"),
        (lambda m, c, k, h, t: head_dla(m, c, k, h, t)[None], "expected shape"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_head_dla, fn, hint)


# ----------------------------------------------------------------------------- 5 patching


def patch_resid(model, clean_ids, corrupt_ids, layer, pos):
    name = f"blocks.{layer}.resid_pre"
    _, clean = run_with_cache(model, clean_ids, names=[name])

    def put(act):  # (B, T, C)
        act = act.clone()
        act[:, pos] = clean[name][:, pos]
        return act

    with torch.no_grad(), hooks(model, {name: put}):
        return model(corrupt_ids)


def patch_variant(name_fn=lambda layer: f"blocks.{layer}.resid_pre", swap=False,
                  where=lambda pos: pos, run_inside=True):
    def fn(model, clean_ids, corrupt_ids, layer, pos):
        if swap:
            clean_ids, corrupt_ids = corrupt_ids, clean_ids
        name = name_fn(layer)
        _, clean = run_with_cache(model, clean_ids, names=[name])

        def put(act):
            act = act.clone()
            p = where(pos)
            act[:, p] = clean[name][:, p]
            return act

        with torch.no_grad(), hooks(model, {name: put}):
            inside = model(corrupt_ids)
        return inside if run_inside else model(corrupt_ids)
    return fn


def test_patch_resid(capsys):
    ch11.check_patch_resid(patch_resid)
    assert "✓ patch_resid" in capsys.readouterr().out

    def forgets_hook(model, clean_ids, corrupt_ids, layer, pos):
        name = f"blocks.{layer}.resid_pre"
        _, clean = run_with_cache(model, clean_ids, names=[name])

        def pre(mod, args):
            x = args[0].clone()
            x[:, pos] = clean[name][:, pos]
            return (x, *args[1:])

        model.blocks[layer].register_forward_pre_hook(pre)
        return model(corrupt_ids)

    wrong = [
        (patch_variant(run_inside=False), "nothing was patched"),
        (lambda m, c, x, layer, p: m(c), "that is the clean run"),
        (patch_variant(swap=True), "wrong direction"),
        (patch_variant(where=lambda pos: slice(None)), "also gives the clean run"),
        (patch_variant(name_fn=lambda layer: f"blocks.{layer}.resid_post"), "not resid_post"),
        (patch_variant(name_fn=lambda layer: f"blocks.{layer}.resid_mid"), "or resid_mid"),
        (patch_variant(where=lambda pos: pos + 1 if pos + 1 < 4 else pos - 1),
         "you patched position"),
        (patch_variant(where=lambda pos: max(pos - 1, 0) if pos else 1), "you patched position"),
        (patch_variant(name_fn=lambda layer: f"blocks.{min(layer + 1, 2)}.resid_pre"),
         "not resid_post"),
        (lambda m, c, x, layer, p: patch_resid(m, c, x, layer, p)[:, -1], "expected shape"),
        (forgets_hook, "left a hook on the model"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_patch_resid, fn, hint)


# ----------------------------------------------------------------------------- 6 probe


def fit_probe(X, y, n_train, steps=200):
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0) + 1e-6
    X = (X - mu) / sd
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(X[:n_train] @ w + b, y[:n_train]).backward()
        opt.step()
    return X.detach(), w.detach(), b.detach()


def held_out(X, y, n_train, w, b):
    return ((X[n_train:] @ w + b > 0).float() == y[n_train:]).float().mean().item()


def probe_with_control(X, y, n_train, seed):
    g = torch.Generator().manual_seed(seed)
    shuffled = y[torch.randperm(len(y), generator=g)]
    accs = []
    for labels in (y, shuffled):
        Xs, w, b = fit_probe(X, labels, n_train)
        accs.append(held_out(Xs, labels, n_train, w, b))
    return accs[0], accs[1]


def test_probe_with_control(capsys, one_thread):
    ch11.check_probe_with_control(probe_with_control)
    assert "✓ probe_with_control" in capsys.readouterr().out

    def on_train(X, y, n_train, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for labels in (y, y[torch.randperm(len(y), generator=g)]):
            Xs, w, b = fit_probe(X, labels, len(y), steps=300)
            out.append(((Xs @ w + b > 0).float() == labels).float().mean().item())
        return tuple(out)

    def unshuffled(X, y, n_train, seed):
        a, _ = probe_with_control(X, y, n_train, seed)
        return a, a

    def in_place(X, y, n_train, seed):
        out = probe_with_control(X, y, n_train, seed)
        y[:] = y[torch.randperm(len(y))]
        return out

    def constant(X, y, n_train, seed):
        base = float(y[n_train:].mean())
        return max(base, 1 - base), 0.5

    def unstandardised(X, y, n_train, seed):  # too few steps on raw, off-centre features
        w = torch.zeros(X.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([w, b], lr=1e-4)
        for _ in range(5):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(X[:n_train] @ w + b, y[:n_train]).backward()
            opt.step()
        with torch.no_grad():
            acc = ((X[n_train:] @ w + b > 0).float() == y[n_train:]).float().mean().item()
        return acc, 0.5

    wrong = [
        (on_train, "evaluated on examples the probe was trained on|pure noise"),
        (unshuffled, "trained on \\*shuffled\\* labels"),
        (lambda X, y, n, s: probe_with_control(X, y, n, s)[::-1], "the order is"),
        (lambda X, y, n, s: tuple(1 - a for a in probe_with_control(X, y, n, s)),
         "error rate"),
        (lambda X, y, n, s: tuple(100 * a for a in probe_with_control(X, y, n, s)),
         "not percentages"),
        (lambda X, y, n, s: probe_with_control(X, y, n, s)[0], "should return a pair"),
        (in_place, "changed one of its input tensors in place, `y`"),  # common.call checks purity
        (constant, "predicts one class everywhere"),
        (unstandardised, "only|one class"),
        (lambda X, y, n, s: (probe_with_control(X, y, n, s)[0], 0.95),
         "trained on \\*shuffled\\* labels|control accuracy is"),
        (lambda X, y, n, s: (probe_with_control(X, y, n, s)[0], "0.5"), "two numbers"),
    ]
    for fn, hint in wrong:
        rejects(ch11.check_probe_with_control, fn, hint)
