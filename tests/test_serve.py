"""`sdcpu serve` in-process (FastAPI's test client, loopback only): the native API, A1111 clients'
requests (bodies as A1111's API schema has them), one test per security rule, and a load test."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.runtime.io.infotext import parse_parameters  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402
from sdcpu.serve.app import create_app  # noqa: E402
from sdcpu.serve.limits import ServeLimits  # noqa: E402
from sdcpu.serve.security import check_bind  # noqa: E402

KEY = "correct horse battery staple"
LOCAL = "http://127.0.0.1:7860"  # the Host that a loopback client sends


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(None, LoadOptions(compute_precision="f32"))


@pytest.fixture
def client(pipe):
    with TestClient(create_app(pipe), base_url=LOCAL) as c:
        yield c
        c.app.state.server.queue.close()


def _png(image: Image.Image | None = None, size=(64, 64)) -> str:
    buffer = io.BytesIO()
    (image or Image.new("RGB", size, (200, 30, 30))).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _until(predicate, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def _wait(client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


# --- the native API ------------------------------------------------------------------------------


def test_page_static_files_and_schema_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text  # nothing is loaded from elsewhere
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}/events", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"} <= set(paths)


def test_a_job_streams_progress_and_previews_then_gives_a_png_with_its_settings(client):
    job = client.post("/api/jobs", json={"prompt": "a red circle on the left", "steps": 6, "seed": 5}).json()
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and line != "data: {}":
                events.append(json.loads(line[6:]))
    steps = [e["step"] for e in events if e["status"] == "running"]
    assert steps and max(steps) == 6 and events[-1]["status"] == "done"
    assert any(e["preview"] for e in events)
    preview = client.get(next(e["preview"] for e in events if e["preview"]))
    assert preview.headers["content-type"] == "image/png"
    png = client.get(events[-1]["images"][0])
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (64, 64) and parse_parameters(image.info["parameters"])["seed"] == 5


def test_cancel_stops_the_denoising_loop(client):
    job = client.post("/api/jobs", json={"prompt": "a cat", "steps": 140, "width": 256, "height": 256}).json()
    _until(lambda: client.get(f"/api/jobs/{job['id']}").json()["step"] >= 1)
    client.post(f"/api/jobs/{job['id']}/cancel")
    done = _wait(client, job["id"])
    assert done["status"] == "cancelled" and done["step"] < 140 and done["images"] == []


def test_the_queue_is_bounded(pipe):
    with TestClient(create_app(pipe, ServeLimits(queue=2)), base_url=LOCAL) as client:
        body = {"prompt": "a cat", "steps": 140, "width": 256, "height": 256}
        answers = [client.post("/api/jobs", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert "queue is full" in answers[2].json()["detail"]
        for answer in answers[:2]:
            client.post(f"/api/jobs/{answer.json()['id']}/cancel")
        client.app.state.server.queue.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "x", "scheduler": "heun"}, 422, "unknown scheduler 'heun'"),
        ({"prompt": "x", "width": 90}, 422, "multiples of 4"),
        ({"prompt": "x", "steps": 151}, 422, "151 steps is over this server's limit of 150"),
        ({"prompt": "x", "width": 4096, "height": 64}, 422, "4096x64 is over this server's 2048x2048 limit"),
        ({"prompt": "x", "num_images": 9}, 422, "9 images in one request"),
        ({"prompt": "x" * 17000}, 422, "over this server's limit of 16,384 bytes"),
        ({"prompt": "x", "init_image": "not base64!"}, 422, "not a base64 PNG"),
        ({"prompt": "x", "out": "/etc/passwd"}, 422, "extra"),  # no path is accepted: outputs are the server's
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(client, body, status, message):
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == status and message in json.dumps(answer.json())


def test_a_decompression_bomb_is_refused_from_its_header(client):
    # A PNG header that declares 10000x10000 pixels and holds none: refused from the header alone (decoding
    # it would fail with another message).
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    answer = client.post("/api/jobs", json={"prompt": "x", "init_image": base64.b64encode(bomb).decode()})
    assert answer.status_code == 413 and "10000x10000, over this server's 16-megapixel limit" in answer.json()["detail"]


def test_an_img2img_size_taken_from_its_image_is_within_the_limits(client):
    wide = _png(size=(2200, 64))  # width and height left out: the image's size is used
    answer = client.post("/api/jobs", json={"prompt": "x", "init_image": wide, "steps": 2})
    assert answer.status_code == 422 and "2200x64 is over this server's 2048x2048 limit" in answer.json()["detail"]


def test_only_png_jpeg_and_webp_uploads_are_decoded(client):
    tiff = io.BytesIO()
    Image.new("RGB", (64, 64)).save(tiff, format="TIFF")
    answer = client.post("/api/jobs", json={"prompt": "x", "init_image": base64.b64encode(tiff.getvalue()).decode()})
    assert answer.status_code == 422 and "not a base64 PNG, JPEG or WebP" in answer.json()["detail"]


# --- A1111 clients -------------------------------------------------------------------------------

# As A1111's own API schema and its clients (webuiapi) send them: every field, most at their defaults.
A1111_TXT2IMG = {
    "prompt": "a blue square on the right",
    "negative_prompt": "",
    "styles": [],
    "seed": 42,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": "Euler a",
    "batch_size": 2,
    "n_iter": 1,
    "steps": 8,
    "cfg_scale": 7,
    "width": 64,
    "height": 64,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": 0,
    "denoising_strength": 0,
    "s_min_uncond": 0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {"sd_model_checkpoint": "sdcpu-demo"},
    "override_settings_restore_afterwards": True,
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "enable_hr": False,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "firstphase_width": 0,
    "firstphase_height": 0,
}


def _a1111_images(answer) -> list[Image.Image]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"images", "parameters", "info"}
    return [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in body["images"]]


@pytest.mark.parametrize("body", [A1111_TXT2IMG, {"prompt": "a red circle", "steps": 4}])
def test_a1111_txt2img_with_and_without_optional_fields(client, body):
    answer = client.post("/sdapi/v1/txt2img", json=body)
    images = _a1111_images(answer)
    info = json.loads(answer.json()["info"])
    assert len(images) == body.get("batch_size", 1) and images[0].format == "PNG"
    assert info["infotexts"][0] == images[0].info["parameters"] and len(info["all_seeds"]) == len(images)
    assert info["sampler_name"] == body.get("sampler_name", "Euler")
    if "seed" in body:
        assert info["seed"] == 42 and "Seed: 42" in info["infotexts"][0]


@pytest.mark.parametrize("extra", [{}, {"resize_mode": 0, "denoising_strength": 0.5, "include_init_images": False}])
def test_a1111_img2img_with_and_without_optional_fields(client, extra):
    body = {"prompt": "a red circle", "init_images": [_png()], "steps": 10, **extra}
    answer = client.post("/sdapi/v1/img2img", json=body)
    images = _a1111_images(answer)
    assert images[0].size == (64, 64)
    assert json.loads(answer.json()["info"])["denoising_strength"] == extra.get("denoising_strength", 0.75)


@pytest.mark.parametrize(
    ("sampler", "schedule", "ours"),
    [
        ("DPM++ 2M Karras", None, "Schedule type: Karras"),
        ("DPM++ 2M", "Karras", "Schedule type: Karras"),
        ("Euler a", None, "Sampler: Euler a,"),
        ("DDIM", "Automatic", "Sampler: DDIM,"),
    ],
)
def test_a1111_sampler_names_map_onto_ours(client, sampler, schedule, ours):
    body = {"prompt": "x", "steps": 4, "sampler_name": sampler, **({"scheduler": schedule} if schedule else {})}
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert ours in info["infotexts"][0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sampler_name": "Heun"}, "sdcpu has: DDIM, PNDM, Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, LCM"),
        ({"enable_hr": True}, "enable_hr is not supported"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 31337}}, "eta_noise_seed_delta"),
        ({"override_settings": {"sd_vae": "vae-ft-mse-840000"}}, "sd_vae='vae-ft-mse-840000' is not supported"),
        ({"override_settings": {"sd_model_checkpoint": "v1-5-pruned"}}, "runs sdcpu-demo"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "CLIP_stop_at_last_layers=2 is not supported"),
        ({"styles": ["cinematic"]}, "styles is not supported"),
    ],
)
def test_a1111_requests_sdcpu_cannot_honour_are_refused(client, body, message):
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 4, **body})
    assert answer.status_code == 422 and message in answer.json()["detail"]


def test_a1111_inpainting_mask_is_refused_until_the_mode_exists(client):
    body = {"prompt": "x", "init_images": [_png()], "mask": _png(), "steps": 4}
    answer = client.post("/sdapi/v1/img2img", json=body)
    assert answer.status_code == 422 and "inpainting (mask) is not supported" in answer.json()["detail"]


def test_a1111_models_samplers_options_and_progress(client, pipe):
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "sdcpu-demo" and models[0]["hash"] == pipe.model_hash
    assert "/" not in models[0]["filename"]  # no server path is shown
    assert "DPM++ 2M Karras" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}).status_code == 200
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["sampling_steps"] == 0


def test_a1111_interrupt_returns_what_there_is(client):
    job = client.post("/api/jobs", json={"prompt": "a cat", "steps": 140, "width": 256, "height": 256}).json()
    _until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1)
    assert client.get("/sdapi/v1/progress").json()["current_image"] is not None
    client.post("/sdapi/v1/interrupt")
    done = _wait(client, job["id"])
    assert done["status"] == "done" and done["step"] < 140 and len(done["images"]) == 1


# --- security: one test per rule (docs/serve.md) -------------------------------------------------


def test_binding_beyond_loopback_needs_an_api_key():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", KEY)
    with pytest.raises(SdcpuError, match="pass --api-key KEY"):
        check_bind("0.0.0.0", None)


def test_the_api_key_is_checked_on_every_request(pipe):
    with TestClient(create_app(pipe, api_key=KEY), base_url="http://192.0.2.1:7860") as client:
        for path in ("/", "/api/model", "/sdapi/v1/sd-models"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        basic = base64.b64encode(f"user:{KEY}".encode()).decode()
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"Authorization": f"Basic {basic}"}):
            assert client.get("/api/model", headers=headers).status_code == 200
        assert client.get("/api/model", headers={"X-API-Key": "wrong"}).status_code == 401
        client.app.state.server.queue.close()


def test_a_foreign_origin_cannot_change_state(client):
    body = {"prompt": "x", "steps": 2}
    assert client.post("/api/jobs", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/sdapi/v1/interrupt", headers={"Origin": "null"}).status_code == 403
    assert client.post("/api/jobs", json=body, headers={"Origin": LOCAL}).status_code == 202
    assert client.post("/api/jobs", json=body).status_code == 202  # no Origin: curl, scripts


def test_without_a_key_only_loopback_host_names_are_answered(client):
    # DNS rebinding: a page of evil.example, its name re-pointed at 127.0.0.1, sends its own Host and Origin.
    rebound = {"Host": "evil.example:7860", "Origin": "http://evil.example:7860"}
    assert client.post("/api/jobs", json={"prompt": "x", "steps": 2}, headers=rebound).status_code == 421
    assert client.get("/api/jobs", headers={"Host": "evil.example:7860"}).status_code == 421
    for host in ("localhost:7860", "127.0.0.1", "[::1]:7860"):
        assert client.get("/api/model", headers={"Host": host}).status_code == 200


def test_cross_site_fetches_cannot_change_state(client):
    answer = client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403
    assert client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_request_bodies_are_bounded_before_they_are_read(client):
    def chunks():
        yield b'{"prompt": "x"}'

    assert client.post("/api/jobs", content=chunks()).status_code == 411  # no Content-Length
    big = {"Content-Length": str(30 * 1024 * 1024), "Content-Type": "application/json"}
    assert client.post("/api/jobs", content=b"{}", headers=big).status_code == 413
    # A small declared length over a chunked body of any size: refused, the body unread.
    smuggled = {"Content-Length": "10", "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    assert client.post("/api/jobs", content=chunks(), headers=smuggled).status_code == 411


def test_images_are_served_as_images_never_as_html(client):
    job = _wait(client, client.post("/api/jobs", json={"prompt": "<script>alert(1)</script>", "steps": 2}).json()["id"])
    for url in (job["images"][0], job["preview"]):
        answer = client.get(url)
        assert answer.content.startswith(b"\x89PNG") and answer.headers["content-type"] == "image/png"
        assert answer.headers["x-content-type-options"] == "nosniff"
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


# --- load ------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_fifty_queued_requests_are_answered_or_refused_and_memory_stays_flat(pipe):
    with TestClient(create_app(pipe, ServeLimits(queue=8, kept=16)), base_url=LOCAL) as client:
        rss, accepted = [], 0
        queue = client.app.state.server.queue
        for _round in range(4):
            answers = [client.post("/api/jobs", json={"prompt": f"a cat {i}", "steps": 4}) for i in range(50)]
            assert {a.status_code for a in answers} <= {202, 429} and 202 in {a.status_code for a in answers}
            accepted += sum(a.status_code == 202 for a in answers)
            _until(lambda: queue.current() is None and all(j.status == "done" for j in queue.jobs()))
            assert queue.finished["done"] == accepted and sum(queue.finished.values()) == accepted  # nothing lost
            rss.append(_rss_mb())
        assert len(client.get("/api/jobs").json()) <= 16
        client.app.state.server.queue.close()
    print(f"RSS after each round of 50 requests (MB): {[round(r) for r in rss]}")
    assert rss[-1] - rss[1] < 40, f"RSS by round (MB): {rss}"


def test_an_a1111_client_library_works_unchanged(live_server):
    """webuiapi, a client of A1111's API, against sdcpu serve as it would talk to A1111."""
    webuiapi = pytest.importorskip("webuiapi")
    port = int(live_server.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="DPM++ 2M", scheduler="karras", steps=12)
    result = api.txt2img(prompt="a red circle on the left", seed=3, width=64, height=64)
    assert result.image.size == (64, 64) and "Schedule type: Karras" in result.image.info["parameters"]
    assert result.info["seed"] == 3 and result.info["sampler_name"] == "DPM++ 2M"
    result = api.img2img(
        images=[result.image], prompt="a blue square", denoising_strength=0.6, seed=4, width=64, height=64
    )
    assert result.image.format == "PNG" and result.info["denoising_strength"] == 0.6
