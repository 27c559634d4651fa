"""lmkit.generation: greedy, sampling, top-k/top-p, beam search, KV cache, errors, HF equality."""

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from lmkit.generation import beam_search, generate, generate_stream, top_k_filter, top_p_filter
from lmkit.model import ModelConfig, TransformerLM
from lmkit.pretrained import load_hf

V = 53


def tiny(positional="learned", vocab_size=V, context_length=48, seed=0):
    """A small random model with peaked predictions (weights larger than the init's)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=32,
                      n_layers=2, n_heads=4, positional=positional)
    model = TransformerLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def prompt(B=2, T=5, vocab_size=V, seed=0):
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rope"])
def test_cached_and_uncached_greedy_give_same_tokens_and_logits(positional):
    model = tiny(positional)
    x = prompt()
    a, logits_a = generate(model, x, 20, use_cache=True, return_logits=True)
    b, logits_b = generate(model, x, 20, use_cache=False, return_logits=True)
    assert a.shape == (2, 25) and logits_a.shape == (2, 20, V)
    assert torch.equal(a, b)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rope"])
def test_cached_logits_equal_a_full_forward_of_the_output(positional):
    model = tiny(positional)
    out, logits = generate(model, prompt(), 12, return_logits=True)
    with torch.no_grad():
        full = model(out[:, :-1])[:, 4:]  # predictions for positions 5 .. 16
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_cached_and_uncached_sampling_match(positional):
    model = tiny(positional)
    kw = dict(do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    a = generate(model, prompt(), 15, use_cache=True,
                 generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, prompt(), 15, use_cache=False,
                 generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- against HF


def hf_gpt2(tmp_path, eos=0):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=V, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.eval().save_pretrained(tmp_path)
    return hf, load_hf(tmp_path)


def test_greedy_matches_hf_generate(tmp_path):
    hf, ours = hf_gpt2(tmp_path)
    x = prompt(B=3, T=6)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=25, do_sample=False,
                       pad_token_id=0, eos_token_id=None)
    assert torch.equal(generate(ours, x, 25), want)
    assert torch.equal(generate(ours, x, 25, use_cache=False), want)


def test_greedy_with_eos_matches_hf_generate(tmp_path):
    hf, ours = hf_gpt2(tmp_path)
    x = prompt(B=3, T=6)
    free = generate(ours, x, 20)
    eos = int(free[0, 6 + 3])  # a token row 0 produces at step 4: row 0 stops there
    got = generate(ours, x, 20, eos_token_id=eos)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20,
                       do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(got, want)
    assert (got[0, 6 + 3:] == eos).all()  # finished row padded with eos


def test_sampling_matches_hf_generate_on_the_global_rng(tmp_path):
    hf, ours = hf_gpt2(tmp_path)
    x = prompt(B=2, T=4)
    kw = dict(do_sample=True, temperature=0.8, top_k=10, top_p=0.9)
    torch.manual_seed(11)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=15,
                       pad_token_id=0, eos_token_id=None, **kw)
    torch.manual_seed(11)
    assert torch.equal(generate(ours, x, 15, **kw), want)


def test_beam_search_matches_hf_generate(tmp_path):
    hf, ours = hf_gpt2(tmp_path)
    x = prompt(B=2, T=4)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, num_beams=4,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(generate(ours, x, 8, num_beams=4), want)


# ----------------------------------------------------------------------------- sampling


def test_top_k_one_equals_greedy():
    model = tiny()
    gen = torch.Generator().manual_seed(0)
    sampled = generate(model, prompt(), 20, do_sample=True, top_k=1, temperature=3.0,
                       generator=gen)
    assert torch.equal(sampled, generate(model, prompt(), 20))


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny()
    runs = [generate(model, prompt(), 30, do_sample=True,
                     generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_sampling_only_draws_tokens_inside_the_filters():
    model = tiny()
    x = prompt(B=1, T=3)
    with torch.no_grad():
        logits = model(x)[0, -1]
    allowed = set(torch.topk(logits, 3).indices.tolist())
    for s in range(20):
        out = generate(model, x, 1, do_sample=True, top_k=3, temperature=5.0,
                       generator=torch.Generator().manual_seed(s))
        assert int(out[0, -1]) in allowed


def test_temperature_is_ignored_when_greedy_as_in_hf():
    model = tiny()
    assert torch.equal(generate(model, prompt(), 10, temperature=0.1, top_k=2),
                       generate(model, prompt(), 10))


# ----------------------------------------------------------------------------- filters


def logits_of(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def kept(logits):
    return (logits > float("-inf")).nonzero().flatten().tolist()


@pytest.mark.parametrize("p,expected", [
    (0.01, [0]), (0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]), (0.76, [0, 1, 2]),
    (0.875, [0, 1, 2]), (0.9, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3]),
])
def test_top_p_keeps_the_smallest_set_that_reaches_p(p, expected):
    assert kept(top_p_filter(logits_of([0.5, 0.25, 0.125, 0.125]), p)) == expected


def test_top_p_works_in_vocabulary_order_and_on_batches():
    logits = logits_of([[0.125, 0.5, 0.125, 0.25], [0.25, 0.25, 0.25, 0.25]])
    out = top_p_filter(logits, 0.7)
    assert kept(out[0]) == [1, 3]
    assert kept(out[1]) == [0, 1, 2]  # ties: three of the four equal tokens, lowest ids first
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])  # kept logits are unchanged


def test_top_p_ties_keep_exactly_enough_tokens():
    out = top_p_filter(logits_of([0.25, 0.25, 0.25, 0.25]), 0.5)
    assert kept(out) == [0, 1]  # 2 tokens reach 0.5; a third tied one is not needed


def test_top_p_one_keeps_everything_even_tiny_probabilities():
    logits = torch.tensor([10.0, 0.0, -30.0, -80.0])
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@given(st.lists(st.floats(-6, 6), min_size=1, max_size=12), st.floats(0.01, 1.0))
def test_top_p_property(raw, p):
    logits = torch.tensor(raw, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    keep = top_p_filter(logits, p) > float("-inf")
    mass = probs[keep].sum().item()
    assert keep.any()
    assert mass >= p - 1e-9 or keep.all()  # reaches p
    assert mass - probs[keep].min().item() < p + 1e-9  # minus its least likely: below p
    assert probs[keep].min() >= probs[~keep].max() if (~keep).any() else True  # most likely


def test_top_k_filter_keeps_k_and_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [2.0, 2.0, 2.0, 1.0]])
    assert kept(top_k_filter(logits, 2)[0]) == [1, 3]
    assert kept(top_k_filter(logits, 2)[1]) == [0, 1, 2]  # ties with the 2nd largest stay, as HF
    assert torch.equal(top_k_filter(logits, 10), logits)


# ----------------------------------------------------------------------------- beam search


def test_beam_search_with_one_beam_equals_greedy():
    model = tiny()
    assert torch.equal(generate(model, prompt(), 15, num_beams=1),
                       beam_search(model, prompt(), 15, num_beams=1)[0])
    assert torch.equal(beam_search(model, prompt(), 15, num_beams=1)[0],
                       generate(model, prompt(), 15))


def log_prob(model, x, T):
    """Log-probability of x's tokens after position T, by one full forward pass."""
    with torch.no_grad():
        lp = torch.log_softmax(model(x[None, :-1]).double(), -1)[0]  # (L-1, V)
    return sum(lp[t - 1, x[t]].item() for t in range(T, len(x)))


