"""What users really hand ``--model``: wrapped and prefixed state dicts, renamed files, hostile files, and
named-model downloads that go wrong (a local HTTP server on 127.0.0.1 stands in for GitHub releases).

The bar: a file loads and computes exactly what the reference architecture computes, or it is one
line naming the file and what is wrong (srtool's UserError; exit 2 from the CLI); no traceback, no
executed pickle, no huge allocation from a small file, nothing half-written left under a cache name.
Networks are tiny (spandrel's SRVGGNetCompact with 8 features, a 1-block ESRGAN): the file runs in
a few seconds.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli_err
from srtool import model_zoo
from srtool.errors import UserError
from srtool.loading import load_model
from test_model_zoo import serve_named_model

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402

X = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))


def _random(module: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5 if p.ndim > 1 else 10))
    return module.eval()


@pytest.fixture(scope="module")
def compact():
    """(state dict, reference output on X) of a tiny realesr-general-x4v3-style network."""
    net = _random(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4))
    with torch.no_grad():
        return {k: v.clone() for k, v in net.state_dict().items()}, net(X)


@pytest.fixture(scope="module")
def esrgan_old():
    """(state dict, reference output) of a tiny ESRGAN in the 2018 layout, whose own keys start with ``model.``."""
    net = _random(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    with torch.no_grad():
        return {k: v.clone() for k, v in net.state_dict().items()}, net(X)


def _max_diff(path: Path, ref: torch.Tensor) -> float:
    model = load_model(path, device="cpu", precision="fp32")
    with torch.no_grad():
        return float((model.network(X) - ref).abs().max())


# ------------------------------------------------------------------------------ wrappers and prefixes


@pytest.mark.parametrize("wrap", [
    lambda s: {"model": s},  # spandrel, many training scripts
    lambda s: {"net_g": s},  # BasicSR-style training state
    lambda s: {"netG": s},
    lambda s: {"net": s},
    lambda s: {"params-ema": s},
    lambda s: {"model": s, "optimizer": {"state": {}, "param_groups": []}, "epoch": 7},  # a training checkpoint
    lambda s: {"model." + k: v for k, v in s.items()},  # a Lightning module's `self.model`
    lambda s: {"net_g." + k: v for k, v in s.items()},
    lambda s: {"module.model." + k: v for k, v in s.items()},  # DDP around it
], ids=["model", "net_g", "netG", "net", "params-ema", "training-checkpoint", "model.-prefix", "net_g.-prefix",
        "module.model.-prefix"])
def test_wrapped_and_prefixed_state_dicts_load_exactly(tmp_path, compact, wrap):
    state, ref = compact
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(state), path)
    assert _max_diff(path, ref) < 1e-5  # today: "holds no tensors" / "unrecognised checkpoint layout"


def test_model_prefix_is_not_stripped_from_esrgan_own_names(tmp_path, esrgan_old):
    """ESRGAN 2018 keys are ``model.0.weight``...: a Lightning ``model.`` around them is stripped once, not twice."""
    state, ref = esrgan_old
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"model." + k: v for k, v in state.items()}, tmp_path / "lightning.pth")
    assert _max_diff(tmp_path / "bare.pth", ref) < 1e-5
    assert _max_diff(tmp_path / "lightning.pth", ref) < 1e-5


def test_params_ema_is_chosen_over_params(tmp_path, compact):
    state, ref = compact
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    for doc in ({"params": zeros, "params_ema": state}, {"params_ema": state, "params": zeros}):
        torch.save(doc, tmp_path / "both.pth")
        assert _max_diff(tmp_path / "both.pth", ref) < 1e-5


# ------------------------------------------------------------------------ the file's format, not its name


def test_format_is_read_from_the_content_not_the_extension(tmp_path, esrgan_old):
    from safetensors.torch import save_file

    state, ref = esrgan_old
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "renamed.pth"))
    torch.save(state, tmp_path / "renamed.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "UPPER.SAFETENSORS"))
    for name in ("renamed.pth", "renamed.safetensors", "UPPER.SAFETENSORS"):
        assert _max_diff(tmp_path / name, ref) < 1e-5, name  # today: "refused ... could run code" / "header too large"


def test_onnx_file_is_named_as_such(tmp_path, compact, capsys):
    state, _ = compact
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4).eval()
    net.load_state_dict(state)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (X,), str(tmp_path / "model.onnx"), dynamo=False)
    (tmp_path / "model.pth").write_bytes((tmp_path / "model.onnx").read_bytes())
    for name in ("model.onnx", "model.pth"):
        code, err = run_cli_err(capsys, "models", "inspect", str(tmp_path / name))
        assert code == 2 and "ONNX" in err and "could run code" not in err, err
        assert len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------------------- hostile files


class _Evil:
    """Unpickling this creates a file: a stand-in for any code a malicious checkpoint would run."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_code_in_a_pickle_is_refused_naming_what_it_would_call(tmp_path, capsys, legacy):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"conv_first.weight": torch.zeros(1), "x": _Evil(str(target))}, path,
               _use_new_zipfile_serialization=not legacy)
    code, err = run_cli_err(capsys, "models", "inspect", str(path))
    assert code == 2 and "refused to load" in err and "open" in err, err  # the global it would call
    assert "weights_only` set to `False`" not in err and "add_safe_globals" not in err, err  # never advise that
    assert len(err.strip().splitlines()) == 1, err
    assert not target.exists()


