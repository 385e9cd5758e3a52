"""ControlNet: converted ControlNets against diffusers' StableDiffusionControlNetPipeline (one, two with
different weights, guidance start and end, guess mode), their residuals added to converted UNets by a graph
pass, settings refused with what to do, the PNG record, and the torch-free canny annotator.

Tolerance: max abs pixel difference <= 2/255 on float images in [0, 1], at f32 (as tests/test_parity.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdcpu.errors import SdcpuError
from sdcpu.runtime.controlnet.annotators import annotate, canny
from sdcpu.runtime.controlnet.setting import ControlSetting

PIXEL_TOLERANCE = 2 / 255
PROMPT, NEGATIVE = "a red circle on the left", "blurry"


def _control_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.uniform(0, 1, (64, 64, 3)) * 255).astype(np.uint8))


def _disc(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).ellipse((size // 6, size // 6, size * 5 // 6, size * 5 // 6), fill=(255, 255, 255))
    return image


def _ours(folder, controls, latents, scheduler="ddim", backend=None, **extra):
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    settings = dict(negative_prompt=NEGATIVE, steps=6, guidance=7.5, seed=3, scheduler=scheduler, latents=latents)
    return pipe(PROMPT, controls=controls, **settings | extra)


# (weights, start, end, mode) of each case, for the first ControlNet or both
CASES = {
    "one": ([1.0], 0.0, 1.0, "balanced"),
    "two-weights": ([0.6, 1.3], 0.0, 1.0, "balanced"),
    "start-end": ([1.0], 0.2, 0.7, "balanced"),
    "guess-mode": ([0.8], 0.0, 1.0, "control"),
}


@pytest.mark.parity
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("case", list(CASES))
def test_controlnets_match_diffusers(case, backend, tiny_sd1, tiny_controlnets, request):
    torch = pytest.importorskip("torch")
    import tiny

    onnx = backend == "onnxruntime"
    folder = request.getfixturevalue("sd1_onnx" if onnx else "sd1_openvino")
    controlnets_openvino = request.getfixturevalue("controlnets_onnx" if onnx else "controlnets_openvino")
    weights, start, end, mode = CASES[case]
    images = [_control_image(i) for i in range(len(weights))]
    controls = [
        ControlSetting.of(folder, image, weight, start, end, mode)
        for folder, image, weight in zip(controlnets_openvino, images, weights, strict=False)
    ]
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = _ours(folder, controls, latents, backend=backend).array
    pipe = tiny.diffusers_controlnet_pipeline(tiny_sd1, tiny_controlnets[: len(weights)], "DDIMScheduler")
    many = len(weights) > 1
    theirs = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        image=images if many else images[0],
        num_inference_steps=6,
        guidance_scale=7.5,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
        controlnet_conditioning_scale=weights if many else weights[0],
        control_guidance_start=[start] * len(weights) if many else start,
        control_guidance_end=[end] * len(weights) if many else end,
        guess_mode=mode == "control",
    ).images
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
    plain = _ours(folder, [], latents, backend=backend).array
    assert float(np.abs(ours - plain).max()) > 0.05  # the ControlNet did change the image


@pytest.mark.parity
def test_weight_zero_gives_the_base_image_bit_for_bit_and_is_recorded(sd1_openvino, controlnets_openvino):
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    control = ControlSetting.of(controlnets_openvino[0], _disc(), 0.0, 0.1, 0.9, "prompt", "canny")
    with_zero = _ours(sd1_openvino, [control], latents)
    plain = _ours(sd1_openvino, [], latents)
    np.testing.assert_array_equal(with_zero.array, plain.array)
    text = with_zero.settings.png_metadata(0, {})
    record = json.loads(text["sdcpu"])["controls"][0]
    assert record == {
        "name": controlnets_openvino[0].name,
        "hash": control.hash,
        "weight": 0.0,
        "start": 0.1,
        "end": 0.9,
        "mode": "prompt",
        "module": "canny",
    }
    unit = f"Module: canny, Model: {control.name} [{control.hash}], Weight: 0, Guidance Start: 0.1"
    assert f'ControlNet 0: "{unit}, Guidance End: 0.9, Control Mode: My prompt is more important"' in text["parameters"]


@pytest.mark.parity
def test_controlnet_steers_img2img_and_inpainting(sd1_openvino, controlnets_openvino):
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    control = ControlSetting.of(controlnets_openvino[0], _disc(), 1.0)
    init = _control_image(5)
    steered = pipe("a cat", init_image=init, strength=0.7, steps=4, seed=2, controls=[control]).array
    plain = pipe("a cat", init_image=init, strength=0.7, steps=4, seed=2).array
    assert float(np.abs(steered - plain).max()) > 0.05
    # The UNet keeps the residual inputs it was given, fed zeros now: the plain image of a fresh pipeline.
    fresh = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    np.testing.assert_array_equal(plain, fresh("a cat", init_image=init, strength=0.7, steps=4, seed=2).array)
    mask = Image.new("RGB", (64, 64))
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=(255, 255, 255))
    painted = pipe.inpaint("a cat", init, mask, steps=4, seed=2, controls=[control])
    assert painted.array.shape == (1, 64, 64, 3) and np.isfinite(painted.array).all()


@pytest.mark.parity
def test_the_residual_pass_finds_every_skip_of_the_unet(sd1_openvino, controlnets_openvino):
    import openvino as ov

    from sdcpu.format.controlnet import ControlNetManifest
    from sdcpu.runtime.controlnet import residuals

    model = ov.Core().read_model(sd1_openvino / "unet" / "openvino_model.xml")
    manifest = ControlNetManifest.load(controlnets_openvino[0])
    assert len(residuals.skip_concatenations(model)) == manifest.down_residuals == 4
    assert residuals.add_residual_inputs(model, manifest.residual_channels) == 10
    names = {name for port in model.inputs for name in port.get_names()}
    assert {residuals.down_name(i) for i in range(4)} | {residuals.MID_NAME} <= names
    with pytest.raises(SdcpuError, match="another model family"):
        residuals.add_residual_inputs(ov.Core().read_model(sd1_openvino / "unet" / "openvino_model.xml"), [32] * 6)


@pytest.mark.parity
def test_bad_controlnet_settings_are_refused(sd1_openvino, controlnets_openvino, tmp_path):
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    folder = controlnets_openvino[0]
    for weight, start, end, mode, module, words in [
        (2.5, 0, 1, "balanced", "none", "weight must be from 0 to 2"),
        (float("nan"), 0, 1, "balanced", "none", "weight"),
        (1, 0.6, 0.4, "balanced", "none", "start < end"),
        (1, 0, 1.5, "balanced", "none", "start < end"),
        (1, 0, 1, "louder", "none", "unknown control mode"),
        (1, 0, 1, "balanced", "openpose", "unknown ControlNet module"),
    ]:
        with pytest.raises(SdcpuError, match=words):
            ControlSetting.of(folder, _disc(), weight, start, end, mode, module)
    with pytest.raises(SdcpuError, match="not a converted ControlNet"):
        ControlSetting.of(sd1_openvino, _disc())
    with pytest.raises(SdcpuError, match="is a ControlNet, not a model"):
        Pipeline.load(folder)
    # A ControlNet of another family (wider text) is refused before any work, naming both widths.
    other = tmp_path / "sd2-controlnet"
    shutil.copytree(folder, other)
    manifest = json.loads((other / "sdcpu-controlnet.json").read_text())
    (other / "sdcpu-controlnet.json").write_text(json.dumps(manifest | {"cross_attention_dim": 1024, "family": "sd2"}))
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    with pytest.raises(SdcpuError, match="for sd2 models"):
        pipe("x", steps=2, controls=[ControlSetting.of(other, _disc())])
    with pytest.raises(SdcpuError, match="DeepCache"):
        pipe("x", steps=2, deep_cache=2, controls=[ControlSetting.of(folder, _disc())])


@pytest.mark.parity
def test_onnx_runtime_needs_onnx_controlnets_and_the_unet_graph_with_their_inputs(
    sd1_onnx, controlnets_openvino, controlnets_onnx, tmp_path
):
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(sd1_onnx, LoadOptions(backend="onnxruntime"))
    with pytest.raises(SdcpuError, match="convert it with --format onnx"):
        pipe("x", steps=2, controls=[ControlSetting.of(controlnets_openvino[0], _disc())])
    # An ONNX folder converted before the UNet graph with ControlNet's inputs existed
    older = tmp_path / "older"
    shutil.copytree(sd1_onnx, older)
    (older / "unet" / "model_controlnet.onnx").unlink()
    manifest = json.loads((older / "sdcpu.json").read_text())
    del manifest["files"]["unet/model_controlnet.onnx"]
    manifest["components"]["unet"]["files"].remove("unet/model_controlnet.onnx")
    (older / "sdcpu.json").write_text(json.dumps(manifest))
    with pytest.raises(SdcpuError, match="convert it again with this sdcpu, or run it with --backend openvino"):
        Pipeline.load(older, LoadOptions(backend="onnxruntime"))(
            "x", steps=2, controls=[ControlSetting.of(controlnets_onnx[0], _disc())]
        )


@pytest.mark.unit
def test_canny_outlines_a_disc_and_nothing_else():
    edges = np.asarray(canny(_disc(96)))[..., 0] > 0
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 47.5, xx - 47.5)
    assert edges.any()
    assert (np.abs(radius[edges] - 32) <= 2.5).all()  # on the circle, one or two pixels wide
    ring = (np.abs(radius - 32) <= 2.5).sum()
    assert edges.sum() < ring  # thinned
    covered = {int(a) // 10 for a in np.degrees(np.arctan2(yy[edges] - 47.5, xx[edges] - 47.5)) + 180}
    assert len(covered) >= 35  # all the way round (36 sectors of 10 degrees)
    assert not (np.asarray(canny(Image.new("RGB", (32, 32), (90, 90, 90)))) > 0).any()  # flat: no edge


@pytest.mark.unit
def test_canny_keeps_weak_edges_joined_to_strong_ones_only():
    # One strong step, and a weak one (between the thresholds) joined to it in an L; a lone weak step apart.
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 200  # strong vertical edge: gradient 4 * 200 = 800 per channel
    image[30:, :20] = 30  # weak horizontal edge, touching the strong one: 4 * 30 = 120, between 100 and 200
    image[:8, :10] = 30  # a weak corner far from any strong edge
    edges = np.asarray(canny(Image.fromarray(image)))[..., 0] > 0
    assert edges[:, 18:22].any(axis=1).all()  # the strong edge, along its length
    assert edges[28:32, 2:16].any(axis=0).all()  # the weak edge joined to it
    assert not edges[:12, :12].any()  # the lone weak one


@pytest.mark.unit
def test_canny_matches_opencv_where_it_is_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    for _ in range(6):
        x, y, r = rng.integers(8, 56, 3)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, (int(x), int(y)), int(r) // 3 + 4, color, -1)
    ours = np.asarray(canny(Image.fromarray(image)))[..., 0] > 0
    theirs = cv2.Canny(image, 100, 200) > 0
    assert (ours == theirs).mean() > 0.99


@pytest.mark.unit
def test_annotate_names_its_modules():
    image = _disc(32)
    assert annotate("none", image) is image
    with pytest.raises(SdcpuError, match="none, canny"):
        annotate("openpose", image)


@pytest.mark.parity
def test_convert_refuses_model_options_for_a_controlnet(tiny_controlnets, tmp_path):
    from sdcpu.export.convert import convert

    with pytest.raises(SdcpuError, match="--tiny-vae: not for a ControlNet"):
        (tmp_path / "taesd").mkdir()
        convert(str(tiny_controlnets[0]), tmp_path / "out", "openvino", "fp32", tiny_vae=tmp_path / "taesd")
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_cli_parses_control_units():
    from sdcpu.cli.options import parse_controls

    assert parse_controls(["cn:edge.png"]) == [(Path("cn"), Path("edge.png"), 1.0, 0.0, 1.0)]
    assert parse_controls(["cn:edge.png:0.5"]) == [(Path("cn"), Path("edge.png"), 0.5, 0.0, 1.0)]
    assert parse_controls(["cn:edge.png:0.5:0.1:0.8"]) == [(Path("cn"), Path("edge.png"), 0.5, 0.1, 0.8)]
    for bad in ["cn", "cn:edge.png:1:0.5", "a:b:c"]:
        with pytest.raises(SdcpuError, match="FOLDER:IMAGE"):
            parse_controls([bad])


@pytest.mark.unit
def test_the_demo_finds_its_edges_controlnet_by_name_and_follows_it(tmp_path):
    """The bundled demo ControlNet on 12 held-out captions, each with the edge map of another shape at another
    place (bench/controlnet_quality.py measures all 240): the image shows the control's shape and place in
    the caption's colour. 87.5% of 48 followed at f32 on an Intel Xeon; at least 8 of 12 must here."""
    import dataclasses

    from sdcpu import Pipeline
    from sdcpu.demo import world
    from sdcpu.runtime.controlnet.folders import controlnet_names, find_controlnet
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
    assert controlnet_names(pipe.controlnet_dir) == ["edges"]
    folder = find_controlnet("edges", pipe.controlnet_dir)
    _, held_out = world.split_scenes()
    shapes, places = list(world.SHAPES), list(world.POSITIONS)
    followed = 0
    for i in range(0, 240, 20):
        scene = held_out[i]
        steer = dataclasses.replace(
            scene,
            shape=shapes[(shapes.index(scene.shape) + 1) % 3],
            position=places[(places.index(scene.position) + 1) % 5],
        )
        control = ControlSetting.of(folder, world.render(steer), 1.0, module="canny")
        seen = world.judge(pipe(scene.caption(i), seed=i, controls=[control]).images[0])
        followed += (seen["shape"], seen["position"], seen["colour"]) == (steer.shape, steer.position, scene.colour)
    assert followed >= 8, f"{followed} of 12 followed the control"