@pytest.mark.parametrize("use_cache", [True, False])
def test_wide_beam_search_finds_the_most_probable_continuation(use_cache):
    vocab, n_new, T = 4, 3, 2
    model = tiny("rope", vocab_size=vocab, seed=1)
    x = prompt(B=1, T=T, vocab_size=vocab)
    every = [torch.cat((x[0], torch.tensor(c))) for c in itertools.product(range(vocab),
                                                                           repeat=n_new)]
    scores = [log_prob(model, s, T) for s in every]
    best = max(range(len(every)), key=scores.__getitem__)
    K = vocab ** (n_new - 1)  # wide enough to keep every prefix
    seqs, got = beam_search(model, x, n_new, num_beams=K, length_penalty=0.0,
                            use_cache=use_cache)
    assert torch.equal(seqs[0], every[best])
    assert math.isclose(got.item(), scores[best], abs_tol=1e-4)
    _, normalised = beam_search(model, x, n_new, num_beams=K, use_cache=use_cache)
    assert math.isclose(normalised.item(), scores[best] / n_new, abs_tol=1e-4)  # HF's score


def test_beam_search_beats_or_equals_greedy_log_probability():
    model = tiny(seed=2)
    x = prompt(B=1, T=4)
    greedy = generate(model, x, 6)[0]
    beams, _ = beam_search(model, x, 6, num_beams=5)
    assert log_prob(model, beams[0], 4) >= log_prob(model, greedy, 4) - 1e-6


