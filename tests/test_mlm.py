"""Masked-LM training (chapter 10): BERT's 80/10/10 masking, the loss on masked positions only,
and lmkit.train running it."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmkit.data import get_batch
from lmkit.mlm import IGNORE_INDEX, apply_masking, mask_tokens, mlm_loss
from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import TrainConfig, Trainer, lm_loss


def test_apply_masking_against_a_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (4, 30), generator=g)
    u1, u2 = torch.rand(4, 30, generator=g), torch.rand(4, 30, generator=g)
    rnd = torch.randint(50, (4, 30), generator=g)
    inputs, labels = apply_masking(ids, u1, u2, rnd, mask_id=3, p=0.3)
    for b in range(4):
        for t in range(30):
            if u1[b, t] < 0.3:
                assert labels[b, t] == ids[b, t]
                want = 3 if u2[b, t] < 0.8 else rnd[b, t] if u2[b, t] < 0.9 else ids[b, t]
                assert inputs[b, t] == want
            else:
                assert labels[b, t] == IGNORE_INDEX and inputs[b, t] == ids[b, t]


def test_mask_tokens_statistics_and_special_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 512), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    inputs, labels = mask_tokens(ids, mask_id=3, vocab_size=1000, generator=g,
                                 special_ids=[1, 2])
    chosen = labels != IGNORE_INDEX
    n = chosen.sum().item()
    assert abs(n / ((512 - 2) * 64) - 0.15) < 0.005
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else is touched
    masked = (inputs == 3) & chosen
    unchanged = (inputs == ids) & chosen
    swapped = chosen & ~masked & ~unchanged
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    # a random replacement can draw the original token (1 in 1000): counted as unchanged
    assert abs(swapped.sum().item() / n - 0.1) < 0.01
    assert abs(unchanged.sum().item() / n - 0.1) < 0.01


def test_mask_tokens_is_reproducible_and_checks_its_input():
    ids = torch.randint(4, 100, (2, 50), generator=torch.Generator().manual_seed(1))
    a = mask_tokens(ids, 3, 100, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, 3, 100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="mask_id 100 is not a token id"):
        mask_tokens(ids, 100, 100)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\)"):
        mask_tokens(ids, 3, 100, p=0.0)
    with pytest.raises(ValueError, match="LongTensor"):
        mask_tokens(ids.float(), 3, 100)


def test_mlm_loss_is_the_mean_over_masked_positions_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 1], labels[1, 4], labels[1, 5] = 3, 7, 0
    logp = torch.log_softmax(logits, dim=-1)
    want = -(logp[0, 1, 3] + logp[1, 4, 7] + logp[1, 5, 0]) / 3
    torch.testing.assert_close(mlm_loss(logits, labels), want)
    torch.testing.assert_close(lm_loss(logits, labels), want)  # lm_loss skips -100 as well
    # an untrained model's loss: about log V at every masked position
    flat = torch.zeros(2, 6, 11)
    assert math.isclose(mlm_loss(flat, labels).item(), math.log(11), rel_tol=1e-6)


def tiny_encoder():
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.bert(vocab_size=20, context_length=16, d_model=32,
                                          n_layers=2, n_heads=4, d_ff=64, type_vocab_size=0))


def test_trainer_step_loss_is_the_masked_loss_of_the_masked_batch(one_thread):
    model = tiny_encoder()
    data = torch.arange(400) % 17 + 1  # token 0 is [MASK], never in the data
    config = TrainConfig(steps=3, batch_size=4, context_length=16, warmup_steps=0,
                         mlm_mask_id=0, device="cpu", eval_interval=100)
    trainer = Trainer(model, data, data, config)
    g = torch.Generator()
    g.set_state(trainer.generator.get_state())  # the same random numbers the step will draw
    x, _ = get_batch(data, 4, 16, generator=g)
    inputs, labels = mask_tokens(x, 0, 20, 0.15, g)
    with torch.no_grad():
        want = F.cross_entropy(model(inputs).reshape(-1, 20), labels.reshape(-1),
                               ignore_index=-100)
    assert math.isclose(trainer.train_step(), want.item(), rel_tol=1e-5)


def test_masked_lm_learns_to_read_the_context(one_thread):
    """Runs of 40 equal tokens, the token of each run drawn uniformly from 17: without context
    the best loss is log 17 = 2.83; a masked token is given away by its neighbours."""
    model = tiny_encoder()
    runs = torch.randint(1, 18, (100,), generator=torch.Generator().manual_seed(0))
    data = runs.repeat_interleave(40)  # token 0 is [MASK], never in the data
    config = TrainConfig(steps=200, batch_size=16, context_length=16, lr=1e-2, warmup_steps=10,
                         mlm_mask_id=0, device="cpu", eval_interval=200, eval_batches=4)
    history = Trainer(model, data, data, config).run(progress=False)
    assert history["loss"][0] > 2.5  # about log 20 = 3.0 at the start
    assert history["val_loss"][-1] < 1.0
    with pytest.raises(ValueError, match="mlm_probability"):
        TrainConfig(mlm_mask_id=0, mlm_probability=1.0)


def test_trainer_refuses_next_token_training_of_a_bidirectional_model():
    """Without causal masking every position sees the token it must predict: the loss falls to
    ~0 by copying (measured: 0.39 nats vs 2.99 on random tokens). Only masked-LM training fits."""
    data = torch.randint(1, 20, (400,), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=1, batch_size=2, context_length=16, device="cpu")
    with pytest.raises(ValueError, match=r"causal=False.*mlm_mask_id"):
        Trainer(tiny_encoder(), data, data, config)
    Trainer(tiny_encoder(), data, data, TrainConfig(steps=1, batch_size=2, context_length=16,
                                                    device="cpu", mlm_mask_id=0))  # accepted


def test_trainer_refuses_a_model_without_a_head():
    """head="none" returns H (B, T, C); read as logits it would train on C "classes" silently
    whenever d_model >= the vocabulary."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=20, context_length=8, d_model=32, n_layers=1,
                                      n_heads=2, head="none"))
    data = torch.randint(20, (400,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"no head.*head=\"lm\""):
        Trainer(model, data, data, TrainConfig(steps=1, batch_size=2, device="cpu"))


def test_batches_without_a_masked_position_do_not_put_nan_in_the_history(one_thread):
    """With 1 window of 4 tokens, p=0.15 leaves every position unmasked in 52% of the batches;
    cross-entropy over no position is NaN. Such a batch has nothing to predict: loss 0, no
    gradient, and evaluation averages over the batches that do have masked positions."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.bert(vocab_size=20, context_length=4, d_model=16,
                                           n_layers=1, n_heads=2, d_ff=32, type_vocab_size=0))
    data = torch.randint(1, 20, (400,), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=20, batch_size=1, context_length=4, warmup_steps=0,
                         mlm_mask_id=0, device="cpu", eval_interval=10, eval_batches=8)
    history = Trainer(model, data, data, config).run(progress=False)
    losses = torch.tensor(history["loss"])
    assert (losses == 0).any()  # some steps had nothing masked ...
    assert torch.isfinite(losses).all() and (losses > 0).any()  # ... and none gave NaN
    assert all(math.isfinite(v) for v in history["val_loss"] + history["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mask_tokens_names_ids_outside_the_vocabulary_and_a_bare_special_id():
    ids = torch.tensor([[1, 5, 50, 2]])
    with pytest.raises(ValueError, match=r"token id 50 .* vocabulary of 20"):
        mask_tokens(ids, 3, 20)  # the labels would hold ids the model cannot predict
    with pytest.raises(TypeError, match=r"special_ids must be a list of ids.*\[0\]"):
        mask_tokens(ids.clamp(max=19), 3, 20, special_ids=0)  # was "'int' object is not iterable"