@pytest.mark.parity
@pytest.mark.parametrize("mode", ["control"])  # the conditional rows alone: the harder path
def test_low_memory_runs_controlnet_row_by_row_to_the_same_image(sd1_openvino, controlnets_openvino, mode):
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    # Batch-1 guidance: the ControlNet runs on each row apart, and in "control" mode on the conditional ones only.
    latents = np.random.default_rng(4).standard_normal((2, 4, 8, 8), dtype=np.float32)
    control = ControlSetting.of(controlnets_openvino[0], _control_image(3), 0.9, 0.0, 0.8, mode)
    images = []
    for low_memory in (False, True):
        pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", low_memory=low_memory))
        images.append(pipe(PROMPT, steps=4, seed=1, num_images=2, latents=latents, controls=[control]).array)
    np.testing.assert_allclose(images[1], images[0], atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("mode", ["balanced"])  # guess mode's arithmetic is the family's own: SD 1.x tests it
def test_an_sdxl_controlnet_matches_diffusers(mode, tiny_sdxl, sdxl_openvino, sdxl_controlnet_openvino, monkeypatch):
    """SDXL's ControlNets read the pooled text and the size and crop ids too; against diffusers'
    StableDiffusionXLControlNetPipeline, Euler, guidance 5."""
    torch = pytest.importorskip("torch")
    import tiny

    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    source, converted = sdxl_controlnet_openvino
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    control = ControlSetting.of(converted, _control_image(6), 0.9, 0.0, 0.8, mode)
    pipe = Pipeline.load(sdxl_openvino, LoadOptions(compute_precision="f32", cache=False))
    ours = pipe("a red circle", steps=5, guidance=5.0, seed=2, scheduler="euler", latents=latents, controls=[control])
    plain = pipe("a red circle", steps=5, guidance=5.0, seed=2, scheduler="euler", latents=latents)
    reference = tiny.diffusers_controlnet_pipeline(tiny_sdxl, [source], "EulerDiscreteScheduler", "StableDiffusionXL")
    theirs = reference(
        "a red circle",
        image=_control_image(6),
        num_inference_steps=5,
        guidance_scale=5.0,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
        controlnet_conditioning_scale=0.9,
        control_guidance_start=0.0,
        control_guidance_end=0.8,
        guess_mode=mode == "control",
    ).images
    diff = float(np.abs(ours.array - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
    assert float(np.abs(ours.array - plain.array).max()) > 0.05


@pytest.mark.parity
@pytest.mark.parametrize("tool", ["optimum-intel", "optimum-onnx"])
def test_other_tools_unets_take_controlnet_as_they_are(tool, tmp_path, monkeypatch):
    """optimum-intel's and optimum's exports (committed fixtures) with a ControlNet on OpenVINO, against
    diffusers on the pipeline they were exported from; ONNX Runtime says what optimum's export lacks."""
    torch = pytest.importorskip("torch")
    import tiny

    from sdcpu import Pipeline
    from sdcpu.errors import SdcpuNotice
    from sdcpu.export.convert import convert
    from sdcpu.runtime.options import LoadOptions

    source = shutil.copytree(tiny.INTEROP / "source", tmp_path / "source")
    shutil.copyfile(
        tiny.INTEROP / tool / "scheduler" / "scheduler_config.json", source / "scheduler" / "scheduler_config.json"
    )
    raw = tiny.write_controlnet(tmp_path / "controlnet", seed=3, unet_folder=source / "unet")
    convert(str(raw), tmp_path / "controlnet-ov", "openvino", "fp32", progress=lambda _: None)
    control = ControlSetting.of(tmp_path / "controlnet-ov", _control_image(2), 1.0)
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    with pytest.warns(SdcpuNotice, match="no sdcpu.json"):
        pipe = Pipeline.load(tiny.INTEROP / tool, LoadOptions(backend="openvino", compute_precision="f32", cache=False))
    ours = pipe(
        PROMPT, negative_prompt=NEGATIVE, steps=5, seed=1, scheduler="euler", latents=latents, controls=[control]
    )
    reference = tiny.diffusers_controlnet_pipeline(source, [raw], "EulerDiscreteScheduler")
    theirs = reference(
        PROMPT,
        negative_prompt=NEGATIVE,
        image=_control_image(2),
        num_inference_steps=5,
        guidance_scale=7.5,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
    ).images
    diff = float(np.abs(ours.array - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
    if tool == "optimum-onnx":
        onnx_control = tmp_path / "controlnet-onnx"
        convert(str(raw), onnx_control, "onnx", "fp32", progress=lambda _: None)
        with pytest.warns(SdcpuNotice):
            theirs_on_ort = Pipeline.load(tiny.INTEROP / tool, LoadOptions(backend="onnxruntime", cache=False))
        with pytest.raises(SdcpuError, match="or run it with --backend openvino"):
            theirs_on_ort(PROMPT, steps=2, controls=[ControlSetting.of(onnx_control, _control_image(2))])


@pytest.mark.parity
def test_a_second_generation_with_a_controlnet_compiles_nothing(sd1_openvino, controlnets_openvino, monkeypatch):
    from sdcpu import Pipeline
    from sdcpu.runtime.engines import openvino as engine
    from sdcpu.runtime.options import LoadOptions

    compiled = []
    compile_once = engine.OpenVINOModel._compile

    def counted(self, shapes, repeated):
        compiled.append(self.path)
        return compile_once(self, shapes, repeated)

    monkeypatch.setattr(engine.OpenVINOModel, "_compile", counted)
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False))
    control = ControlSetting.of(controlnets_openvino[0], _disc(), 0.8)
    pipe("x", steps=2, seed=1, controls=[control])
    first = len(compiled)
    pipe("y", steps=2, seed=2, controls=[control])  # the same residual inputs: the UNet is not compiled again
    pipe("z", steps=2, seed=3)  # none: fed zeros, not compiled again either
    assert first > 0 and len(compiled) == first