def test_beam_search_stops_at_eos_and_pads():
    model = tiny(seed=3)
    x = prompt(B=2, T=4)
    free, _ = beam_search(model, x, 8, num_beams=3)
    eos = int(free[0, 4 + 2])
    seqs, scores = beam_search(model, x, 8, num_beams=3, eos_token_id=eos)
    assert seqs.shape[0] == 2 and scores.shape == (2,)
    for row in seqs:
        hits = (row[4:] == eos).nonzero()
        if len(hits):  # after the first eos, only eos
            assert (row[4 + hits[0].item():] == eos).all()


# ----------------------------------------------------------------------------- eos, stream, mode


def test_each_row_stops_at_eos_and_is_padded_with_it():
    model = tiny()
    x = prompt(B=2, T=5)
    free = generate(model, x, 15)
    eos = int(free[1, 5 + 2])
    out = generate(model, x, 15, eos_token_id=eos)
    first = (out[1, 5:] == eos).nonzero()[0].item()
    assert torch.equal(out[1, : 5 + first], free[1, : 5 + first])
    assert (out[1, 5 + first:] == eos).all()
    row0_hits = (free[0, 5:] == eos).nonzero()
    end0 = row0_hits[0].item() if len(row0_hits) else 15
    assert torch.equal(out[0, : 5 + end0], free[0, : 5 + end0])


def test_generation_stops_early_when_every_row_finished():
    model = tiny()
    x = prompt(B=1, T=5)
    eos = int(generate(model, x, 15)[0, 5 + 2])
    out = generate(model, x, 15, eos_token_id=eos)
    assert out.shape[1] <= 5 + 3 and out[0, -1] == eos


def test_stream_yields_the_same_tokens_as_generate():
    model = tiny()
    steps = list(generate_stream(model, prompt(), 12))
    assert len(steps) == 12 and steps[0].shape == (2,)
    assert torch.equal(torch.stack(steps, 1), generate(model, prompt(), 12)[:, 5:])


def test_training_flag_restored_and_no_graph_built():
    model = tiny().train()
    out, logits = generate(model, prompt(), 5, return_logits=True)
    assert model.training and not logits.requires_grad
    assert not out.is_inference() and not logits.is_inference()  # in-place edits allowed
    out[0, 0] = 1
    logits.mul_(2)
    seqs, scores = beam_search(model, prompt(), 3, num_beams=2)
    assert not seqs.is_inference() and not scores.is_inference()
    assert not any(t.is_inference() for t in generate_stream(model, prompt(), 3))
    beam_search(model, prompt(), 3, num_beams=2)
    assert model.training
    stream = generate_stream(model, prompt(), 5)
    next(stream)
    assert not model.training  # eval while the stream runs
    stream.close()
    assert model.training
    assert torch.is_grad_enabled()


def test_zero_new_tokens_returns_the_prompt():
    model = tiny()
    assert torch.equal(generate(model, prompt(), 0), prompt())
    assert torch.equal(beam_search(model, prompt(), 0, num_beams=3)[0], prompt())