def _torch_zip(path: Path, numel: int, compress: bool) -> None:
    """A torch zip checkpoint whose one float tensor has ``numel`` zeros, stored deflated if ``compress``
    (torch.save never compresses; a deflated run of zeros is a zip bomb: ~1000x)."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"body.0.weight": Tensor()})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zf.open(info, "w", force_zip64=True) as fh:
            for _ in range(numel // (1 << 20)):
                fh.write(bytes(4 << 20))


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.pth"
    _torch_zip(path, 16 << 20, compress=True)  # 64 MiB of zeros in a ~64 kB file
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"bomb\.pth: .*64\.0 MiB.*compressed"):
        load_model(path, device="cpu")  # today: inflated, then refused for its keys


def test_tensor_larger_than_its_stored_data_is_refused(tmp_path):
    """A stride-0 view: a 3 kB file declaring a 4096 x 4096 tensor over one stored float (6 GB of RSS
    for 30000 x 30000 before the fix: the NaN check materialised it)."""
    path = tmp_path / "expanded.pth"
    torch.save({"conv_first.weight": torch.randn(8, 3, 3, 3), "huge": torch.zeros(1).expand(4096, 4096)}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(UserError, match=r"expanded\.pth: tensor 'huge' .*16,777,216 elements.*4 bytes"):
        load_model(path, device="cpu")


# ------------------------------------------------------------------------------------ named downloads


NAME = "realesr-general-x4v3"


@pytest.fixture
def release(monkeypatch, tmp_path, compact):
    """realesr-general-x4v3 served from 127.0.0.1 (a tiny Compact under ``params``, as the release has it),
    pinned to that file's sha256; a fresh cache under tmp_path."""
    buf = io.BytesIO()
    torch.save({"params": compact[0]}, buf)
    data = buf.getvalue()
    server = serve_named_model(monkeypatch, tmp_path, NAME, data)
    yield server, data, tmp_path / "cache" / "models" / model_zoo.ZOO[NAME].filename
    server.close()


def _errors(err: str) -> list[str]:
    """stderr's error lines (a download also announces itself in a ``notice:``, wrapped to the terminal)."""
    lines = err.strip().splitlines()
    assert not any(ln.startswith(("internal error", "Traceback")) for ln in lines), err
    return [ln for ln in lines if ln.startswith("error:")]


def test_redirect_loop_is_one_line(release, capsys):
    server, _, dest = release
    server.redirect_loop.add("/" + dest.name)
    code, err = run_cli_err(capsys, "models", "inspect", NAME)  # models inspect takes a name as --model does
    code2, err2 = run_cli_err(capsys, "upscale", "-", "-o", "-", "--model", NAME)
    for c, e in ((code, err), (code2, err2)):
        assert c == 2 and "redirect" in e and len(_errors(e)) == 1, e
    assert not dest.exists()


