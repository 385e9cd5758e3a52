"""`sdcpu batch --ray` on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster): 40 prompts on
two actors, one of them killed mid-batch, give every id once, with the bytes of the local batch; and a batch
that cannot reach its cluster, or has no Ray, says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.cli.main import app

pytestmark = pytest.mark.slow
STEPS = "8"


def _prompts(path: Path, count: int) -> Path:
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle", "star", "ring"]
    lines = [{"prompt": f"a {colours[i % 4]} {shapes[i % 5]}", "seed": i} for i in range(count)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _images(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, one CPU each: two actors of one CPU, one per node."""
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "include_dashboard": False}
    made = Cluster(initialize_head=True, head_node_args=node)
    made.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    made.wait_for_nodes()
    yield made
    made.shutdown()


def test_forty_prompts_on_two_nodes_with_an_actor_killed_give_every_id_once_with_the_local_bytes(cluster, tmp_path):
    prompts = _prompts(tmp_path / "prompts.jsonl", 40)
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "sdcpu", "batch", str(prompts), "--steps", STEPS, "--out"]
    run = subprocess.Popen([*command, str(out), "--ray", "--ray-address", cluster.address], stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(records := _results(out)) < 4:
        assert time.time() < deadline and run.poll() is None, "the batch ended before an actor could be killed"
        time.sleep(0.01)
    workers = {record["worker"] for record in records}
    victim = int(sorted(workers)[0].rpartition(":")[2])
    os.kill(victim, signal.SIGKILL)
    assert run.wait(timeout=240) == 0, run.stderr.read().decode()
    results = _results(out)
    assert len(results) == 40 and len({r["id"] for r in results}) == 40
    assert len({r["worker"] for r in results}) >= 3, "the killed actor was not replaced by a new process"
    assert not list(out.glob("*.partial"))
    # The same list in this process, on as many threads as an actor has CPUs: the same bytes. (An image's
    # last bits can depend on the thread count, here as on real models.)
    local = subprocess.run([*command, str(tmp_path / "local"), "--threads", "1"], capture_output=True)
    assert local.returncode == 0, local.stderr.decode()
    assert _images(out) == _images(tmp_path / "local") and len(_images(out)) == 40


def test_an_unreachable_cluster_is_a_clear_error_at_once(tmp_path):
    pytest.importorskip("ray.data")
    prompts = _prompts(tmp_path / "prompts.jsonl", 2)
    started = time.perf_counter()
    result = CliRunner().invoke(
        app, ["batch", str(prompts), "--out", str(tmp_path / "o"), "--ray", "--ray-address", "127.0.0.1:1"]
    )
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert time.perf_counter() - started < 30
    assert not list((tmp_path / "o").glob("*.png"))


def test_ray_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    prompts = _prompts(tmp_path / "prompts.jsonl", 2)
    result = CliRunner().invoke(app, ["batch", str(prompts), "--out", str(tmp_path / "o"), "--ray"])
    assert result.exit_code == 2 and 'pip install "sdcpu[ray]"' in result.output


def test_ray_options_without_ray_are_refused(tmp_path):
    prompts = _prompts(tmp_path / "prompts.jsonl", 2)
    result = CliRunner().invoke(app, ["batch", str(prompts), "--out", str(tmp_path / "o"), "--workers", "2"])
    assert result.exit_code == 2 and "--workers: for a batch on Ray; add --ray" in result.output
