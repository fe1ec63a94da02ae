"""Stand-in GPUs for a CPU-only machine: tensors that say they live on `cuda:N` while their data stays
on the CPU, and ops that raise, as CUDA does, when they mix devices.

`OnDevice(data, device)` wraps a CPU tensor; every aten op on it unwraps, checks that its tensor
arguments share one device (0-dim CPU tensors mix freely, CPU index tensors may index, copies cross
devices), runs on the CPU and wraps the result on that device. Inside `stand_in_devices()`, moving a
plain tensor to `cuda:N` (`.to`, `.cuda`) or creating one there (`torch.zeros(..., device="cuda:1")`)
makes an `OnDevice` instead of touching CUDA; `.cpu()` gives a plain tensor back.

`place_model(adapter, layer_devices)` makes an adapter look like a model on those devices: its
`device` is `layer_devices[0]`, its forward takes and returns tensors there (computing on the CPU),
and its attention probe computes layer `i`'s rows on `layer_devices[i % len(layer_devices)]`, as a
model split over GPUs with a device map does. What a stand-in cannot be (a CUDA random generator,
a device synchronisation) is replaced by its CPU counterpart.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten.lift_fresh.default, aten._has_compatible_shallow_copy_type.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def _stand_in(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _device(device) -> torch.device:
    device = torch.device(device)
    return torch.device(device.type, device.index or 0)


class OnDevice(torch.Tensor):
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: torch.Tensor, device):
        if isinstance(data, OnDevice):
            data = data.inner
        out = torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            device=_device(device), requires_grad=False,
        )
        out.inner = data
        return out

    def __repr__(self) -> str:
        return f"OnDevice({self.inner!r}, device={self.device})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = set()
        indices = args[1] if func in _INDEXING and len(args) > 1 else None

        def note(x):
            if isinstance(x, OnDevice):
                devices.add(x.device)
            elif isinstance(x, torch.Tensor) and x.dim() > 0 and func not in _CROSS_DEVICE:
                if indices is not None and any(x is i for i in indices):
                    return  # a CPU index tensor may index a CUDA tensor
                devices.add(x.device)

        tree_map(note, (args, kwargs))
        stand_ins = {d for d in devices if d.type == "cuda"}
        if len(devices) > 1 and func not in _CROSS_DEVICE:
            found = sorted(str(d) for d in devices)
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {found[0]} and "
                f"{found[1]}! (stand-in devices, {func})"
            )
        wrappers = {}

        def unwrap(x):
            if isinstance(x, OnDevice):
                wrappers[id(x.inner)] = x
                return x.inner
            return x

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if func is aten._to_copy.default:
            target = kwargs.get("device")
            if target is None:
                target = next(iter(stand_ins)) if stand_ins else torch.device("cpu")
            return OnDevice(out, target) if _stand_in(target) else out
        if func is aten.copy_.default:
            return args[0]
        device = next(iter(stand_ins)) if stand_ins else None

        def wrap(x):
            if isinstance(x, torch.Tensor) and not isinstance(x, OnDevice):
                if id(x) in wrappers:
                    return wrappers[id(x)]  # in-place op: the wrapper it was called on
                return OnDevice(x, device) if device is not None else x
            return x

        return tree_map(wrap, out)


def _plain(x):
    return x.inner if isinstance(x, OnDevice) else x


_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
_COPIES = {torch.Tensor.copy_, torch.Tensor.__setitem__}  # their source may sit on another device


def _target(func, args, kwargs):
    """(device or None, dtype or None) a `.to` / `.cuda` / `.cpu` call asks for."""
    if func is torch.Tensor.cpu:
        return torch.device("cpu"), None
    if func is torch.Tensor.cuda:
        target = kwargs.get("device", args[1] if len(args) > 1 else 0)
        return (torch.device("cuda", target) if isinstance(target, int) else torch.device(target)), None
    target, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
    return target, dtype


class _StandInMode(TorchFunctionMode):
    """Runs every torch call that involves a stand-in tensor on the CPU tensors inside, checking devices
    first (the C++ paths of `.to`, indexing, `.item()` ... would open a CUDA device guard)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__":  # tensor attributes: the wrapper's own
            return func(*args, **kwargs)
        if func in _MOVES:
            device, dtype = _target(func, args, kwargs)
            data = _plain(args[0])
            data = data if dtype is None else data.to(dtype)
            if _stand_in(device):
                return OnDevice(data, device)
            if device is None and isinstance(args[0], OnDevice):
                return OnDevice(data, args[0].device)
            return data if device is None else data.to(device)
        device = kwargs.get("device")
        if _stand_in(device):  # a factory: made on the CPU, said to be on the stand-in
            out = func(*args, **{**kwargs, "device": "cpu"})
            return tree_map(lambda x: OnDevice(x, device) if isinstance(x, torch.Tensor) else x, out)
        wrapped: list[OnDevice] = []
        tree_map(lambda x: wrapped.append(x) if isinstance(x, OnDevice) else None, (args, kwargs))
        if not wrapped:
            return func(*args, **kwargs)
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError(f"can't convert {wrapped[0].device} device type tensor to numpy; use .cpu() first")
        self._check_devices(func, args, kwargs)
        by_inner = {id(w.inner): w for w in wrapped}
        out = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        if func in _COPIES:
            return args[0] if func is torch.Tensor.copy_ else out
        device = wrapped[0].device if isinstance(args[0], OnDevice) or func not in _COPIES else None

        def wrap(x):
            if isinstance(x, torch.Tensor) and not isinstance(x, OnDevice):
                same = by_inner.get(id(x))  # an in-place op returns the wrapper it was called on
                return same if same is not None else OnDevice(x, device)
            return x

        return tree_map(wrap, out)

    @staticmethod
    def _check_devices(func, args, kwargs) -> None:
        if func in _COPIES:
            args = args[:1]
        devices = set()
        skip = args[1] if func is torch.Tensor.__getitem__ and len(args) > 1 else ()

        def note(x):
            if isinstance(x, OnDevice):
                devices.add(x.device)
            elif isinstance(x, torch.Tensor) and x.dim() > 0:
                skipped = x is skip or (isinstance(skip, (tuple, list)) and any(x is i for i in skip))
                if not skipped:  # a CPU index tensor may index a CUDA tensor
                    devices.add(x.device)

        tree_map(note, (args, kwargs))
        if len(devices) > 1:
            found = sorted(str(d) for d in devices)
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {found[0]} and "
                f"{found[1]}! (stand-in devices, {getattr(func, '__name__', func)})"
            )