def test_output_fills_the_context_exactly():
    model = tiny(context_length=16)
    assert generate(model, prompt(T=6), 10).shape == (2, 16)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling, got 0.0"),
    (dict(do_sample=True, temperature=-1.0), "use do_sample=False"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), "got 1.5"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_beams=2, do_sample=True), "beam search with sampling"),
])
def test_bad_settings_raise_with_the_value_and_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny(), prompt(), 3, **kwargs)


def test_negative_max_new_tokens():
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        generate(tiny(), prompt(), -1)


@pytest.mark.parametrize("ids", [torch.tensor([1, 2, 3]), torch.tensor([[1.0, 2.0]]),
                                 [[1, 2, 3]], torch.zeros(2, 0, dtype=torch.long)])
def test_ids_must_be_a_nonempty_long_tensor_of_shape_b_t(ids):
    with pytest.raises(ValueError, match="LongTensor of shape|prompt is empty"):
        generate(tiny(), ids, 3)


def test_prompt_that_fills_the_context_says_how_to_crop():
    model = tiny(context_length=16)
    x = prompt(T=16)
    with pytest.raises(ValueError, match=r"prompt has 16 tokens but the context window is 16"
                                         r".*keep the last .* = 11 tokens, e\.g\. ids\[:, -11:\]"):
        generate(model, x, 5)
    assert generate(model, x[:, -11:], 5).shape == (2, 16)  # the advice works


def test_prompt_plus_new_tokens_beyond_the_context_is_an_error_not_a_silent_crop():
    model = tiny(context_length=16)
    with pytest.raises(ValueError, match=r"prompt has 10 tokens .* ids\[:, -8:\]"):
        generate(model, prompt(T=10), 8)
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        generate(model, prompt(T=1), 16)
    with pytest.raises(ValueError, match="context window"):
        list(generate_stream(model, prompt(T=10), 8))
    with pytest.raises(ValueError, match="context window"):
        beam_search(model, prompt(T=10), 8, num_beams=2)


def test_generate_is_exported_at_the_top_level():
    import lmkit

    assert lmkit.generate is generate and callable(lmkit.generate_stream)


# ----------------------------------------------------------------------------- filters validate


@pytest.mark.parametrize(("k", "error", "match"), [
    (0, ValueError, "top_k must be an integer >= 1.*got 0"),
    (-3, ValueError, "got -3"),
    (True, TypeError, "got True of type bool"),
    (2.5, TypeError, "got 2.5 of type float"),
    ("5", TypeError, "got '5' of type str"),
])
def test_top_k_filter_validates_k(k, error, match):
    with pytest.raises(error, match=match):
        top_k_filter(torch.randn(2, 10), k)


@pytest.mark.parametrize(("p", "error", "match"), [
    (0.0, ValueError, r"top_p must be in \(0, 1\].*got 0.0"),
    (-0.5, ValueError, "got -0.5"),
    (1.5, ValueError, "got 1.5"),
    (float("nan"), ValueError, "got nan"),
    (True, TypeError, "got True of type bool"),
    ("0.9", TypeError, "got '0.9' of type str"),
])
def test_top_p_filter_validates_p(p, error, match):
    with pytest.raises(error, match=match):
        top_p_filter(torch.randn(2, 10), p)


def test_filters_reject_what_is_not_float_logits():
    with pytest.raises(TypeError, match="floating-point logits.*torch.int64"):
        top_k_filter(torch.arange(10), 3)
    with pytest.raises(TypeError, match="floating-point logits.*list"):
        top_p_filter([0.1, 0.2], 0.5)


def test_numpy_integer_k_is_accepted():
    import numpy as np

    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_k_filter(x, np.int64(3)), top_k_filter(x, 3))


def test_generate_passes_the_same_checks():
    with pytest.raises(TypeError, match="top_k must be an integer >= 1.*got True"):
        generate(tiny(), prompt(), 3, do_sample=True, top_k=True)


