"""The chapter 11 checkers pass correct answers and reject a catalogue of wrong ones, each with
the hint meant for it (tests/catalogue.py explains the pattern)."""

import pytest
import torch
import torch.nn.functional as F
from catalogue import Wrong, assert_complete, assert_passes, assert_rejected, assert_stub_raises

from lmkit.checks import ch11
from lmkit.inspect import hooks, normalize_like, run_with_cache

# ----------------------------------------------------------------------------- 1 head pattern


def head_pattern(model, ids, layer, head):
    name = f"blocks.{layer}.attn.pattern"
    _, cache = run_with_cache(model, ids, names=[name])
    return cache[name][:, head]


def _pat(model, ids, layer):
    return run_with_cache(model, ids)[1][f"blocks.{layer}.attn.pattern"]


def leaves_hook(model, ids, layer, head):
    out = {}
    model.blocks[layer].attn.hook_pattern.register_forward_hook(
        lambda m, a, o: out.setdefault("p", o))
    model(ids)
    return out["p"][:, head]


def kv_head(model, ids, layer, head):
    group = model.config.n_heads // model.config.num_kv_heads
    return _pat(model, ids, layer)[:, head // group]


W1 = [
    Wrong("head_pattern", "gqa", kv_head),
    Wrong("head_pattern", "transposed", lambda m, i, k, h: _pat(m, i, k)[:, h].transpose(-1, -2)),
    Wrong("head_pattern", "head_dim", lambda m, i, k, h: _pat(m, i, k)[:, :, h]),
    Wrong("head_pattern", "softmax", lambda m, i, k, h: _pat(m, i, k)[:, h].softmax(-1)),
    Wrong("head_pattern", "mean_heads", lambda m, i, k, h: _pat(m, i, k).mean(1)),
    Wrong("head_pattern", "layer", lambda m, i, k, h: _pat(m, i, k + 1)[:, h]),
    Wrong("head_pattern", "layer", lambda m, i, k, h: _pat(m, i, max(k - 1, 0))[:, h]),
    Wrong("head_pattern", "head", lambda m, i, k, h: _pat(m, i, k)[:, h + 1]),
    Wrong("head_pattern", "head", lambda m, i, k, h: _pat(m, i, k)[:, max(h - 1, 0)]),
    Wrong("head_pattern", "batch", lambda m, i, k, h: _pat(m, i, k)[0, h]),
    Wrong("head_pattern", "hook", leaves_hook),
    Wrong("head_pattern", "dtype", lambda m, i, k, h: head_pattern(m, i, k, h).double()),
    Wrong("head_pattern", "no_return", lambda m, i, k, h: None),
]

# ----------------------------------------------------------------------------- 2 induction


def induction_score(pattern, N):
    t = torch.arange(N, 2 * N)
    return pattern[:, :, t, t - N + 1].mean(dim=(0, 2))


def diag(offset, start, stop=lambda N: 2 * N):
    def fn(p, N):
        t = torch.arange(start(N), stop(N))
        return p[:, :, t, t - offset(N)].mean(dim=(0, 2))
    return fn


def _t(N):
    return torch.arange(N, 2 * N)


W2 = [
    Wrong("induction_score", "duplicate", diag(lambda N: N, lambda N: N)),
    Wrong("induction_score", "previous", diag(lambda N: 1, lambda N: N)),
    Wrong("induction_score", "minus_one", diag(lambda N: N + 1, lambda N: N)),
    Wrong("induction_score", "early", diag(lambda N: N - 1, lambda N: N - 1)),
    Wrong("induction_score", "early", diag(lambda N: N - 1, lambda N: 1)),
    Wrong("induction_score", "late", diag(lambda N: N - 1, lambda N: N + 1)),
    Wrong("induction_score", "last", diag(lambda N: N - 1, lambda N: N, lambda N: 2 * N - 1)),
    Wrong("induction_score", "sum", lambda p, N: p[:, :, _t(N), _t(N) - N + 1].sum(dim=(0, 2))),
    Wrong("induction_score", "max", lambda p, N: p[:, :, _t(N), _t(N) - N + 1].amax(dim=(0, 2))),
    Wrong("induction_score", "swapped",
          lambda p, N: p[:, :, _t(N) - N + 1, _t(N)].mean(dim=(0, 2))),
    Wrong("induction_score", "shape", lambda p, N: p[:, :, _t(N), _t(N) - N + 1].mean(dim=2)),
    Wrong("induction_score", "shape",
          lambda p, N: p[:, :, _t(N), _t(N) - N + 1].mean(dim=(0, 1))),
    Wrong("induction_score", "dtype", lambda p, N: induction_score(p.double(), N)),
    Wrong("induction_score", "no_return", lambda p, N: None),
]

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
            elif prob == "batch":
                out.append(logits.softmax(0)[:, token])
            elif prob == "log":
                out.append(logits.log_softmax(-1)[:, token])
            else:
                out.append(logits[:, token])
        return torch.stack(out)
    return fn


def post(model, cache):
    return [cache["embed"]] + [cache[f"blocks.{i}.resid_post"]
                               for i in range(model.config.n_layers)]


def softmax_over_positions(model, cache, pos, token):
    return torch.stack([model.lm_head(model.norm_f(s)).softmax(1)[:, pos, token]
                        for s in post(model, cache)])


def _L(m):
    return m.config.n_layers


W3 = [
    Wrong("logit_lens", "no_norm", lens_of(post, norm=False)),
    Wrong("logit_lens", "logits", lens_of(post, prob="logits")),
    Wrong("logit_lens", "log_probs", lens_of(post, prob="log")),
    Wrong("logit_lens", "softmax_dim", lens_of(post, prob="batch")),
    Wrong("logit_lens", "softmax_dim", softmax_over_positions),
    Wrong("logit_lens", "resid_mid", lens_of(
        lambda m, c: [c["embed"]] + [c[f"blocks.{i}.resid_mid"] for i in range(_L(m))])),
    Wrong("logit_lens", "norm_twice", lens_of(lambda m, c: post(m, c)[:-1] + [c["final"]])),
    Wrong("logit_lens", "mlp_out", lens_of(
        lambda m, c: [c["embed"]] + [c[f"blocks.{i}.mlp.out"] for i in range(_L(m))])),
    Wrong("logit_lens", "pos", lens_of(post, pos_fn=lambda p: 0 if p != 0 else -1)),
    Wrong("logit_lens", "resid_pre", lens_of(
        lambda m, c: [c[f"blocks.{i}.resid_pre"] for i in range(_L(m))])),
    Wrong("logit_lens", "no_embed", lens_of(lambda m, c: post(m, c)[1:])),
    Wrong("logit_lens", "transposed", lambda m, c, p, t: logit_lens(m, c, p, t).T),
    Wrong("logit_lens", "no_return", lambda m, c, p, t: None),
]

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


def dla_variant(piece_fn=None, norm="frozen", resid_fn=None, pos=-1, center=True, bias=False,
                gamma=True, unbiased=False, o_bias=False):
    def fn(model, cache, layer, head, token):
        L = model.config.n_layers
        attn = model.blocks[layer].attn
        D = attn.head_dim
        W_O = attn.o_proj.weight
        if piece_fn is None:
            piece = cache[f"blocks.{layer}.attn.z"][:, pos, head] @ W_O[:, head * D:(head + 1) * D].T
        else:
            piece = piece_fn(model, cache, layer, head, W_O, D)
        if o_bias and attn.o_proj.bias is not None:
            piece = piece + attn.o_proj.bias / attn.n_heads
        resid = (cache[f"blocks.{L - 1}.resid_post"] if resid_fn is None
                 else resid_fn(model, cache, layer))[:, pos]
        n = model.norm_f
        u = model.lm_head.weight[token]
        if norm == "none":
            return piece @ u
        if norm == "own":
            return n(piece) @ u
        if hasattr(n, "bias"):
            var = resid.var(-1, keepdim=True, unbiased=unbiased)
            x = ((piece - piece.mean(-1, keepdim=True)) if center else piece) / torch.sqrt(var + n.eps)
        else:
            x = piece * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + n.eps)
        if gamma:
            x = x * n.weight
        if bias:
            x = x + n.bias
        return x @ u
    return fn


