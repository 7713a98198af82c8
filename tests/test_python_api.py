"""The Python API as callers use it: srtool.load_model, srtool.upscale_image and ``model(array)``.

What Python users hand the engine (views, odd dtypes and byte orders, tensors, PIL modes, floats out of
range) gets either the documented result (same dtype and channel count, equal to the obvious reference)
or one srtool UserError naming the value, and the caller's torch state and input array are left as they
were. Cheap: bicubic and a 2-block, 8-feature SRResNet with random weights.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import srtool
from srtool.engine import SRModel
from srtool.errors import UserError
from srtool.fusion import prepare_network
from srtool.models import SRResNet, SRResNetConfig


@pytest.fixture(scope="module")
def net_model() -> SRModel:
    torch.manual_seed(0)
    network = SRResNet(SRResNetConfig(n_blocks=2, n_feats=8, head_kernel=3, tail_kernel=3))
    return SRModel(name="tiny", scale=4, network=prepare_network(network, torch.device("cpu"), "fp32"),
                   precision="fp32", tile=16, tile_pad=4)


@pytest.fixture(scope="module")
def bicubic() -> SRModel:
    return srtool.load_model("bicubic")


@pytest.fixture(params=["bicubic", "network"])
def model(request, bicubic, net_model) -> SRModel:
    return bicubic if request.param == "bicubic" else net_model


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (13, 11, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- what the docs promise


def test_array_views_give_the_contiguous_copys_result(model, rgb, tmp_path):
    expected = model(rgb)
    readonly = rgb.copy()
    readonly.setflags(write=False)
    mapped = np.memmap(tmp_path / "img.u8", dtype=np.uint8, mode="w+", shape=rgb.shape)
    mapped[:] = rgb
    mapped.flush()
    views = {
        "negative stride": rgb[::-1][::-1],
        "fortran": np.asfortranarray(rgb),
        "strided channels": np.ascontiguousarray(np.dstack([rgb, rgb[..., :1]]))[..., :3],
        "read-only": readonly,
        "memory-mapped (read-only)": np.memmap(tmp_path / "img.u8", dtype=np.uint8, mode="r", shape=rgb.shape),
    }
    for label, view in views.items():
        out = model(view)
        assert type(out) is np.ndarray and np.array_equal(out, expected), label
    assert np.array_equal(model(rgb[::-1]), model(np.ascontiguousarray(rgb[::-1])))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:140, 200:236])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_input_keeps_its_dtype_and_agrees_with_uint8(model, rgb, photo, dtype):
    noise = model((rgb / 255.0).astype(dtype))
    assert noise.dtype == dtype and noise.shape == (52, 44, 3)
    assert 0.0 <= noise.min() and noise.max() <= 1.0  # in [0, 1] like the input (bicubic's overshoots clamped)
    out8 = model(photo)
    out = model((photo / 255.0).astype(dtype))
    assert out.dtype == dtype and out.shape == out8.shape
    # uint8 is the float result rounded, except that MATLAB's bicubic rounds (and saturates) uint8 between
    # its two passes: on a photo that moves a few pixels by one level
    tolerance = 1.1 if model.is_bicubic else 0.5 + 1e-3
    assert np.abs(out.astype(np.float64) * 255 - out8).max() <= tolerance


def test_big_endian_arrays_are_read_like_native_ones(model, rgb):
    wide = rgb.astype(np.uint16) * 257
    assert np.array_equal(model(wide.astype(">u2")), model(wide))
    unit = (rgb / 255.0).astype(np.float32)
    assert np.array_equal(model(unit.astype(">f4")), model(unit))


def test_torch_tensors_are_read_as_arrays(model, rgb):
    unit = (rgb / 255.0).astype(np.float32)
    expected = model(unit)
    tensor = torch.from_numpy(unit.copy()).requires_grad_(True)  # e.g. straight out of a training loop
    assert np.array_equal(srtool.upscale_image(model, tensor), expected)
    assert np.array_equal(model(torch.from_numpy(rgb)), model(rgb))
    with pytest.raises(UserError, match="meta"):
        model(torch.empty(13, 11, 3, device="meta"))


def test_caller_state_and_input_are_left_alone(net_model, rgb):
    expected = net_model(rgb)
    rgba = np.dstack([rgb, rgb[..., 0]]).astype(np.float32) / 255
    before = rgba.copy()
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    try:
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            assert np.array_equal(net_model(rgb), expected)
        with torch.inference_mode():
            assert np.array_equal(net_model(rgb), expected)
        net_model(rgba)
        assert torch.get_num_threads() == 1 and torch.get_default_dtype() == torch.float64
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert np.array_equal(rgba, before)  # premultiplication happens on a copy
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def test_one_model_serves_several_threads(net_model, rgb):
    expected = net_model(rgb)
    results: list = [None] * 3

    def work(k: int) -> None:
        results[k] = net_model(rgb)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert all(r is not None and np.array_equal(r, expected) for r in results)


@pytest.mark.parametrize("mode,out_mode", [("1", "L"), ("L", "L"), ("LA", "LA"), ("P", "RGB"), ("RGB", "RGB"),
                                           ("RGBA", "RGBA"), ("CMYK", "RGB"), ("YCbCr", "RGB"), ("HSV", "RGB"),
                                           ("I", "I;16")])
def test_pil_modes(bicubic, rgb, mode, out_mode):
    image = Image.fromarray(rgb).convert(mode)
    out = srtool.upscale_image(bicubic, image)
    assert isinstance(out, Image.Image) and out.mode == out_mode and out.size == (44, 52)


def test_pil_palette_with_transparency_keeps_alpha(bicubic, rgb):
    image = Image.fromarray(rgb).quantize(8)
    image.info["transparency"] = 0
    assert srtool.upscale_image(bicubic, image).mode == "RGBA"


# ------------------------------------------------------------------------------ clear refusals


def _refused(model, image, *words: str) -> str:
    with pytest.raises(UserError) as info:
        srtool.upscale_image(model, image)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_as_the_input(model, rgb, bad):
    image = (rgb / 255.0).astype(np.float32)
    image[3, 4, 1] = bad
    message = _refused(model, image, "NaN or infinite")
    assert "network" not in message  # the input is at fault, not the network's output


@pytest.mark.parametrize("scale_to", [255.0, -1.0])
def test_float_input_outside_unit_range_is_refused(model, rgb, scale_to):
    # the classic mistake: float pixels on the 0..255 scale (would come back as a white image)
    _refused(model, rgb.astype(np.float32) / 255 * scale_to, "[0, 1]")


def test_float_input_with_a_small_overshoot_is_taken(model, rgb):
    """Another model's output or a colour conversion overshoots [0, 1] a little: that is not a mistake."""
    image = rgb.astype(np.float32) / 255
    image[0, 0, 0], image[1, 1, 1] = -0.03, 1.04
    out = model(image)
    assert out.dtype == np.float32 and out.shape == (image.shape[0] * 4, image.shape[1] * 4, 3)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_shape_mistakes_get_a_hint(model, rgb):
    _refused(model, np.ascontiguousarray(rgb.transpose(2, 0, 1)), "(3, 13, 11)", "transpose(1, 2, 0)")
    _refused(model, rgb[None], "(1, 13, 11, 3)", "[0]")
    _refused(model, np.zeros((13, 11, 5), np.uint8), "(13, 11, 5)")
    _refused(model, np.zeros((0, 11, 3), np.uint8), "empty")


