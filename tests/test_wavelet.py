"""ds2d2.wavelet against pytorch_wavelets (the reference semantics) and hand-computed Haar values."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_wavelets import DWTForward

from ds2d2.wavelet import dwt, high_frequency, high_frequency_from_bands, validate_wavelet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = [(8, 8), (7, 8), (8, 5), (9, 11), (1, 1), (2, 3)]


def reference_dwt(x, wave, exact_filters=True):
    """pytorch_wavelets' DWT. It builds filters in the default dtype: float64 here unless told not to."""
    previous = torch.get_default_dtype()
    if exact_filters:
        torch.set_default_dtype(torch.float64)
    try:
        module = DWTForward(J=1, mode="zero", wave=wave)
    finally:
        torch.set_default_dtype(previous)
    low, highs = module.to(device=x.device, dtype=x.dtype)(x)
    return low, highs[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("wave", ["haar", "db1"])
def test_haar_matches_pytorch_wavelets(size, wave, device):
    x = torch.randn(2, 3, *size, device=device) * 5
    low, high = dwt(x, wave)
    ref_low, ref_high = reference_dwt(x, "haar")
    assert low.shape == ref_low.shape == (2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert high.shape == ref_high.shape
    assert (low - ref_low).abs().max() <= 1e-5 * 5
    assert (high - ref_high).abs().max() <= 1e-5 * 5


def test_haar_matches_pytorch_wavelets_float64():
    x = torch.randn(1, 2, 9, 6, dtype=torch.float64)
    low, high = dwt(x)
    ref_low, ref_high = reference_dwt(x, "haar")
    torch.testing.assert_close(low, ref_low, rtol=0, atol=1e-12)
    torch.testing.assert_close(high, ref_high, rtol=0, atol=1e-12)


def test_haar_known_values_and_band_order():
    # One 2x2 block a b / c d plus an odd column (zero-padded on the right).
    x = torch.tensor([[1.0, 2.0, 7.0], [3.0, 5.0, -1.0]]).view(1, 1, 2, 3)
    low, high = dwt(x)
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    expected_low = [(a + b + c + d) / 2, (7.0 - 1.0) / 2]
    expected_lh = [(a + b - c - d) / 2, (7.0 + 1.0) / 2]
    expected_hl = [(a - b + c - d) / 2, (7.0 - 1.0) / 2]
    expected_hh = [(a - b - c + d) / 2, (7.0 + 1.0) / 2]
    assert low.flatten().tolist() == expected_low
    assert high[0, 0, 0].flatten().tolist() == expected_lh
    assert high[0, 0, 1].flatten().tolist() == expected_hl
    assert high[0, 0, 2].flatten().tolist() == expected_hh


@pytest.mark.parametrize("wave", ["db2", "sym3", "coif1", "bior2.2"])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (5, 5)])
def test_other_wavelets_match_pytorch_wavelets(wave, size):
    x = torch.randn(2, 3, *size)
    low, high = dwt(x, wave)
    ref_low, ref_high = reference_dwt(x, wave)
    torch.testing.assert_close(low, ref_low, rtol=0, atol=1e-6)
    torch.testing.assert_close(high, ref_high, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(9, 8), (8, 8), (7, 11), (1, 1)])
@pytest.mark.parametrize("wave", ["haar", "db2"])
def test_gradients_match_pytorch_wavelets(wave, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    low, high = dwt(x, wave)
    # Non-Haar wavelets are delegated to pytorch_wavelets as it is (filters rounded to float32 when built).
    ref_low, ref_high = reference_dwt(x_ref, wave, exact_filters=wave == "haar")
    g_low, g_high = torch.randn_like(low), torch.randn_like(high)
    ((low * g_low).sum() + (high * g_high).sum()).backward()
    ((ref_low * g_low).sum() + (ref_high * g_high).sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("wave", ["haar", "db2"])
def test_gradcheck(wave):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt(t, wave), (x,))


@pytest.mark.parametrize("band", [0, 1])
def test_haar_gradient_through_one_output_only(band):
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    dwt(x)[band].square().sum().backward()
    reference_dwt(x_ref, "haar")[band].square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)


def test_haar_double_backward():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: dwt(t), (x,))


@pytest.mark.parametrize("wave", ["haar", "db2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype(wave, dtype):
    x = torch.randn(1, 4, 8, 7)
    low, high = dwt(x.to(dtype), wave)
    ref_low, ref_high = reference_dwt(x, wave)
    assert low.dtype == high.dtype == dtype
    torch.testing.assert_close(low.float(), ref_low, rtol=0.02, atol=0.05)
    torch.testing.assert_close(high.float(), ref_high, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("wave", ["haar", "db2"])
def test_under_autocast_forward_and_backward(wave):
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = conv(x)
        low, high = dwt(feats, wave)
        loss = low.float().square().mean() + high.float().square().mean()
    loss.backward()
    assert low.dtype == feats.dtype
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


def test_unknown_wavelet_names_the_name():
    with pytest.raises(ValueError, match=r"'nope'.*pywt\.wavelist"):
        dwt(torch.zeros(1, 1, 4, 4), "nope")
    with pytest.raises(ValueError, match="cmor"):
        validate_wavelet("cmor")  # continuous wavelets cannot be used
    assert validate_wavelet("sym4") == "sym4"


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\].*\(4, 4\)"):
        dwt(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="torch.int64"):
        dwt(torch.zeros(1, 1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("wave", ["haar", "db2"])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_high_frequency_matches_direct_formula(wave, size):
    x = torch.randn(2, 3, *size)
    _, ref_high = reference_dwt(x, wave)
    expected = F.interpolate(ref_high[:, :, 0] + ref_high[:, :, 1] + ref_high[:, :, 2], size=size,
                             mode="bilinear", align_corners=False)
    hf = high_frequency(x, wave)
    assert hf.shape == x.shape
    torch.testing.assert_close(hf, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(high_frequency_from_bands(dwt(x, wave)[1], x.shape[-2:]), hf, rtol=0, atol=0)


def test_high_frequency_of_constant_image_is_zero():
    hf = high_frequency(torch.full((1, 2, 6, 8), 3.0))
    assert hf.abs().max() == 0


def test_high_frequency_from_bands_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, C, 3, h, w\]"):
        high_frequency_from_bands(torch.zeros(1, 2, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="size"):
        high_frequency_from_bands(torch.zeros(1, 2, 3, 4, 4), (8,))