def next_head(m, c, k, h, W, D):
    if h + 1 < m.config.n_heads:
        return c[f"blocks.{k}.attn.z"][:, -1, h + 1] @ W[:, (h + 1) * D:(h + 2) * D].T
    return c[f"blocks.{k}.attn.z"][:, -1, h] @ W[:, h * D:(h + 1) * D].T


W4 = [
    Wrong("head_dla", "no_norm", dla_variant(norm="none")),
    Wrong("head_dla", "own_norm", dla_variant(norm="own")),
    Wrong("head_dla", "rows", dla_variant(
        piece_fn=lambda m, c, k, h, W, D: c[f"blocks.{k}.attn.z"][:, -1, h] @ W[h * D:(h + 1) * D, :])),
    Wrong("head_dla", "all_heads", dla_variant(
        piece_fn=lambda m, c, k, h, W, D: c[f"blocks.{k}.attn.out"][:, -1])),
    Wrong("head_dla", "resid", dla_variant(resid_fn=lambda m, c, k: c[f"blocks.{k}.resid_post"])),
    Wrong("head_dla", "final", lambda m, c, k, h, t: normalize_like(
        m.norm_f, c[f"blocks.{k}.attn.z"][:, -1, h] @ m.blocks[k].attn.o_proj.weight[
            :, h * m.blocks[k].attn.head_dim:(h + 1) * m.blocks[k].attn.head_dim].T,
        c["final"][:, -1]) @ m.lm_head.weight[t]),
    Wrong("head_dla", "pos", dla_variant(pos=0)),
    Wrong("head_dla", "norm_bias", dla_variant(bias=True)),
    Wrong("head_dla", "center", dla_variant(center=False)),
    Wrong("head_dla", "gamma", dla_variant(gamma=False)),
    Wrong("head_dla", "unbiased", dla_variant(unbiased=True)),
    Wrong("head_dla", "o_bias", dla_variant(o_bias=True)),
    Wrong("head_dla", "head", dla_variant(piece_fn=next_head)),
    Wrong("head_dla", "shape", lambda m, c, k, h, t: head_dla(m, c, k, h, t)[None]),
    Wrong("head_dla", "no_return", lambda m, c, k, h, t: None),
]

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
                  where=lambda pos: pos, run_inside=True, first_seq=False):
    def fn(model, clean_ids, corrupt_ids, layer, pos):
        if swap:
            clean_ids, corrupt_ids = corrupt_ids, clean_ids
        name = name_fn(layer)
        _, clean = run_with_cache(model, clean_ids, names=[name])

        def put(act):
            act = act.clone()
            p = where(pos)
            act[:, p] = clean[name][0, p] if first_seq else clean[name][:, p]
            return act

        with torch.no_grad(), hooks(model, {name: put}):
            inside = model(corrupt_ids)
        return inside if run_inside else model(corrupt_ids)
    return fn