@pytest.mark.parametrize("thing", [None, "photo.png", 3])
def test_non_images_are_named(model, thing):
    _refused(model, thing, type(thing).__name__)


def test_unsupported_dtypes_are_named(model, rgb):
    for dtype in (np.float16, np.bool_, np.int32, np.int64):
        _refused(model, rgb.astype(dtype), np.dtype(dtype).name)


def test_pil_modes_without_an_array_form_are_user_errors(model, rgb):
    _refused(model, Image.fromarray(rgb).convert("F"), "mode F")
    _refused(model, Image.fromarray(np.full((5, 4), 70000, np.int32)), "mode I", "65535")


def test_bicubic_refuses_an_unknown_alpha_mode_like_networks(model, rgb):
    with pytest.raises(UserError, match="unknown mode 'bogus'"):
        srtool.upscale_image(model, np.dstack([rgb, rgb[..., 0]]), alpha="bogus")


@pytest.mark.parametrize("option,value", [("tile", "64"), ("tile", 16.5), ("tile_pad", "3"), ("tile_pad", 2.5),
                                          ("scale", "4")])
def test_load_model_refuses_non_integer_options(option, value):
    with pytest.raises(UserError, match=option.replace("_", "-")):
        srtool.load_model("bicubic", **{option: value})


def test_load_model_accepts_numpy_integers_and_paths(tmp_path):
    assert srtool.load_model("bicubic", scale=np.int64(2)).scale == 2
    with pytest.raises(UserError, match="model not found"):
        srtool.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="not a training run"):
        srtool.load_model(tmp_path)


def test_model_repr_is_short(net_model):
    assert len(repr(net_model)) < 600  # the network's module tree and the export metadata are not printed


# ------------------------------------------------------------------------------------ evaluation


def test_evaluation_names_a_model_that_is_not_one(benchmarks_dir):
    from srtool.evaluate import evaluate_dataset, evaluate_models

    for thing, words in (("bicubic", ("str", "srtool.load_model('bicubic')")), (None, ("NoneType",)),
                         (lambda lr: lr, ("function",))):
        with pytest.raises(UserError) as info:
            evaluate_dataset(thing, benchmarks_dir / "Set5", progress=False)
        assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(UserError, match="got str"):
        evaluate_models(["bicubic"], benchmarks_dir / "Set5", progress=False)


def test_evaluate_takes_one_model_and_one_dataset_as_well_as_lists(benchmarks_dir):
    from srtool.evaluate import evaluate

    one = evaluate(srtool.load_model("bicubic"), str(benchmarks_dir / "Set5"), progress=False, workers=1)
    listed = evaluate([srtool.load_model("bicubic")], [benchmarks_dir / "Set5"], progress=False, workers=1)
    assert [r.name for r in one.results] == ["Set5"] and one.results[0].psnr == listed.results[0].psnr


