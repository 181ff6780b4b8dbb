"""Measure a sharded training step: the same Llama-style model under PyTorch FSDP2
(`torch.distributed.fsdp.fully_shard`) on CPU ranks that talk over loopback with gloo.

Each rank reports the bytes of its own shards (a DTensor's `to_local()`) of the parameters, the
gradients and the Adam states after one step, to compare with the ZeRO-3/FSDP prediction of
`training_memory(..., sharding="fsdp", n_gpus=world_size)`.
"""
from __future__ import annotations

import os
import queue
import socket
import time

import torch

from quantlib.memory.config import ModelConfig
from quantlib.memory.tracker import MeasuredMemory, optimizer_state_tensors, storage_bytes
from quantlib.memory.training import training_memory
from quantlib.table import Table


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, config, batch_size, seq_len, results):
    import torch.distributed as dist
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6 kept FSDP2 under _composable
        from torch.distributed._composable.fsdp import fully_shard

    from quantlib.memory.model import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = build_model(config, seq_len, seed=0)
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(rank)
        ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g)
        targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g)
        model(ids, targets).backward()
        opt.step()
        params = list(model.parameters())
        results.put((rank, MeasuredMemory(
            storage_bytes(params), storage_bytes(p.grad for p in params if p.grad is not None),
            storage_bytes(optimizer_state_tensors(opt)), 0)))
    finally:
        dist.destroy_process_group()


def measure_fsdp(config: ModelConfig, world_size: int = 2, batch_size: int = 2,
                 seq_len: int = 64, timeout: float = 120.0) -> list[MeasuredMemory]:
    """Run one FSDP2 training step on `world_size` CPU processes (gloo, 127.0.0.1); return each
    rank's parameter, gradient and optimizer-state bytes (activations not measured: 0).
    Raises TimeoutError if the ranks do not finish within `timeout` seconds."""
    import torch.multiprocessing as mp

    if config.tie_word_embeddings:
        raise ValueError("measure_fsdp needs untied embeddings (FSDP shards each parameter "
                         "once; a tied LM head would be counted with the embedding)")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = mp.start_processes(_worker, args=(world_size, free_port(), config, batch_size,
                                              seq_len, results),
                               nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    out = {}
    try:
        while len(out) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"FSDP ranks did not finish within {timeout} s")
            try:
                rank, mem = results.get(timeout=min(left, 1.0))
                out[rank] = mem
            except queue.Empty:
                # procs.join(timeout=0): every rank exited (raises if one failed)
                if procs.join(timeout=0) and len(out) < world_size:
                    raise RuntimeError("an FSDP rank exited without a result")
        while not procs.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"FSDP ranks did not exit within {timeout} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
    return [out[r] for r in range(world_size)]


def fsdp_table(config: ModelConfig, world_size: int = 2, batch_size: int = 2, seq_len: int = 64,
               timeout: float = 120.0) -> Table:
    """Each rank's measured shard bytes (FSDP2, fp32, Adam) next to the ZeRO-3/FSDP prediction."""
    ranks = measure_fsdp(config, world_size, batch_size, seq_len, timeout)
    want = training_memory(config, "fp32", batch_size, seq_len, n_gpus=world_size,
                           sharding="fsdp")
    t = Table(["rank", "component", "predicted kB", "measured kB",
               "measured - predicted (bytes)", "measured / predicted"],
              title=f"{config.name}: FSDP2 on {world_size} CPU ranks (gloo), bytes per rank",
              digits=3)
    for r, m in enumerate(ranks):
        for name, p, got in (("parameters", want.weights, m.parameters),
                             ("gradients", want.gradients, m.gradients),
                             ("optimizer states", want.optimizer_states, m.optimizer_states)):
            t.append([r, name, p / 1e3, got / 1e3, got - p, got / p])
    return t