def forgets_hook(model, clean_ids, corrupt_ids, layer, pos):
    name = f"blocks.{layer}.resid_pre"
    _, clean = run_with_cache(model, clean_ids, names=[name])

    def pre(mod, args):
        x = args[0].clone()
        x[:, pos] = clean[name][:, pos]
        return (x, *args[1:])

    model.blocks[layer].register_forward_pre_hook(pre)
    return model(corrupt_ids)


W5 = [
    Wrong("patch_resid", "unpatched", patch_variant(run_inside=False)),
    Wrong("patch_resid", "clean_run", lambda m, c, x, layer, p: m(c)),
    Wrong("patch_resid", "clean_run", patch_variant(where=lambda pos: slice(None))),
    Wrong("patch_resid", "direction", patch_variant(swap=True)),
    Wrong("patch_resid", "resid_post", patch_variant(name_fn=lambda k: f"blocks.{k}.resid_post")),
    Wrong("patch_resid", "resid_post", patch_variant(name_fn=lambda k: f"blocks.{k}.resid_mid")),
    Wrong("patch_resid", "resid_post", patch_variant(
        name_fn=lambda k: f"blocks.{min(k + 1, 2)}.resid_pre")),
    Wrong("patch_resid", "position", patch_variant(where=lambda pos: pos + 1 if pos + 1 < 4
                                                   else pos - 1)),
    Wrong("patch_resid", "position", patch_variant(where=lambda pos: max(pos - 1, 0) if pos
                                                   else 1)),
    Wrong("patch_resid", "range", patch_variant(where=lambda pos: slice(None, pos + 1))),
    Wrong("patch_resid", "range", patch_variant(where=lambda pos: slice(pos, None))),
    Wrong("patch_resid", "first_seq", patch_variant(first_seq=True)),
    Wrong("patch_resid", "hook", forgets_hook),
    Wrong("patch_resid", "shape", lambda m, c, x, layer, p: patch_resid(m, c, x, layer, p)[:, -1]),
    Wrong("patch_resid", "no_return", lambda m, c, x, layer, p: None),
]