def test_cache_folder_that_cannot_be_made_is_one_line(release, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SRTOOL_CACHE_DIR", str(blocker))
    code, err = run_cli_err(capsys, "upscale", "-", "-o", "-", "--model", NAME)
    assert code == 2 and "SRTOOL_CACHE_DIR" in err and len(_errors(err)) == 1, err  # today: internal error


def test_verified_file_in_a_read_only_cache_is_used(release, monkeypatch, compact):
    """A cache an administrator filled and made read-only: the file is checked and used; the sidecar that
    remembers the check cannot be written, which is no reason to fail."""
    server, data, dest = release
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)

    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(model_zoo, "write_text_atomic", read_only)  # as root, chmod would not stop a write
    assert _max_diff(Path(model_zoo.fetch(NAME)), compact[1]) < 1e-5  # today: PermissionError
    assert server.requests == []


def test_two_downloads_of_one_model_at_once_both_get_the_verified_file(release):
    """Two processes (here: threads, each with its own file descriptors, as processes have) asking for the
    same model: one downloads, the other waits for it; nobody appends to the other's ``.part``."""
    server, data, dest = release
    sent, go, waiting = threading.Event(), threading.Event(), threading.Event()
    server.hold["/" + dest.name] = (len(data) // 2, sent, go)
    results: dict[int, object] = {}

    def fetch(i: int) -> None:
        try:
            notice = (lambda message: waiting.set() if "waiting for another srtool" in message else None)
            results[i] = model_zoo.fetch(NAME, notice=notice).read_bytes() == data
        except Exception as exc:  # noqa: BLE001 -- recorded for the assertion message
            results[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
    threads[0].start()
    assert sent.wait(20)  # the first is mid-download
    requests = len(server.requests)
    threads[1].start()
    # the first download is held until the second has either queued behind its lock (fixed) or sent a
    # request of its own (the race of the old code): never released before the second got that far
    deadline = time.monotonic() + 20
    while not waiting.is_set() and len(server.requests) == requests and time.monotonic() < deadline:
        time.sleep(0.01)
    go.set()
    for t in threads:
        t.join(60)
    assert results == {0: True, 1: True}, results  # today: a sha256 mismatch and a FileNotFoundError
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith((".lock", ".verified.json"))) == [dest.name]


# ------------------------------------------------------------- architectures inferred from a few keys


def _rss_growth_mib(fn) -> float:
    """Peak resident memory gained while running ``fn`` (MiB), read from /proc (Linux; the peak is reset first)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak resident memory here (/proc/self/clear_refs: {exc.strerror})")

    def hwm() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])

    before = hwm()
    fn()
    return (hwm() - before) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory read from /proc")
@pytest.mark.parametrize("layout", ["tiny-tensors", "far-index", "swinir-tiny-tensors"])
def test_a_few_keys_cannot_make_spandrel_build_a_huge_network(tmp_path, layout):
    """SRVGGNetCompact's width comes from ``body.0.weight`` and its depth from the highest ``body.N`` key.
    far-index: five tensors (50 kB) naming body.4002 built 2000 64-channel convolutions (300 MB; body.800002
    would need 60 GB) before loading found the keys missing. tiny-tensors: every key present, each holding
    one number (375 kB): 300 full-size convolutions. swinir-tiny-tensors: a 384-wide SwinIR whose linear and
    convolution weights hold one number each (0.36 MB): 75 MB of weights, +250 MiB while building."""
    if layout == "swinir-tiny-tensors":
        from spandrel.architectures.SwinIR import SwinIR

        # built 8 wide (nothing large is ever allocated here, so none can be reused by the load measured
        # below), then made to name 384: widths scaled x48, weights one number, the buffers as they are
        narrow = SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=8, depths=[4, 4, 4], num_heads=[2, 2, 2],
                        mlp_ratio=2, upsampler="pixelshuffledirect").state_dict()
        buffers = re.compile(r"relative_position_(bias_table|index)$|attn_mask$")

        def wide(key: str, v: torch.Tensor) -> torch.Tensor:
            if buffers.search(key) or key.startswith("upsample."):
                return v
            return torch.zeros(v.shape[0] * 48) if v.ndim == 1 else torch.ones(1)

        state = {k: wide(k, v) for k, v in narrow.items()}
        state["conv_first.weight"] = torch.randn(384, 3, 3, 3)
    else:
        f = 64
        state = {"body.0.weight": torch.randn(f, 3, 3, 3), "body.0.bias": torch.zeros(f), "body.1.weight": torch.ones(f)}
        last = 4002 if layout == "far-index" else 602
        if layout == "tiny-tensors":  # (the far index is refused by itself; these keys are all there)
            state.update({f"body.{i}.{p}": torch.ones(1) for i in range(2, last)
                          for p in (("weight", "bias") if i % 2 == 0 else ("weight",))})
        state.update({f"body.{last}.weight": torch.randn(48, f, 3, 3), f"body.{last}.bias": torch.zeros(48)})
    path = tmp_path / "deep.pth"
    torch.save(state, path)

    def load():
        with pytest.raises(UserError, match=r"deep\.pth: .*(body|layers)"):
            load_model(path, device="cpu")

    assert _rss_growth_mib(load) < 16  # before: +300 MiB (far-index), +50 MiB (tiny-tensors), +250 MiB (swinir)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory read from /proc")
def test_a_few_keys_cannot_make_srtools_own_detectors_build_a_huge_network(tmp_path):
    """srtool's own layouts count blocks and read widths the same way: a BasicSR EDSR whose 120 blocks hold
    one number each built 120 full 96-channel blocks (80 MB; up to 2.4 GB at the configs' limits of 128
    blocks of 512 features) before loading found them wrong."""
    f = 96
    state = {"conv_first.weight": torch.randn(f, 3, 3, 3), "conv_first.bias": torch.zeros(f),
             "conv_after_body.weight": torch.randn(f, f, 3, 3), "upsample.0.weight": torch.randn(4 * f, f, 3, 3),
             "upsample.2.weight": torch.randn(4 * f, f, 3, 3), "conv_last.weight": torch.randn(3, f, 3, 3)}
    state.update({f"body.{i}.conv{j}.weight": torch.ones(1) for i in range(120) for j in (1, 2)})
    path = tmp_path / "edsr.pth"
    torch.save(state, path)

    def load():
        with pytest.raises(UserError, match=r"edsr\.pth: looks like basicsr-edsr but the tensors do not fit"):
            load_model(path, device="cpu")

    assert _rss_growth_mib(load) < 16


def test_a_folder_where_the_cached_file_goes_is_one_line(release):
    _, _, dest = release
    (dest / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="in the way"):
        model_zoo.fetch(NAME)  # before: downloaded, then os.replace onto the folder: IsADirectoryError


def test_srtool_training_checkpoint_loads_its_ema_weights(tmp_path, compact):
    """A training checkpoint (``checkpoints/iter_*.pt``) holds the raw generator and its EMA; srtool exports,
    validates and publishes the EMA, so ``--model`` on the checkpoint must run the EMA too."""
    state, ref = compact
    raw = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"generator": raw, "ema": state, "optimizer_g": {"state": {}, "param_groups": []}, "iteration": 10},
               tmp_path / "iter_00000010.pt")
    assert _max_diff(tmp_path / "iter_00000010.pt", ref) < 1e-5  # before: the raw generator


def test_a_wrapper_key_without_tensors_is_passed_over(tmp_path, compact):
    """``ema`` / ``model`` also name other things (an EMA's settings, a model's name or config)."""
    state, ref = compact
    torch.save({"ema": {"decay": 0.999, "updates": 10}, "model": {"arch": "compact"}, "net_g": state}, tmp_path / "m.pth")
    assert _max_diff(tmp_path / "m.pth", ref) < 1e-5
