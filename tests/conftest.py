import os

import pytest
import torch
from hypothesis import settings

# Tests never touch the network: reference libraries run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

settings.register_profile("lmkit", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("lmkit")


@pytest.fixture
def one_thread():
    """Tiny models train fastest, and reproducibly, on one thread (2 shared cores in CI)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct loaded once per test session (chapter 09): (model, tokenizer)."""
    pytest.importorskip("gguf")
    from lmkit.pretrained import load_smollm2

    return load_smollm2()
