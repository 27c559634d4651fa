"""`generate(..., slide=True)`: the one sampler slides its window only when asked (chapter 08).

The reference is a plain loop over `model(...)` on the last context_length tokens, the
definition of a sliding window, written here without any of lmkit.generation's code.
"""

import pytest
import torch

from lmkit.generation import beam_search, generate, generate_stream
from lmkit.model import ModelConfig, TransformerLM

V, M = 41, 16


def tiny(positional="learned"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, context_length=M, d_model=32, n_layers=2, n_heads=4,
                      positional=positional)
    model = TransformerLM(cfg)
    with torch.no_grad():  # peaked predictions: greedy ties are unlikely
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def prompt(B=2, T=5):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def sliding_reference(model, ids, n, generator=None, temperature=1.0):
    """Greedy (generator None) or sampled decoding from the last M tokens, step by step."""
    out = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(out[:, -M:])[:, -1].float()  # (B, V)
            if generator is None:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            out = torch.cat((out, nxt[:, None]), dim=1)
    return out


def test_output_longer_than_the_window_is_refused_by_default_with_the_fix():
    model = tiny()
    with pytest.raises(ValueError, match="slide=True"):
        generate(model, prompt(T=5), 12)  # 17 > 16
    with pytest.raises(ValueError, match="slide=True"):
        generate(model, prompt(T=1), M)  # max_new_tokens alone fills the window
    with pytest.raises(ValueError, match="slide=True"):
        generate_stream(model, prompt(T=5), 12)  # refused when created, before any step
    with pytest.raises(ValueError, match="slide must be True or False"):
        generate(model, prompt(), 3, slide="yes")


@pytest.mark.parametrize("positional", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_slide_equals_the_sliding_window_loop(positional, use_cache):
    model = tiny(positional)
    x = prompt()
    out = generate(model, x, 3 * M, slide=True, use_cache=use_cache)
    assert out.shape == (2, 5 + 3 * M)
    assert torch.equal(out, sliding_reference(model, x, 3 * M))


def test_a_prompt_longer_than_the_window_is_kept_whole_and_read_through_the_window():
    model = tiny()
    x = prompt(T=M + 7)
    out = generate(model, x, 5, slide=True)
    assert torch.equal(out[:, : M + 7], x)
    assert torch.equal(out, sliding_reference(model, x, 5))


def test_sampled_slide_equals_the_loop_with_the_same_generator():
    model = tiny()
    x = prompt()
    out = generate(model, x, 2 * M, slide=True, do_sample=True, temperature=0.9,
                   generator=torch.Generator().manual_seed(3))
    ref = sliding_reference(model, x, 2 * M, generator=torch.Generator().manual_seed(3),
                            temperature=0.9)
    assert torch.equal(out, ref)


def test_slide_changes_nothing_while_the_output_fits():
    model = tiny()
    x = prompt()
    a, la = generate(model, x, M - 5, slide=True, return_logits=True)
    b, lb = generate(model, x, M - 5, return_logits=True)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_stream_slides_like_generate():
    model = tiny()
    x = prompt()
    steps = list(generate_stream(model, x, 2 * M, slide=True))
    assert torch.equal(torch.stack(steps, 1), generate(model, x, 2 * M, slide=True)[:, 5:])


def test_beam_search_does_not_slide():
    model = tiny()
    with pytest.raises(ValueError, match="not beam search"):
        generate(model, prompt(), 2 * M, num_beams=2, slide=True)
    # fitting in the window, slide=True is allowed and changes nothing
    assert torch.equal(generate(model, prompt(), 4, num_beams=2, slide=True),
                       beam_search(model, prompt(), 4, num_beams=2)[0])


def test_there_is_one_sampler():
    import lmkit
    import lmkit.train

    assert not hasattr(lmkit.train, "sample"), "lmkit.train.sample duplicated lmkit.generate"
    assert lmkit.generate is generate
