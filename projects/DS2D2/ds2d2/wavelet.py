"""One-level 2-D discrete wavelet transform and the high-frequency features built from it.

`dwt` has exactly the semantics of ``pytorch_wavelets.DWTForward(J=1, mode="zero", wave=wave)``: band
order (LH, HL, HH), signs, output sizes and the zero padding of odd sizes. Haar takes a fast exact path made
of slicing and additions, with the inverse transform as its backward (the Haar DWT is orthogonal, so its
adjoint is its inverse; autograd's slice-by-slice backward costs twice as much). It keeps the input's dtype,
so it is also the natural path under AMP. Every other
wavelet is delegated to pytorch_wavelets with its filters cast to the input's device and dtype and autocast
disabled, so the whole transform (forward and backward) runs in the dtype of ``x``.
"""
from typing import Dict, Sequence, Tuple

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dwt", "high_frequency", "high_frequency_from_bands", "validate_wavelet"]

# pywt names whose decomposition filters are the Haar pair (db1 is an alias of haar).
_HAAR_NAMES = frozenset({"haar", "db1"})
_DISCRETE_WAVELETS = frozenset(pywt.wavelist(kind="discrete"))

_DWT_MODULES: Dict[Tuple[str, torch.device, torch.dtype], torch.nn.Module] = {}


def validate_wavelet(name: str, key: str = "wavelet") -> str:
    """Return ``name`` if pytorch_wavelets can use it as a discrete wavelet, else raise a ValueError naming
    ``key`` (the config key or argument that gave it)."""
    if not isinstance(name, str) or name not in _DISCRETE_WAVELETS:
        raise ValueError(
            f"{key}: unknown wavelet {name!r}: expected a discrete wavelet name from "
            f"pywt.wavelist(kind='discrete') (e.g. 'haar', 'db2', 'sym4', 'coif1', 'bior2.2')."
        )
    return name


def _haar_dwt(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Haar DWT by slicing.

    Each 2x2 block (a b / c d) gives LL, LH, HL, HH = (a+b+c+d)/2, (a+b-c-d)/2, (a-b+c-d)/2, (a-b-c+d)/2.
    """
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        # pytorch_wavelets' zero mode pads odd sizes with one zero row/column at the end.
        x = F.pad(x, (0, width % 2, 0, height % 2))
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    top_lo, top_hi = a + b, a - b
    bottom_lo, bottom_hi = c + d, c - d
    low = torch.add(top_lo, bottom_lo).mul_(0.5)
    high = x.new_empty(*low.shape[:2], 3, *low.shape[2:])  # bands written in place: no stacking copy
    torch.sub(top_lo, bottom_lo, out=high[:, :, 0]).mul_(0.5)
    torch.add(top_hi, bottom_hi, out=high[:, :, 1]).mul_(0.5)
    torch.sub(top_hi, bottom_hi, out=high[:, :, 2]).mul_(0.5)
    return low, high


def _haar_adjoint(grad_low: Tensor, grad_high: Tensor, height: int, width: int) -> Tensor:
    """Gradient of ``_haar_dwt`` w.r.t. its [..., height, width] input: each band gradient spread back over
    its 2x2 block (the inverse Haar transform), cropped where the forward padded an odd size."""
    g_lh, g_hl, g_hh = grad_high.unbind(2)
    top_lo, bottom_lo = grad_low + g_lh, grad_low - g_lh
    top_hi, bottom_hi = g_hl + g_hh, g_hl - g_hh
    batch, channels, h, w = grad_low.shape
    grad = grad_low.new_empty(batch, channels, 2 * h, 2 * w)  # each block position written once, strided
    grad[..., 0::2, 0::2] = (top_lo + top_hi).mul_(0.5)
    grad[..., 0::2, 1::2] = (top_lo - top_hi).mul_(0.5)
    grad[..., 1::2, 0::2] = (bottom_lo + bottom_hi).mul_(0.5)
    grad[..., 1::2, 1::2] = (bottom_lo - bottom_hi).mul_(0.5)
    return grad[..., :height, :width]


class _HaarDWT(torch.autograd.Function):
    """``_haar_dwt`` with ``_haar_adjoint`` as its backward (itself differentiable, for double backward).
    Autograd is off inside ``forward``, which is what lets ``_haar_dwt`` write its bands in place."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.size = x.shape[-2:]
        return _haar_dwt(x)

    @staticmethod
    def backward(ctx, grad_low: Tensor, grad_high: Tensor) -> Tensor:
        return _haar_adjoint(grad_low, grad_high, *ctx.size)


def _dwt_module(wave: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A DWTForward(J=1, mode="zero") whose filters live on ``device`` in ``dtype``, built once per key."""
    key = (wave, device, dtype)
    module = _DWT_MODULES.get(key)
    if module is None:
        from pytorch_wavelets import DWTForward

        module = DWTForward(J=1, mode="zero", wave=wave).to(device=device, dtype=dtype)
        _DWT_MODULES[key] = module
    return module


def dwt(x: Tensor, wave: str = "haar") -> Tuple[Tensor, Tensor]:
    """One-level 2-D DWT with zero padding.

    Args:
        x: [B, C, H, W] floating tensor.
        wave: a name from ``pywt.wavelist(kind="discrete")``.

    Returns:
        (low [B, C, h, w], high [B, C, 3, h, w]) with bands ordered (LH, HL, HH); for Haar h = ceil(H/2),
        w = ceil(W/2), in general ``pywt.dwt_coeff_len(H, filter_length, "zero")``. Same dtype and device
        as ``x``.
    """
    validate_wavelet(wave)
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"dwt expects a floating [B, C, H, W] tensor, got shape {tuple(x.shape)} and {x.dtype}"
        )
    if wave in _HAAR_NAMES:
        return _HaarDWT.apply(x)
    module = _dwt_module(wave, x.device, x.dtype)
    # pytorch_wavelets' custom autograd Function has no autocast-aware backward: run it in x's own dtype.
    with torch.autocast(device_type=x.device.type, enabled=False):
        low, highs = module(x)
    return low, highs[0]


def high_frequency_from_bands(high: Tensor, size: Sequence[int]) -> Tensor:
    """Sum of the three high bands, resized bilinearly (align_corners=False).

    Args:
        high: [B, C, 3, h, w] high bands from ``dwt``.
        size: (H, W) to resize to.

    Returns:
        [B, C, H, W].
    """
    if high.dim() != 5 or high.shape[2] != 3:
        raise ValueError(f"high bands must have shape [B, C, 3, h, w], got {tuple(high.shape)}")
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {tuple(size)}")
    target = (int(size[0]), int(size[1]))
    return F.interpolate(high.sum(dim=2), size=target, mode="bilinear", align_corners=False)


def high_frequency(x: Tensor, wave: str = "haar") -> Tensor:
    """HF(x): LH + HL + HH of ``dwt(x, wave)`` resized back to x's H x W. [B, C, H, W] -> [B, C, H, W]."""
    return high_frequency_from_bands(dwt(x, wave)[1], x.shape[-2:])