# ----------------------------------------------------------------------------- 6 probe


def fit_probe(X, y, n_train, steps=200, standardise=True, bias=True):
    if standardise:
        mu, sd = X[:n_train].mean(0), X[:n_train].std(0) + 1e-6
        X = (X - mu) / sd
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=bias)
    opt = torch.optim.Adam([w, b] if bias else [w], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(X[:n_train] @ w + b, y[:n_train]).backward()
        opt.step()
    return X.detach(), w.detach(), b.detach()


def held_out(X, y, n_train, w, b):
    return ((X[n_train:] @ w + b > 0).float() == y[n_train:]).float().mean().item()


def shuffle(y, seed):
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def probe_variant(standardise=True, bias=True, control="shuffled"):
    def fn(X, y, n_train, seed):
        Xs, w, b = fit_probe(X, y, n_train, standardise=standardise, bias=bias)
        acc = held_out(Xs, y, n_train, w, b)
        s = shuffle(y, seed) if control != "unseeded" else y[torch.randperm(len(y))]
        if control == "real_probe":  # never trained on the shuffled labels
            return acc, held_out(Xs, s, n_train, w, b)
        Xs, w, b = fit_probe(X, s, n_train, standardise=standardise, bias=bias)
        return acc, held_out(Xs, y if control == "scored_on_y" else s, n_train, w, b)
    return fn


probe_with_control = probe_variant()


def on_train(X, y, n_train, seed):
    out = []
    for labels in (y, shuffle(y, seed)):
        Xs, w, b = fit_probe(X, labels, len(y), steps=300)
        out.append(((Xs @ w + b > 0).float() == labels).float().mean().item())
    return tuple(out)


def unshuffled(X, y, n_train, seed):
    a, _ = probe_with_control(X, y, n_train, seed)
    return a, a


def shuffles_y_in_place(X, y, n_train, seed):
    acc = probe_with_control(X, y, n_train, seed)[0]
    y[:] = shuffle(y, seed)
    Xs, w, b = fit_probe(X, y, n_train)
    return acc, held_out(Xs, y, n_train, w, b)


def constant(X, y, n_train, seed):
    base = float(y[n_train:].mean())
    return max(base, 1 - base), 0.5


W6 = [
    Wrong("probe_with_control", "type", lambda X, y, n, s: probe_with_control(X, y, n, s)[0]),
    Wrong("probe_with_control", "type",
          lambda X, y, n, s: tuple(f"{a:.2f}" for a in probe_with_control(X, y, n, s))),
    Wrong("probe_with_control", "inplace", shuffles_y_in_place),
    Wrong("probe_with_control", "percent",
          lambda X, y, n, s: tuple(100 * a for a in probe_with_control(X, y, n, s))),
    Wrong("probe_with_control", "error_rate",
          lambda X, y, n, s: tuple(1 - a for a in probe_with_control(X, y, n, s))),
    Wrong("probe_with_control", "order", lambda X, y, n, s: probe_with_control(X, y, n, s)[::-1]),
    Wrong("probe_with_control", "unshuffled", unshuffled),
    Wrong("probe_with_control", "one_class", constant),
    Wrong("probe_with_control", "weak", probe_variant(standardise=False)),
    Wrong("probe_with_control", "on_train", on_train),
    Wrong("probe_with_control", "no_bias", probe_variant(bias=False)),
    Wrong("probe_with_control", "control_fixed",
          lambda X, y, n, s: (probe_with_control(X, y, n, s)[0], 0.5)),
    Wrong("probe_with_control", "control_shuffle", probe_variant(control="scored_on_y")),
    Wrong("probe_with_control", "control_shuffle", probe_variant(control="real_probe")),
    Wrong("probe_with_control", "control_shuffle", probe_variant(control="unseeded")),
    Wrong("probe_with_control", "control_range",
          lambda X, y, n, s: (probe_with_control(X, y, n, s)[0], 0.0)),
]

CATALOGUE = W1 + W2 + W3 + W4 + W5 + W6
SOLUTIONS = {"head_pattern": head_pattern, "induction_score": induction_score,
             "logit_lens": logit_lens, "head_dla": head_dla, "patch_resid": patch_resid,
             "probe_with_control": probe_with_control}


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_solution_passes_and_stub_raises(exercise, capsys, one_thread):
    assert_passes(ch11, exercise, SOLUTIONS[exercise], capsys)
    assert_stub_raises(ch11, exercise)


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda w: w.id)
def test_wrong_answer_gets_its_hint(wrong, one_thread):
    assert_rejected(ch11, wrong)


