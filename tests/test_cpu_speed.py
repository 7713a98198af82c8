"""CPU speed policy: cache-sized automatic tiles that do not depend on free memory, image I/O threads that
yield to the network's threads, and bf16 chosen automatically only for verified weights on native-bf16 CPUs."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
import torch

from srtool import devices, engine, upscale, upscale_jobs
from srtool.loading import load_model


def test_cpu_auto_tile_is_cache_sized_and_independent_of_free_memory(monkeypatch):
    model = load_model("default", device="cpu", precision="fp32")
    tiles = set()
    for free in (8 << 30, 24 << 30, 512 << 30):
        monkeypatch.setattr(engine, "available_memory", lambda _device, free=free: free)
        tiles.add(engine.auto_tile(model))
    assert tiles == {(256, 1)}  # 64 features, fp32: a 276-pixel window's feature map is ~19.5 MB
    monkeypatch.setattr(engine, "available_memory", lambda _device: 256 << 20)  # memory short: smaller
    assert engine.auto_tile(model)[0] < 256


def test_cpu_tile_grows_with_the_architectures_context():
    """Wide-context architectures (SwinIR: 32 px) would recompute most of a cache-sized tile as context."""
    from srtool.engine import CONTEXT_TILE_FACTOR, axis_tiles, cpu_cache_tile

    net = load_model("default", device="cpu", precision="fp32").network
    assert cpu_cache_tile(net, "fp32", 10) == 256  # ESRGAN-type context: the cache decides
    assert cpu_cache_tile(net, "bf16", 10) == 304  # bf16's maps cost more than 2 bytes an element (measured)
    assert cpu_cache_tile(net, "fp32", 16) == 16 * CONTEXT_TILE_FACTOR
    assert cpu_cache_tile(net, "fp32", 32) == 512  # capped
    for pad in (10, 16, 24, 32):
        tile = cpu_cache_tile(net, "fp32", pad)
        computed = sum(t.win1 - t.win0 for t in axis_tiles(2048, tile, pad)) / 2048
        assert computed ** 2 < 1.2, (pad, tile, computed ** 2)  # pixels computed vs one untiled pass


def test_image_io_threads_run_below_the_networks_priority(benchmarks_dir, tmp_path, monkeypatch):
    if os.uname().sysname != "Linux":
        pytest.skip("per-thread nice values are Linux behaviour")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bird", "head"):
        shutil.copy(benchmarks_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}.png", folder / f"{name}.png")
    seen = []
    decode = upscale._decode

    def watched(job, options):
        seen.append((threading.current_thread() is threading.main_thread(),
                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return decode(job, options)

    monkeypatch.setattr(upscale, "_decode", watched)
    model = load_model("bicubic")
    options = upscale_jobs.UpscaleOptions(output=str(tmp_path / "out"), workers=2)
    result = upscale.run_batch(model, upscale_jobs.plan_jobs([str(folder)], options, model.scale), options)
    assert result.count("written") == 2
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen and all(not on_main and nice == min(19, main + 10) for on_main, nice in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the main thread is untouched


def test_auto_precision_is_bf16_only_for_verified_weights_on_native_cpus(monkeypatch):
    cpu, verified = torch.device("cpu"), next(iter(devices.CPU_BF16_VERIFIED))
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_precision("auto", cpu, verified) == "bf16"
    assert devices.resolve_precision("auto", cpu, "0" * 64) == "fp32"  # any other weights
    assert devices.resolve_precision("fp32", cpu, verified) == "fp32"  # an explicit choice wins
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_precision("auto", cpu, verified) == "fp32"  # emulated bf16 is slow
    assert all(delta < devices.CPU_BF16_MAX_DB for delta in devices.CPU_BF16_VERIFIED.values())


@pytest.mark.slow
def test_bundled_model_bf16_moves_no_set14_psnr_by_002_db(benchmarks_dir):
    """The measurement behind CPU_BF16_VERIFIED, through the eval code path (what `srtool eval` runs)."""
    if not devices.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: precision auto stays fp32 here")
    from srtool.evaluate import evaluate_dataset

    fp32, bf16 = (evaluate_dataset(load_model("default", device="cpu", precision=p), benchmarks_dir / "Set14",
                                   progress=False) for p in ("fp32", "bf16"))
    deltas = np.array([b.psnr - a.psnr for a, b in zip(fp32.images, bf16.images, strict=True)])
    assert len(deltas) == 14 and np.abs(deltas).max() < devices.CPU_BF16_MAX_DB
    assert np.abs(deltas).max() <= devices.CPU_BF16_VERIFIED[load_model("default", device="cpu").identity] + 1e-4


def test_prelu_convolutions_and_residual_adds_fuse_and_follow_their_weights():
    """SRResNet's conv -> PReLU pairs (also across PixelShuffle) and residual adds run as fused oneDNN
    convolutions with the eager network's values; the PReLU slope is read at call time, never a stale copy."""
    from srtool.fusion import fuse_conv_activations
    from srtool.models import SRResNet, SRResNetConfig

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    torch.manual_seed(0)
    net = SRResNet(SRResNetConfig(n_blocks=2, n_feats=16, batch_norm=False, trunk_batch_norm=False, tail_kernel=3))
    net = net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    prelus = [m for m in net.modules() if isinstance(m, torch.nn.PReLU)]
    for m in prelus:
        m.weight.uniform_(0.05, 0.4)
    fused = fuse_conv_activations(net)
    names = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    assert sum(t.startswith("_fused_") and not t.startswith("_fused_add") for t in names) == 5  # head, 2 blocks, 2 ups
    assert sum(t.startswith("_fused_add") for t in names) == 3  # the residual adds: 2 blocks + the global skip
    assert not any(isinstance(fused.get_submodule(t), torch.nn.PReLU) for t in names)
    assert list(fused.state_dict()) == list(net.state_dict())
    x = torch.rand(1, 3, 23, 31).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), net(x), rtol=0, atol=1e-6)
        prelus[0].weight.fill_(0.9)  # e.g. other weights loaded later
        torch.testing.assert_close(fused(x), net(x), rtol=0, atol=1e-6)


