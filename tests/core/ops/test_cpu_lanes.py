"""The C scan's channel-vectorised path (csrc/scan_lanes.h): W channels per SIMD register
(4 doubles / 8 floats), its scalar-A fast path (SSD) and its hand-off to the one-channel kernel
for tails and mixed groups, all against the float64 reference (values and gradients)."""
import pytest
import torch

from core.ops import cpu_build, cpu_scan

from .util import check_against_ref, check_ssd_against_ref, ss_inputs, ssd_inputs
from .varlen_util import check_ss_packed, check_ssd_packed

pytestmark = pytest.mark.skipif(cpu_build.load() is None, reason="no C compiler")


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(cpu_scan, "chunk_len", lambda N: 4)


@pytest.mark.parametrize("d", [4, 8, 11, 20])          # whole blocks of 4 lanes and ragged tails
@pytest.mark.parametrize("groups", [None, 2, "inv"])   # shared B/C, two groups, time-invariant (per lane)
def test_lanes_float64_match_reference(d, groups, small_chunks):
    if groups == 2 and d % 2:
        pytest.skip("groups must divide dim")
    check_against_ref("cpu", ss_inputs(b=2, d=d, L=13, N=5, groups=groups))


@pytest.mark.parametrize("d", [8, 16, 19])
def test_lanes_float32_match_reference(d):
    x = ss_inputs(b=2, d=d, L=150, N=16, dtype=torch.float32, delta_scale=0.2)
    check_against_ref("cpu", x, rtol=3e-4, atol=3e-4)


@pytest.mark.parametrize("P,dtype", [(4, torch.float64), (8, torch.float64), (8, torch.float32),
                                     (3, torch.float64)])
def test_ssd_scalar_decay_path(P, dtype, small_chunks):
    # headdim a multiple of the lanes: A is constant along N for every lane -> one exp per step
    tol = 1e-9 if dtype == torch.float64 else 3e-4
    check_ssd_against_ref("cpu", ssd_inputs(b=2, L=13, H=4, P=P, G=2, N=5, dtype=dtype),
                          rtol=tol, atol=tol)


def test_lanes_packed_sequences(small_chunks):
    check_ss_packed("cpu", d=8, N=3)
    check_ssd_packed("cpu", chunk_size=4, P=8)


def test_lanes_split_over_threads_equals_one_thread():
    x = ss_inputs(b=2, d=24, L=70, N=4, dtype=torch.float64)
    from core.ops import selective_scan
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = selective_scan(*args, backend="cpu")
        torch.set_num_threads(3)   # 48 channels over 3 threads: ranges of 16, aligned or not to lanes
        y3 = selective_scan(*args, backend="cpu")
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(y1, y3, rtol=1e-12, atol=1e-12)