def test_generate_refuses_an_encoder():
    torch.manual_seed(0)
    encoder = TransformerLM(ModelConfig(vocab_size=V, context_length=16, d_model=32, n_layers=1,
                                        n_heads=4, causal=False))
    for run in (lambda: generate(encoder, prompt(), 3),
                lambda: list(generate_stream(encoder, prompt(), 3)),
                lambda: beam_search(encoder, prompt(), 3, num_beams=2)):
        with pytest.raises(ValueError, match=r"causal language model.*config.causal=False"):
            run()


# ----------------------------------------------------------------------------- by hand


def test_greedy_equals_argmax_of_a_full_forward_at_each_step_by_hand():
    """The reference loop: run the whole sequence, take the argmax of the last position."""
    model = tiny()
    x = prompt(B=3, T=4)
    seq = x.clone()
    with torch.no_grad():
        for _ in range(15):
            nxt = model(seq)[:, -1].argmax(dim=-1)  # (B,)
            seq = torch.cat((seq, nxt[:, None]), dim=1)
    assert torch.equal(generate(model, x, 15), seq)
    assert torch.equal(generate(model, x, 15, use_cache=False), seq)


def test_sampling_equals_a_hand_written_sampler_on_the_same_generator():
    """softmax(logits / T), keep the top k and the nucleus by hand, one multinomial per step."""
    model = tiny()
    x = prompt(B=2, T=3)
    temperature, k, p = 1.3, 8, 0.8
    g = torch.Generator().manual_seed(5)
    seq = x.clone()
    with torch.no_grad():
        for _ in range(12):
            logits = model(seq)[:, -1] / temperature  # (B, V)
            kth = logits.sort(dim=-1, descending=True).values[:, k - 1 : k]  # (B, 1)
            logits = torch.where(logits >= kth, logits, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < p  # mass before it is below p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g)  # (B, 1)
            seq = torch.cat((seq, nxt), dim=1)
    got = generate(model, x, 12, do_sample=True, temperature=temperature, top_k=k, top_p=p,
                   generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, seq)


# ----------------------------------------------------------------------------- argument types


def _every_entry_point(model, ids, n, **kwargs):
    """Call generate, generate_stream and beam_search (directly and through generate)."""
    yield lambda: generate(model, ids, n, **kwargs)
    yield lambda: generate_stream(model, ids, n, **kwargs)  # raises on creation, not next()
    yield lambda: generate(model, ids, n, num_beams=2, **kwargs)
    yield lambda: beam_search(model, ids, n, num_beams=2, **kwargs)


@pytest.mark.parametrize(("n", "error", "match"), [
    (True, TypeError, "max_new_tokens must be an integer >= 0.*got True of type bool"),
    (False, TypeError, "got False of type bool"),
    (2.0, TypeError, "got 2.0 of type float"),
    ("3", TypeError, "got '3' of type str"),
    (-1, ValueError, "max_new_tokens must be an integer >= 0, got -1"),
])
def test_max_new_tokens_is_a_count_not_a_bool(n, error, match):
    model = tiny()
    for call in _every_entry_point(model, prompt(), n):
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize(("eos", "error", "match"), [
    (V, ValueError, rf"eos_token_id={V} is not in this model's vocabulary of {V} tokens "
                    rf"\(ids 0\.\.{V - 1}\)"),
    (-1, ValueError, "eos_token_id=-1 is not in"),
    (True, TypeError, "eos_token_id must be a token id.*got True of type bool"),
    (2.0, TypeError, "got 2.0 of type float"),
    ("<|endoftext|>", TypeError, r"got '<\|endoftext\|>' of type str.*tokenizer"),
])
def test_eos_token_id_must_be_a_token_of_the_vocabulary(eos, error, match):
    """An eos id the model can never produce would silently never stop a row."""
    model = tiny()
    for call in _every_entry_point(model, prompt(), 3, eos_token_id=eos):
        with pytest.raises(error, match=match):
            call()
    generate(model, prompt(), 3, eos_token_id=V - 1)  # the first and last ids are accepted
    generate(model, prompt(), 3, eos_token_id=0)