def test_catalogue_complete():
    assert_complete(ch11, CATALOGUE, SOLUTIONS)


def test_alternatives_pass(capsys):
    """Other correct ways pass: diagonal(), `final` without a second norm, resid_pre plus the
    last resid_post, normalize_like, adding the clean-minus-corrupted difference."""
    ch11.check_induction_score(lambda p, N: p.diagonal(-(N - 1), -2, -1)[..., 1:].mean((0, 2)))

    def lens_final(model, cache, pos, token):
        L = model.config.n_layers
        states = [cache["embed"]] + [cache[f"blocks.{i}.resid_post"] for i in range(L - 1)]
        out = [model.lm_head(model.norm_f(s[:, pos])).softmax(-1)[:, token] for s in states]
        out.append(model.lm_head(cache["final"][:, pos]).softmax(-1)[:, token])
        return torch.stack(out)

    ch11.check_logit_lens(lens_final)
    ch11.check_logit_lens(lens_of(lambda m, c: [c[f"blocks.{i}.resid_pre"] for i in range(_L(m))]
                                  + [c[f"blocks.{_L(m) - 1}.resid_post"]]))

    def dla_library(model, cache, layer, head, token):
        D = model.blocks[layer].attn.head_dim
        z = cache[f"blocks.{layer}.attn.z"][:, -1, head]
        piece = z @ model.blocks[layer].attn.o_proj.weight[:, head * D:(head + 1) * D].T
        resid = cache[f"blocks.{model.config.n_layers - 1}.resid_post"][:, -1]
        return normalize_like(model.norm_f, piece, resid) @ model.lm_head.weight[token]

    ch11.check_head_dla(dla_library)

    def patch_by_difference(model, clean_ids, corrupt_ids, layer, pos):
        name = f"blocks.{layer}.resid_pre"
        clean = run_with_cache(model, clean_ids, names=[name])[1][name]
        corrupt = run_with_cache(model, corrupt_ids, names=[name])[1][name]
        delta = torch.zeros_like(clean)
        delta[:, pos] = clean[:, pos] - corrupt[:, pos]
        with torch.no_grad(), hooks(model, {name: lambda a: a + delta}):
            return model(corrupt_ids)

    ch11.check_patch_resid(patch_by_difference)
    assert capsys.readouterr().out.count("✓") == 5


def test_a_crash_in_the_students_code_is_shown():
    def crashes(model, ids, layer, head):
        raise RuntimeError("boom")
    with pytest.raises(AssertionError, match="RuntimeError: boom"):
        ch11.check_head_pattern(crashes)