def test_callers_autocast_does_not_change_the_models_precision(net_model, rgb):
    unit = (rgb / 255.0).astype(np.float32)
    expected = net_model(unit)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. a training script's inference block
        assert np.array_equal(net_model(unit), expected)
        assert torch.is_autocast_enabled("cpu")


def test_compute_metrics_reads_tensors_and_views_like_arrays(photo):
    from srtool.metrics import compute_metrics

    sr = np.clip(photo.astype(np.int16) + np.random.default_rng(3).integers(-6, 7, photo.shape), 0, 255).astype(np.uint8)
    expected = compute_metrics(sr, photo, scale=4)
    assert compute_metrics(torch.from_numpy(sr), torch.from_numpy(photo), scale=4) == expected
    assert compute_metrics(sr[::-1][::-1], np.asfortranarray(photo), scale=4) == expected
    assert compute_metrics(sr / 255.0, photo.astype(np.float32) / 255, scale=4) == expected


def test_load_model_tile_zero_is_one_pass_as_on_the_command_line(photo):
    # README: --tile 0 = no tiling; the Python keyword means the same (tiles of 16 would differ at the seams)
    untiled = srtool.load_model("default", device="cpu", precision="fp32", tile=0)
    assert untiled.tile == 0
    whole = srtool.load_model("default", device="cpu", precision="fp32", tile=1024)
    small = photo[:20, :24]
    assert np.array_equal(untiled(small), whole(small))
    with pytest.raises(UserError, match="0 for no tiling"):
        srtool.load_model("bicubic", tile=8)


# ------------------------------------------------------------------------------------ training


def test_train_options_take_one_folder_or_override_bare(tmp_path):
    from srtool.train import TrainOptions, Trainer

    missing = tmp_path / "my-data"
    with pytest.raises(UserError, match=f"--data {missing}: no such folder"):  # not the path's first letter
        Trainer(TrainOptions(preset="srresnet", data=str(missing), out=tmp_path / "run", progress=False))
    (tmp_path / "hr").mkdir()
    with pytest.raises(UserError, match="train.lr.*'abc'"):
        Trainer(TrainOptions(preset="srresnet", data=tmp_path / "hr", out=tmp_path / "run", overrides="train.lr=abc",
                             progress=False))


def test_a_trainer_that_fails_to_set_up_releases_its_run_directory(tmp_path):
    """A Trainer that raised while setting up held its run directory's lock as long as the exception's
    traceback lived (a notebook keeps it for inspection): the retry after fixing the mistake was refused
    as "another srtool train is training in this run directory"."""
    from srtool.train import TrainOptions, Trainer
    from srtool.train.runstate import RunLock

    run = tmp_path / "run"
    run.mkdir()  # an existing (empty) folder: the lock is taken before --data is checked
    with pytest.raises(UserError, match="no such folder") as failed:
        Trainer(TrainOptions(preset="srresnet", data=tmp_path / "missing", out=run, progress=False))
    assert failed.traceback  # the traceback, and the half-built Trainer in it, are still alive here
    RunLock(run).close()  # raised UserError("another srtool train ...") before the fix


def test_a_pil_image_whose_file_is_closed_is_named(bicubic, rgb, tmp_path):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:  # never loaded: its pixels went with the file
        pass
    _refused(bicubic, image, "mode RGB", "load")
    with Image.open(tmp_path / "a.png") as loaded:
        loaded.load()
    assert srtool.upscale_image(bicubic, loaded).size == (44, 52)  # loaded inside the block: still usable


def test_top_level_entry_points_show_the_real_parameters():
    import inspect

    from srtool import engine, loading

    for wrapper, real in ((srtool.load_model, loading.load_model), (srtool.upscale_image, engine.upscale_image)):
        assert list(inspect.signature(wrapper).parameters) == list(inspect.signature(real).parameters)
        assert [p.default for p in inspect.signature(wrapper).parameters.values()] == \
            [p.default for p in inspect.signature(real).parameters.values()]
    with pytest.raises(TypeError, match="half"):
        srtool.load_model("bicubic", half=True)


def test_upscale_image_names_a_model_that_is_not_one(rgb, bicubic):
    for thing, words in (("default", ("got str", "srtool.load_model('default')")), (None, ("got NoneType",)),
                         (rgb, ("got ndarray", "upscale_image(model, image)"))):
        with pytest.raises(UserError) as info:
            srtool.upscale_image(thing, bicubic if thing is rgb else rgb)
        assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("spec", [None, 3])
def test_load_model_names_a_spec_that_is_not_a_name_or_path(spec):
    with pytest.raises(UserError, match=f"expected a name or a path .* got {type(spec).__name__}"):
        srtool.load_model(spec)


def test_load_model_builds_on_the_cpu_whatever_default_device_the_caller_set():
    """A caller inside `with torch.device("meta")` (or with set_default_device) got "Cannot copy out of
    meta tensor" from deep inside torch."""
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    reference = srtool.load_model("default", device="cpu")(image)
    with torch.device("meta"):
        model = srtool.load_model("default", device="cpu")
        assert np.array_equal(model(image), reference)
