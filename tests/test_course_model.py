"""The shipped course model (lmkit/models/shakespeare) loads and matches its recorded validation loss."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lmkit import data
from lmkit.model import RETIRED_FIELDS
from lmkit.train import COURSE_MODEL, load_course_model, sequence_loss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train_course_model  # noqa: E402


@pytest.fixture(scope="module")
def record():
    return json.loads((COURSE_MODEL / "training.json").read_text("utf-8"))


def test_course_model_is_small_and_documented(record):
    size = sum(p.stat().st_size for p in COURSE_MODEL.iterdir())
    assert size < 4_000_000, f"lmkit/models/shakespeare is {size:,} bytes; keep it under a few MB"
    readme = (COURSE_MODEL / "README.md").read_text("utf-8")
    assert "python tools/train_course_model.py" in readme and str(record["seed"]) in readme
    assert f"{record['val_slice_loss_float16']:.4f}" in readme


def test_validation_loss_matches_the_recorded_figure(record):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = load_course_model()
        ids = data.encode(tok, train_course_model.validation_slice())
        loss = sequence_loss(model, ids)
    finally:
        torch.set_num_threads(n)
    assert loss == pytest.approx(record["val_slice_loss_float16"], abs=1e-3)
    assert loss < math.log(tok.vocab_size) - 2  # far better than a uniform guess


def test_the_config_on_disk_is_what_the_script_trains(record):
    model, tok = load_course_model()
    assert not model.training, "the course model is for inference: load it in eval mode"
    on_disk = model.config.to_dict()  # fields added after training take defaults
    recorded = {k: v for k, v in record["model_config"].items() if k not in RETIRED_FIELDS}
    assert {k: on_disk[k] for k in recorded} == recorded
    assert {k: record["model_config"][k] for k in train_course_model.MODEL} == \
        train_course_model.MODEL
    assert tok.vocab_size == model.config.vocab_size == train_course_model.VOCAB_SIZE
    assert tok.decode(tok.encode("ROMEO:\nO, she doth teach")) == "ROMEO:\nO, she doth teach"


def test_samples_are_mostly_real_words(record):
    """Chapter 07's text-quality figure: >= 90% of the words in five seeded samples of 120
    tokens at temperature 0.8 occur in the corpus, as recorded in training.json."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = load_course_model()
        share, words = train_course_model.real_word_share(model, tok)
    finally:
        torch.set_num_threads(n)
    recorded = record["real_word_share"]
    assert share >= 0.90, f"only {share:.1%} of {words} sampled words occur in the corpus"
    # sampling is discrete: another CPU's rounding may flip a draw, so allow a little
    assert share == pytest.approx(recorded["share"], abs=0.02)
    assert recorded["samples"] == 5 and recorded["tokens_each"] == 120
