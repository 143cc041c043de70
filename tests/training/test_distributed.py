"""Two CPU processes with gloo: their weights must stay identical, and equal one process's."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from training.distributed import DistributedContext
from training.trainer import Trainer

from .conftest import tiny_config, tiny_corpus

SETTINGS = {"batch_size": 4, "eval_batch_size": 2, "max_steps": 12, "optimizer": "adamw", "lr": 0.01, "clip": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, world_size: int, port: int, tmp: str, corpus_dir: str = "") -> None:
    # torchrun would set these; the test plays its part.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        context = DistributedContext(rank, world_size, rank)
        if corpus_dir:  # the corpus named by the config: rank 0 encodes its token files, both ranks map them
            config = tiny_config(Path(tmp) / "out", data=corpus_dir, cache_dir=str(Path(tmp) / "cache"), **SETTINGS)
            trainer = Trainer(config, context=context)
            assert isinstance(trainer.train_data, np.memmap)
            (Path(tmp) / f"rank{rank}.files").write_text(str(trainer.encoded.directory))
        else:
            trainer = Trainer(tiny_config(Path(tmp) / "out", **SETTINGS), context=context, corpus=tiny_corpus())
        assert trainer.train_data.shape[0] == 2  # this rank's half of the 4 streams
        trainer.run()
        weights = {k: v.contiguous().clone() for k, v in trainer.model.state_dict().items() if k != "decoder.weight"}
        save_file(weights, str(Path(tmp) / f"rank{rank}.safetensors"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("source", ["text", "token files"])
def test_two_ranks_keep_identical_weights_equal_to_one_process(tmp_path: Path, source: str) -> None:
    corpus_dir = ""
    if source == "token files":  # the same splits as tiny_corpus(), as a directory's split files
        corpus = tiny_corpus()
        (tmp_path / "corpus").mkdir()
        for split in ("train", "valid", "test"):
            (tmp_path / "corpus" / f"{split}.txt").write_text(corpus.text(split))
        corpus_dir = str(tmp_path / "corpus")
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), corpus_dir), nprocs=2, join=True)
    if corpus_dir:  # one set of token files, read by both ranks
        assert (tmp_path / "rank0.files").read_text() == (tmp_path / "rank1.files").read_text()
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    single = Trainer(tiny_config(tmp_path / "single", **SETTINGS), corpus=tiny_corpus())
    single.run()
    start = Trainer(tiny_config(tmp_path / "start", **SETTINGS), corpus=tiny_corpus()).model.state_dict()
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name  # DDP keeps the replicas in lockstep
        # Gradients averaged over the two halves = the gradient over all four streams.
        torch.testing.assert_close(tensor, single.model.state_dict()[name], rtol=1e-4, atol=1e-5)
        assert not torch.equal(tensor, start[name]), name  # and training did move them
    assert (tmp_path / "out" / "config.json").is_file()  # rank 0 wrote the checkpoint
