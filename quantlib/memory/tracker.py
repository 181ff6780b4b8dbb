"""Measured memory of a real training step: the bytes actually held, component by component.

Parameters, gradients and optimizer states are read off the model and the optimizer; the
activations are the tensors autograd saves for backward, caught with
`torch.autograd.graph.saved_tensors_hooks` while the forward pass runs. Several saved tensors
can share one storage (a view, or one tensor saved by two ops), so bytes are summed over distinct
storages; the model's own parameters and buffers are excluded (they are weights, not
activations). On a GPU, `cuda_peak_memory` reads `torch.cuda.max_memory_allocated` instead.
"""
from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from quantlib.memory.config import ModelConfig
from quantlib.memory.model import build_model
from quantlib.memory.training import TrainingMemory, training_memory
from quantlib.memory.units import to_unit
from quantlib.table import Table


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by views counts once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        t = _local(t)
        st = t.untyped_storage()
        seen[(t.device, st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's state (Adam: exp_avg, exp_avg_sq, step)."""
    return [v for state in optimizer.state.values() for v in state.values()
            if isinstance(v, torch.Tensor)]


@dataclass(frozen=True)
class MeasuredMemory:
    """Bytes held during one training step, as ints."""
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations


def measure_training_step(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor,
                          optimizer: torch.optim.Optimizer) -> MeasuredMemory:
    """Run forward, backward and `optimizer.step()` once; return the bytes each component holds.

    Activations are the distinct storages saved for backward, at the end of the forward pass.
    """
    own = {_local(t).untyped_storage().data_ptr()
           for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        st = _local(t).untyped_storage()
        if st.data_ptr() not in own:
            saved[st.data_ptr()] = st.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, targets)
    activations = sum(saved.values())
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    return MeasuredMemory(storage_bytes(params),
                          storage_bytes(p.grad for p in params if p.grad is not None),
                          storage_bytes(optimizer_state_tensors(optimizer)), activations)


def cuda_peak_memory(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor,
                     optimizer: torch.optim.Optimizer, steps: int = 2) -> int:
    """`torch.cuda.max_memory_allocated` over `steps` training steps (the first creates the
    gradients and optimizer states; gradients are zeroed, not freed, so they stay allocated)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=False)
        model(ids, targets).backward()
        optimizer.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def compare_table(predicted: TrainingMemory, measured: MeasuredMemory,
                  title: str | None = None) -> Table:
    """Predicted vs measured bytes by component, in MB (10^6 bytes), with their ratio."""
    rows = [("weights", predicted.weights + predicted.master_weights, measured.parameters),
            ("gradients", predicted.gradients, measured.gradients),
            ("optimizer states", predicted.optimizer_states, measured.optimizer_states),
            ("activations", predicted.activations, measured.activations)]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    t = Table(["component", "predicted MB", "measured MB", "measured - predicted (bytes)",
               "measured / predicted"], title=title, digits=3)
    for name, p, m in rows:
        t.append([name, to_unit(p, "MB"), to_unit(m, "MB"), m - p,
                  m / p if p else float("nan")])
    return t


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _setup(config, strategy, batch_size, seq_len, recompute, device, seed):
    if strategy not in _DTYPES:
        raise ValueError(f"a measured step trains in one dtype: strategy 'fp32' or 'bf16', "
                         f"not {strategy!r}")
    model = build_model(config, seq_len, dtype=_DTYPES[strategy], device=device, seed=seed)
    model.recompute = recompute
    g = torch.Generator().manual_seed(seed)
    ids, targets = (torch.randint(0, model.config.vocab_size, (batch_size, seq_len),
                                  generator=g).to(device) for _ in range(2))
    return model, ids, targets, torch.optim.Adam(model.parameters(), lr=1e-3)


def predicted_vs_measured(config: ModelConfig | str, strategy: str = "fp32",
                          batch_size: int = 4, seq_len: int = 256, recompute: bool = False,
                          device: str = "cpu", seed: int = 0) -> Table:
    """Train `LlamaDecoder(config)` one step in `strategy`'s dtype ("fp32" or "bf16", Adam) and
    compare the bytes it holds with `training_memory` (RMSNorm "fused" on CUDA, where torch has
    a fused kernel, "unfused" on the CPU)."""
    model, ids, targets, opt = _setup(config, strategy, batch_size, seq_len, recompute, device,
                                      seed)
    measured = measure_training_step(model, ids, targets, opt)
    norm = "fused" if torch.device(device).type == "cuda" else "unfused"
    predicted = training_memory(model.config, strategy, batch_size, seq_len,
                                recompute=recompute, norm=norm)
    return compare_table(predicted, measured,
                         f"{model.config.name}, {strategy}, batch {batch_size} x {seq_len}"
                         f"{', recompute' if recompute else ''}: predicted vs measured")


def cuda_peak_table(config: ModelConfig | str, strategy: str = "bf16", batch_size: int = 4,
                    seq_len: int = 1024, recompute: bool = False, seed: int = 0) -> Table:
    """Predicted total (weights + gradients + Adam states + saved activations) against
    `torch.cuda.max_memory_allocated` over two training steps on the current GPU."""
    gc.collect()  # free earlier models before the peak is measured
    model, ids, targets, opt = _setup(config, strategy, batch_size, seq_len, recompute, "cuda",
                                      seed)
    before = torch.cuda.memory_allocated()  # the weights (and cos/sin buffers), already there
    peak = cuda_peak_memory(model, ids, targets, opt)
    p = training_memory(model.config, strategy, batch_size, seq_len, recompute=recompute,
                        norm="fused")
    t = Table(["quantity", "MB"], title=f"{model.config.name}, {strategy}, batch {batch_size} x "
              f"{seq_len} on {torch.cuda.get_device_name()}", digits=2)
    t.append(["predicted weights + gradients + optimizer + activations", to_unit(p.total, "MB")])
    t.append(["allocated before the first step (weights, buffers)", to_unit(before, "MB")])
    t.append(["torch.cuda.max_memory_allocated", to_unit(peak, "MB")])
    t.append(["measured / predicted", peak / p.total])
    return t