def test_pixel_shuffle_after_a_convolution_becomes_a_run_copy_with_identical_values():
    """conv -> PixelShuffle (module or function, with or without an activation) emits its channels in the
    order whose shuffle is a copy of contiguous runs; the values equal the eager network bit for bit, the
    state dict keeps its keys, and weights changed in place after fusion are used (no stale copy)."""
    import torch.nn.functional as F

    from srtool.fusion import fuse_conv_activations

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")

    class Upsampler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(8, 8 * 4, 3, padding=1)
            self.shuffle = torch.nn.PixelShuffle(2)
            self.act = torch.nn.PReLU()
            self.conv2 = torch.nn.Conv2d(8, 8 * 9, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            x = self.act(self.shuffle(self.conv1(x)))
            x = F.pixel_shuffle(self.conv2(x), 3)  # no activation, functional form, factor 3
            return self.conv3(x)

    torch.manual_seed(0)
    net = Upsampler().eval().requires_grad_(False).to(memory_format=torch.channels_last)
    net.act.weight.fill_(0.3)
    fused = fuse_conv_activations(net)
    shuffles = [m.shuffle for m in fused.modules() if type(m).__name__ == "_FusedConvActivation"]
    assert sorted(shuffles) == [2, 3]
    assert not any(n.op == "call_function" and n.target is F.pixel_shuffle for n in fused.graph.nodes)
    assert list(fused.state_dict()) == list(net.state_dict())
    x = torch.rand(2, 8, 13, 17).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fused(x)
        assert torch.equal(out, net(x))
        net.conv2.weight.mul_(-1.5)  # e.g. a validation pass after training steps
        net.conv1.bias.add_(0.25)
        assert torch.equal(fused(x), net(x))
        assert not torch.equal(fused(x), out)
        # an input in NCHW memory still gives pixel_shuffle's values
        torch.testing.assert_close(fused(x.contiguous()), net(x.contiguous()), rtol=0, atol=1e-6)


def test_scaled_dense_block_residuals_fuse_into_the_convolution():
    """ESRGAN's ``x + 0.2 * conv5(...)`` runs as one convolution with a fused add (the 0.2 folded into
    the weights at call time): one fused add per dense block and one for the trunk, values within
    float rounding of the eager network."""
    from srtool.fusion import prepare_network
    from srtool.models import RRDBNet, RRDBNetConfig

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    torch.manual_seed(0)
    net = RRDBNet(RRDBNetConfig(n_blocks=2, n_feats=16, growth=8)).eval()
    eager = RRDBNet(RRDBNetConfig(n_blocks=2, n_feats=16, growth=8)).eval().requires_grad_(False)
    eager.load_state_dict(net.state_dict())
    fused = prepare_network(net, torch.device("cpu"), "fp32")
    adds = [m for m in fused.modules() if type(m).__name__ == "_FusedConvAdd"]
    assert sorted(m.scale for m in adds) == [0.2] * 6 + [1.0]  # 2 RRDBs x 3 dense blocks, and the trunk
    x = torch.rand(1, 3, 21, 18)
    with torch.inference_mode():
        want = eager(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_freed_feature_maps_stay_in_the_process_for_reuse(tmp_path):
    """The CPU engine switches glibc to heap-only allocation without trimming (no page faults per layer);
    SRTOOL_RETAIN_FREED_MEMORY=0 keeps the system default. Checked in fresh processes: a 32 MB feature
    map allocated where a 64 MB one was freed costs no new page faults under the policy and 8k without,
    in the main thread and in another thread (one arena for all threads)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the policy is glibc-specific")
    probe = (
        "import resource, torch; from srtool.memory import retain_freed_memory as r\n"
        "on = r(); assert r() == on\n"
        "t = torch.ones(16 << 20); del t\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "t = torch.ones(8 << 20)\n"
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before; del t\n"
        "in_thread = []\n"
        "def lane():  # a thread other than the main one (upscale's image lanes) reuses the same pages\n"
        "    t = torch.ones(16 << 20); del t\n"
        "    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
        "    t = torch.ones(8 << 20)\n"
        "    in_thread.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
        "import threading; th = threading.Thread(target=lane); th.start(); th.join()\n"
        "print(on, faults, in_thread[0])\n"
    )
    results = {}
    for value in ("1", "0"):
        env = {**os.environ, "SRTOOL_RETAIN_FREED_MEMORY": value}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
        on, faults, thread_faults = done.stdout.split()
        results[value] = (on, int(faults), int(thread_faults))
    assert results["0"][0] == "False" and results["0"][1] > 8_000  # 32 MB = 8,192 fresh 4 KiB pages
    assert results["1"][0] == "True" and results["1"][1] < 1_000 and results["1"][2] < 1_000


def test_upscale_png_encoder_is_lossless_and_keeps_icc_and_exif(tmp_path):
    """upscale's fast 8-bit PNG path (zlib level 1, 'Up' filter) against PIL's decoder."""
    from PIL import Image

    from srtool.imageio import encode_image, read_image

    rng = np.random.default_rng(0)
    icc = b"\0" * 128 + b"an ICC profile's bytes travel unchanged"
    exif = Image.Exif()
    exif[0x010F] = "srtool-test-camera"
    for shape in [(37, 41), (37, 41, 2), (37, 41, 3), (37, 41, 4)]:
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        path = tmp_path / f"{len(shape)}-{shape[-1]}.png"
        path.write_bytes(encode_image(array, "png", icc_profile=icc, exif=exif.tobytes()))
        decoded = read_image(path)
        assert np.array_equal(decoded.array.reshape(array.shape), array)
        assert decoded.icc_profile == icc
        assert b"srtool-test-camera" in (decoded.exif or b"")


def test_fast_png_decodes_to_the_same_pixels_with_or_without_isal(monkeypatch):
    """upscale's PNGs are compressed by ISA-L when installed, else by zlib (level 1, run-only search):
    both decode to the same pixels (the parts' zlib stream itself: tests/test_png_writer.py)."""
    import io
    import sys

    from PIL import Image

    from srtool.png_writer import encode_png8

    rng = np.random.default_rng(0)
    photo = np.cumsum(rng.integers(-3, 4, (96, 80, 3)), axis=1).clip(0, 255).astype(np.uint8)
    with_isal = encode_png8(photo, None)
    monkeypatch.setitem(sys.modules, "isal", None)  # as on a platform without an isal wheel
    without = encode_png8(photo, None)
    for png in (with_isal, without):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), photo)
        assert len(png) < photo.nbytes


def test_freed_memory_goes_back_after_large_images_only(monkeypatch):
    """After an image whose output reaches RELEASE_AFTER_OUTPUT_BYTES the engine hands free pages back
    (before the caller encodes the output); small images keep them for the next one."""
    from srtool.engine import RELEASE_AFTER_OUTPUT_BYTES, SRModel
    from srtool.fusion import prepare_network
    from srtool.models import SRResNet, SRResNetConfig

    calls = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: calls.append(1))
    torch.manual_seed(0)
    net = SRResNet(SRResNetConfig(n_blocks=1, n_feats=8, head_kernel=3, tail_kernel=3))
    model = SRModel("tiny", 4, prepare_network(net, torch.device("cpu"), "fp32"))
    model(np.zeros((64, 64, 3), np.uint8))
    assert calls == []
    side = int((RELEASE_AFTER_OUTPUT_BYTES / 3) ** 0.5 / 4) + 1  # the smallest square input at the threshold
    model(np.zeros((side, side, 3), np.uint8))
    assert calls == [1]
