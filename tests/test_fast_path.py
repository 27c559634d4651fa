"""The fast path's shortcuts change speed, never results: one q/k/v product, no causal mask
built for PyTorch's causal kernel, the fused AdamW (benchmarks/throughput.py)."""

import pytest
import torch

import lmkit.attention as A
from lmkit.attention import MultiHeadAttention
from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import configure_optimizer, lm_loss


@pytest.mark.parametrize("kwargs", [{}, {"n_kv_heads": 2}, {"bias": False, "n_kv_heads": 1},
                                    {"rope_theta": 10000.0}])
def test_one_qkv_product_gives_the_same_outputs_and_gradients(kwargs):
    torch.manual_seed(0)
    fast = MultiHeadAttention(32, 4, **kwargs)
    slow = MultiHeadAttention(32, 4, fast=False, **kwargs)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 7, 32)
    for m in (fast, slow):
        m(x).square().sum().backward()
    torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_projection_hooks_still_run_on_the_fast_path():
    m = MultiHeadAttention(16, 2)
    seen = []
    m.k_proj.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    m(torch.randn(1, 3, 16))
    assert seen == [(1, 3, 16)]


def test_a_replaced_projection_module_runs_its_own_forward_on_the_fast_path():
    class Shifted(torch.nn.Linear):  # a LoRA-like subclass whose forward differs from F.linear
        def forward(self, x):
            return super().forward(x) + 100.0

    torch.manual_seed(0)
    fast = MultiHeadAttention(16, 2)
    slow = MultiHeadAttention(16, 2, fast=False)
    slow.load_state_dict(fast.state_dict())
    for m in (fast, slow):
        shifted = Shifted(16, 16)
        shifted.load_state_dict(m.v_proj.state_dict())
        m.v_proj = shifted
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(fast(x), slow(x), atol=1e-4, rtol=1e-4)


def test_decoding_without_gradients_does_not_stack_the_weights(monkeypatch):
    calls = []
    real = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = MultiHeadAttention(16, 2)
    with torch.no_grad():
        m(torch.randn(1, 3, 16))
    assert calls == []
    m(torch.randn(1, 3, 16))  # training: one stacked product
    assert len(calls) == 2  # the weights and the biases


def test_the_fast_causal_path_builds_no_mask(monkeypatch):
    calls = []
    real = A.causal_mask
    monkeypatch.setattr(A, "causal_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    m = MultiHeadAttention(16, 2)
    m(torch.randn(1, 5, 16))
    assert calls == []  # is_causal=True: the kernel knows the mask
    m.fast = False
    m(torch.randn(1, 5, 16))
    assert calls == [(5, 5)]


def test_configure_optimizer_uses_the_fused_kernel_with_the_same_updates():
    torch.manual_seed(0)
    cfg = ModelConfig.gpt2(vocab_size=50, context_length=8, d_model=16, n_layers=1, n_heads=2)
    a = TransformerLM(cfg)
    b = TransformerLM(cfg)
    b.load_state_dict(a.state_dict())
    opt_a = configure_optimizer(a, 1e-2, 0.1)
    assert opt_a.defaults["fused"] is True
    # the reference: PyTorch's plain for-loop AdamW with the same groups
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
              for g in configure_optimizer(b, 1e-2, 0.1).param_groups]
    opt_b = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    x = torch.randint(50, (2, 8))
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            lm_loss(model(x), x).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        # a key bias shifts every score of a query alike: its gradient is rounding noise
        # (~1e-11), which Adam's normalisation turns into steps of ~lr * 1e-3
        atol = 1e-4 if name.endswith("k_proj.bias") else 1e-6
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)