@contextlib.contextmanager
def stand_in_devices() -> Iterator[None]:
    with _StandInMode():
        yield


def place_model(adapter, layer_devices: Sequence[str], monkeypatch) -> None:
    """Make `adapter` (and its model, which it changes for good) look like a model on `layer_devices`
    (see the module docstring)."""
    import laser.method.probe as probe_module

    devices = [_device(d) for d in layer_devices]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)  # nothing is ever queued
    import laser.method.decoding as decoding

    real_generators = getattr(decoding, "device_generators", None)
    if real_generators is not None:  # a CUDA generator cannot stand in: sample with CPU ones
        monkeypatch.setattr(
            decoding, "device_generators",
            lambda seeds, device: real_generators(seeds, "cpu" if _stand_in(device) else device),
        )
    cls = type(adapter)
    adapter.__class__ = type(cls.__name__, (cls,), {"device": property(lambda self: devices[0])})

    model = adapter.model
    forward = model.forward

    @functools.wraps(forward)
    def on_device(*args, **kwargs):
        out = forward(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                out[key] = OnDevice(value, devices[0])
        return out

    monkeypatch.setattr(model, "forward", on_device)

    current = [0]  # the layer whose attention runs now (the model is the caller's own: hooks stay)
    for layer, module in enumerate(adapter.attention_modules()):
        module.register_forward_pre_hook(lambda *_, layer=layer: current.__setitem__(0, layer))

    real = probe_module.last_row_attention

    def on_layer_device(*args, **kwargs):  # query, key and the mask live where the layer does
        device = devices[current[0] % len(devices)]
        on_layer = lambda x: OnDevice(x, device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        return real(*tree_map(on_layer, args), **tree_map(on_layer, kwargs))

    monkeypatch.setattr(probe_module, "last_row_attention", on_layer_device)
