"""One process of a data-parallel test run (tests/test_train_distributed.py starts two).

    python tests/ddp_worker.py SCENARIO OUT_FOLDER

RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the environment, as under torchrun.
Scenarios: train (4 steps, saved into rank{r}/, where only rank 0 may write; then the same
run again as 2 steps, save, load, 2 more steps, saved into resumed/), crash (rank 1 raises in
step 2), hang (rank 1 stops answering in step 2).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from lmkit import distributed
from lmkit.model import ModelConfig, TransformerLM
from lmkit.train import TrainConfig, Trainer

STEPS = 4


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) ids: random tokens, the same in every process."""
    ids = torch.randint(32, (4000,), generator=torch.Generator().manual_seed(0))
    return ids[:3600], ids[3600:]


def make_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.gpt2(vocab_size=32, context_length=16, d_model=32,
                                          n_layers=2, n_heads=2))


def make_config(**changes) -> TrainConfig:
    settings = dict(steps=STEPS, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=1,
                    eval_interval=2, eval_batches=2, device="cpu")
    return TrainConfig(**{**settings, **changes})


def main(scenario: str, out: Path) -> None:
    torch.set_num_threads(1)
    timeout = 3.0 if scenario == "hang" else 60.0
    distributed.init_from_env(timeout_s=timeout, device="cpu")
    rank = distributed.rank()
    train_ids, val_ids = corpus()

    def new_trainer() -> Trainer:
        # different weights on purpose: DDP must start every rank from rank 0's
        return Trainer(make_model(seed=100 + rank), train_ids, val_ids, make_config())

    trainer = new_trainer()
    if scenario in ("crash", "hang") and rank == 1:
        step = trainer.train_step

        def failing_step():
            if trainer.step == 1:
                if scenario == "crash":
                    raise ValueError("rank 1 broke on purpose")
                time.sleep(60)  # stops answering; the test kills it
            return step()

        trainer.train_step = failing_step
    trainer.run(progress=False)
    trainer.save(out / f"rank{rank}")  # only rank 0 may write
    (out / f"history{rank}.json").write_text(json.dumps(trainer.history))

    # the same run again, stopped half-way, saved, loaded and finished
    half = new_trainer()
    half.run(steps=STEPS // 2, progress=False)
    half.save(out / "half")
    resumed = Trainer.load(out / "half", train_ids, val_ids, device="cpu")
    resumed.run(progress=False)
    resumed.save(out / "resumed")
    if rank == 0:
        (out / "history_resumed.json").write_text(json.dumps(resumed.history))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
