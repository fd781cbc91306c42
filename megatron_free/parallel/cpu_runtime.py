"""CPU development and test mode for megatron-core.

megatron-core assumes CUDA: it allocates with ``device=torch.cuda.current_device()``, creates
streams and events, checks ``param.type() == 'torch.cuda.FloatTensor'`` in its optimizers, and
keeps its RNG tracker in CUDA generator states. On a machine without a GPU we still want to run
the real megatron-core code paths (tensor/pipeline/data parallel, the distributed optimizer,
dist_checkpointing) over gloo, so tests exercise what runs on H100s.

``enable_cpu_runtime()`` makes that possible, once per process, before megatron-core is used:

* torch's tensor factories, ``Tensor.to`` and ``.cuda()`` map a ``device=`` argument that names
  CUDA to the CPU, so megatron's ``torch.empty(..., device=torch.cuda.current_device())`` and
  ``tensor.to("cuda")`` land on the CPU;
* the few ``torch.cuda`` functions megatron calls are replaced by CPU equivalents (device 0,
  no-op streams, events and synchronisation, the CPU generator for RNG state);
* ``Tensor.type()`` answers the ``torch.cuda.*`` names that megatron's optimizers compare with.

It only switches on when CUDA is unavailable and never changes numerics: every op still runs the
same CPU kernel it would run without the mode; only device placement and bookkeeping change.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings

import torch

_ENABLED = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # megatron passes torch.cuda.current_device() (an int) as a device.
    return isinstance(device, int) and not isinstance(device, bool)


_FACTORIES = (
    "empty",
    "zeros",
    "ones",
    "full",
    "tensor",
    "as_tensor",
    "arange",
    "linspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "empty_strided",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
)
_TENSOR_FACTORIES = ("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor")


def _on_cpu(factory):
    """Wraps a torch factory so that a CUDA ``device=`` argument becomes the CPU."""

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return wrapper


def _tensor_to_cpu(original_to):
    @functools.wraps(original_to)
    def to(self, *args, **kwargs):
        if args and _is_cuda_device(args[0]):
            args = ("cpu", *args[1:])
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    return to


class _NullStream:
    """Stands in for torch.cuda.Stream/Event: CPU work is synchronous, so all waits are no-ops."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None, *args, **kwargs):
        return event if event is not None else _NullStream()

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _type_with_cuda_names(original_type):
    """Tensor.type() with no argument answers 'torch.cuda.FloatTensor' for a CPU float tensor, the
    name megatron's optimizers check; a conversion (an argument given) is left as it is."""

    def tensor_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original_type(self)
            return name.replace("torch.", "torch.cuda.", 1) if self.device.type == "cpu" else name
        return original_type(self, dtype, non_blocking, **kwargs)

    return tensor_type


class _SilenceCpuRngWarning(logging.Filter):
    """megatron's RNG tracker warns when the CPU RNG moves inside a fork; on CPU the tracked
    state *is* the CPU generator, so that is expected."""

    def filter(self, record):
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def enable_cpu_runtime() -> bool:
    """Switch this process to the CPU runtime if (and only if) CUDA is unavailable.

    Returns True if the CPU runtime is active. Idempotent.
    """
    global _ENABLED
    if _ENABLED:
        return True
    if torch.cuda.is_available():
        return False

    # Expected on a CPU machine; one line each per import is noise in every test and log.
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).* not installed")

    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _NullStream
    cuda.Event = _NullStream
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # "The CUDA generator" is the CPU one; torch.manual_seed calls manual_seed_all itself.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    cuda.manual_seed_all = lambda seed: None
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.memory_allocated = lambda device=None: 0
    cuda.reset_peak_memory_stats = lambda device=None: None
    torch.Tensor.type = _type_with_cuda_names(torch.Tensor.type)

    # megatron's RNG tracker reads/writes generator states through its own helpers, which go to
    # torch.cuda.default_generators; point them at the CPU generator.
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    logging.getLogger(mcore_random.__name__).addFilter(_SilenceCpuRngWarning())

    # Patched rather than intercepted with a TorchFunctionMode: a mode is switched off inside
    # its own handler, so composite calls (autograd.backward running megatron's custom
    # backwards, which allocate on "cuda") would escape it.
    for name in _FACTORIES:
        setattr(torch, name, _on_cpu(getattr(torch, name)))
    for name in _TENSOR_FACTORIES:
        setattr(torch.Tensor, name, _on_cpu(getattr(torch.Tensor, name)))
    torch.Tensor.to = _tensor_to_cpu(torch.Tensor.to)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    os.environ.setdefault("MEGATRON_FREE_CPU_RUNTIME", "1")
    _ENABLED = True
    return True


def cpu_runtime_enabled() -> bool:
    return _ENABLED
