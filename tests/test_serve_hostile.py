"""The server against hostile request bodies: each class of the hostile-inputs battery that reaches it
(non-finite numbers, nesting, negative counts, options, broken, 16-bit and rotated uploads, PNG
metadata), then hypothesis: A1111's txt2img and img2img and the native /api/jobs, 500 bodies each, built
from their schemas with hostile values (NaN and Infinity as JSON numbers, huge and negative integers,
wrong types, nesting, broken and oversized images, names that are paths or too long). No answer is a
500, every answer is valid JSON, and the server still answers afterwards. Bodies that are valid run on
the demo model, under limits that keep them to 64x64 and 2 steps."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.bench.bad_files import broken_png, exif_rotated_jpeg, png_with_text  # noqa: E402
from sdcpu.bench.battery import png_header  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402
from sdcpu.serve import a1111  # noqa: E402
from sdcpu.serve.app import create_app  # noqa: E402
from sdcpu.serve.limits import ServeLimits  # noqa: E402

pytestmark = pytest.mark.slow
STATUSES: dict[str, list[int]] = {}  # the answers, by path
LIMITS = ServeLimits(max_width=64, max_height=64, max_steps=2, max_images=2)
CHEAP = st.just(1)  # steps and images of a valid body: every example reaches the generation, cheaply


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(mode: str = "RGB", size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = st.sampled_from(
    [
        _b64(_png()),
        "data:image/png;base64," + _b64(_png()),
        _b64(_png("I;16")),
        _b64(_png("RGB", (32, 48))),
        _b64(broken_png()),
        _b64(png_header(10_000, 10_000)),
        _b64(b"GIF89a not really"),
        "not base64!",
        "",
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2, -1, 64, 63, 2**63, float("nan"), float("inf"), float("-inf"), 1e308, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
ANY = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=20) | IMAGES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
TEXT = st.text(max_size=30) | st.sampled_from(
    ["a red circle", "\x00\x1b[31m", "<lora:../x:1>", f"<lora:{'n' * 3000}:1>", "Euler", "karras"]
)


def _bodies(valid: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """Bodies that are mostly valid (so that the checks past validation, the generation and the answer
    are reached), with up to two fields, known or not, replaced by anything at all."""
    base = st.fixed_dictionaries({}, optional=valid)
    hostile = st.dictionaries(st.sampled_from([*valid, "extra", "include_init_images"]), ANY, max_size=2)
    return st.tuples(base, hostile).map(lambda parts: parts[0] | parts[1])


GOOD_IMAGE = _b64(_png())
NAMES = st.sampled_from(["edges", "edges [00000000]", "None", "nope", "n" * 5000, "/etc", "../edges", "x\0y"])
UNIT = _bodies({"model": NAMES, "image": st.just(GOOD_IMAGE), "weight": st.sampled_from([0.5, 1])})
UNIT_FIELDS = {"module": st.sampled_from(["canny", "none"]), "guidance_start": st.just(0.2), "control_mode": st.just(1)}
SCRIPTS = st.fixed_dictionaries({"controlnet": st.fixed_dictionaries({"args": st.lists(UNIT, max_size=2)})})
A1111 = {
    "prompt": TEXT,
    "negative_prompt": TEXT,
    "seed": st.sampled_from([-1, 0, 5]),
    "steps": CHEAP,
    "cfg_scale": st.sampled_from([1.0, 7.5]),
    "width": st.just(64),
    "height": st.just(64),
    "batch_size": CHEAP,
    "n_iter": st.just(1),
    "sampler_name": st.sampled_from(["Euler", "DDIM", "Euler a", "DPM++ 2M"]),
    "scheduler": st.sampled_from(["Automatic", "Karras"]),
    "override_settings": st.just({"CLIP_stop_at_last_layers": 1}),
    "alwayson_scripts": SCRIPTS,
}
IMG2IMG = A1111 | {"init_images": st.lists(IMAGES, min_size=1, max_size=1), "denoising_strength": st.just(0.5)}
JOBS = {
    "prompt": TEXT,
    "steps": CHEAP,
    "guidance": st.sampled_from([1.0, 7.5]),
    "seed": st.sampled_from([0, 5]),
    "width": st.just(64),
    "num_images": CHEAP,
    "scheduler": st.sampled_from(["euler", "ddim"]),
    "init_image": IMAGES,
    "strength": st.just(0.5),
    "controls": st.lists(_bodies({"model": NAMES, "image": st.just(GOOD_IMAGE)} | UNIT_FIELDS), max_size=1),
}
RAW = st.sampled_from(["", "{", "[]", "null", '"x"', "[" * 50_000, '{"prompt": "a", "steps": NaN}', "\udcff"])
FUZZ = settings(
    max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)


@pytest.fixture(scope="module")
def client():
    a1111.POLL_S, polled = 0.002, a1111.POLL_S  # A1111's answers wait for their job: check it often here
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32"))
    with TestClient(create_app(pipe, LIMITS), base_url="http://127.0.0.1:7860") as c:
        yield c
        c.app.state.server.queue.close()
    a1111.POLL_S = polled


def _refused(client, path: str, text: str, message: str, status: int = 422) -> None:
    answer = client.post(path, content=text.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == status and message in answer.text, answer.text[:500]
    json.loads(answer.text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a", "steps": NaN}', "NaN is not a number JSON allows"),  # a field that fails validation
        ('{"prompt": "a", "steps": 1, "styles_x": Infinity}', "Infinity is not a number JSON allows"),  # echoed
        ('{"prompt": "a", "cfg_scale": 1e400}', "the number 1e400 is out of range"),
        ('{"prompt": ' + "[" * 40 + "]" * 40 + "}", "nests 41 levels deep, over the limit of 32"),
        ('{"prompt": "a", "batch_size": -2, "n_iter": -1}', "greater than or equal to 1"),  # not 2 images
        ('{"prompt": "a", "batch_size": 0}', "greater than or equal to 1"),
    ],
)
def test_hostile_a1111_bodies_are_422s_with_valid_json(client, text, message):
    _refused(client, "/sdapi/v1/txt2img", text, message)


def test_jobs_refuse_non_finite_numbers_and_zero_counts(client):
    _refused(client, "/api/jobs", '{"prompt": "a", "guidance": -Infinity}', "-Infinity is not a number")
    _refused(client, "/api/jobs", '{"prompt": "a", "num_images": 0}', "greater than or equal to 1")
    _refused(client, "/api/jobs", '{"prompt": "a", "deep_cache": -3}', "greater than or equal to 1")


def test_options_refuse_what_override_settings_refuses_with_the_same_message(client):
    for setting, value in [("CLIP_stop_at_last_layers", 2), ("samples_format", "jpg"), ("sd_vae", "x.pt")]:
        options = client.post("/sdapi/v1/options", json={setting: value})
        body = {"prompt": "a", "steps": 1, "override_settings": {setting: value}}
        override = client.post("/sdapi/v1/txt2img", json=body)
        assert options.status_code == override.status_code == 422
        assert options.json()["detail"] == override.json()["detail"]
        assert f"the setting {setting}={value!r} is not supported" in options.json()["detail"]
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_uploads_are_read_by_the_one_image_reader(client):
    limits = client.app.state.server.limits
    grey = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # 16-bit mid-grey
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    assert np.asarray(limits.decode_image(_b64(buffer.getvalue())))[0, 0, 0] == 128  # scaled, not white
    upright = np.asarray(limits.decode_image(_b64(exif_rotated_jpeg())))
    assert upright.shape == (16, 8, 3) and upright[:8].mean() > 200  # the white half on top
    body = json.dumps({"prompt": "a", "steps": 1, "init_images": [_b64(broken_png())]})
    _refused(client, "/sdapi/v1/img2img", body, "broken PNG file")


def test_png_info_reads_settings_through_the_stored_settings_check(client):
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "seed": 3}).json()
    info = client.post("/sdapi/v1/png-info", json={"image": made["images"][0]}).json()
    assert info["parameters"] | {"Prompt": "a red circle", "Steps": 2, "Seed": 3} == info["parameters"]
    assert info["info"].startswith("a red circle\nSteps: 2")
    for chunk, message in [("[1]", "a JSON list, not an object"), ('{"steps": "2"}', "not a whole number")]:
        hostile = _b64(png_with_text(sdcpu=chunk))
        _refused(client, "/sdapi/v1/png-info", json.dumps({"image": hostile}), message)


@pytest.mark.parametrize(
    "path, text, message",
    [  # a lone surrogate, escaped in JSON: no answer can be written with it, so the body is refused
        ("/api/jobs", '{"\\udcff": 1}', "not Unicode"),
        ("/sdapi/v1/txt2img", '{"prompt": "a <lora:night:\\udcff>"}', "not Unicode"),
        ("/sdapi/v1/txt2img", '{"prompt": "a", "steps": 1, "x": "\\udcff"}', "not Unicode"),  # the echo
        (
            "/sdapi/v1/img2img",
            '{"prompt": "a", "steps": 1, "init_images": ["data:nocomma"]}',
            "init image is not a base64",
        ),
        ("/sdapi/v1/png-info", '{"image": "data:"}', "image is not a base64"),
        (
            "/sdapi/v1/img2img",
            '{"prompt": "a", "steps": 1, "init_images": [""]}',
            "init image is not a base64",
        ),  # not txt2img
        ("/api/jobs", '{"prompt": "a", "init_image": ""}', "init image is not a base64"),
        ("/controlnet/detect", json.dumps({"controlnet_input_images": [GOOD_IMAGE] * 4}), "at most 3 items"),
    ],
)
def test_bodies_found_by_trying_are_422s(client, path, text, message):
    _refused(client, path, text, message)


def test_names_that_took_quadratic_time_are_refused_at_once(client):
    # A ControlNet title of 300 KB of spaces took 82 s before its pattern was bounded; a tag of 2,000
    # "<lora:" is not a tag, and said so.
    slow = {"model": "a" + " " * 300_000 + "x", "image": GOOD_IMAGE}
    _refused(client, "/api/jobs", json.dumps({"prompt": "a", "controls": [slow]}), "not by a path")
    _refused(client, "/api/jobs", json.dumps({"prompt": "<lora:" * 2000}), "a LoRA tag sdcpu cannot read")
    _refused(client, "/api/jobs", json.dumps({"prompt": "a" + " <lora:night:60>" * 2}), "add up to 120")


def test_host_names_are_case_insensitive_and_a_closing_server_refuses_new_jobs(pipe_for_close):
    with TestClient(create_app(pipe_for_close, LIMITS), base_url="http://LOCALHOST:7860") as c:
        assert c.get("/api/model").status_code == 200
        c.app.state.server.queue.close()
        answer = c.post("/api/jobs", json={"prompt": "a", "steps": 1})
        assert answer.status_code == 429 and "shutting down" in answer.json()["detail"]


@pytest.fixture(scope="module")
def pipe_for_close():
    return Pipeline.load(None, LoadOptions(compute_precision="f32"))


def _post(client, path: str, body: object) -> None:
    text = body if isinstance(body, str) else json.dumps(body, allow_nan=True)
    answer = client.post(
        path, content=text.encode("utf-8", "surrogatepass"), headers={"content-type": "application/json"}
    )
    assert answer.status_code < 500, f"{path} {answer.status_code}: {answer.text[:500]} for {text[:300]}"
    json.loads(answer.text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
    if path == "/api/jobs" and answer.status_code == 202:  # wait, so that the queue never fills
        job = answer.json()["id"]
        while client.get(f"/api/jobs/{job}").json()["status"] in ("queued", "running"):
            pass


@FUZZ
@given(body=_bodies(A1111) | RAW)
def test_txt2img_never_answers_500(client, body):
    _post(client, "/sdapi/v1/txt2img", body)


@FUZZ
@given(body=_bodies(IMG2IMG) | RAW)
def test_img2img_never_answers_500(client, body):
    _post(client, "/sdapi/v1/img2img", body)


@FUZZ
@given(body=_bodies(JOBS) | RAW)
def test_jobs_never_answer_500(client, body):
    _post(client, "/api/jobs", body)


def test_the_server_still_answers_after_the_fuzzing(client):
    # The fuzzing reached past validation: some bodies ran, others were refused.
    for path, statuses in STATUSES.items():
        assert {200, 202} & set(statuses) and {422} & set(statuses), (path, sorted(set(statuses)))
    assert client.get("/api/model").status_code == 200
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 64, "height": 64})
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1
