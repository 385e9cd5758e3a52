"""A batch on a Ray cluster, with Ray Data (https://docs.ray.io/en/latest/data/): the items to do are a
dataset of one row (and one block) each, mapped by a pool of actors (`ImageMaker`, each loading the model
once) that write the PNGs into the output folder, on a filesystem every node sees. This process, the
driver, keeps `results.jsonl` and `failures.jsonl` as the records stream back, so the resume rules are the
local batch's (records.py): a line is written after its PNG is in place, once per id.

Ray Data restarts an actor whose process dies and retries the tasks it was given (its defaults,
`max_restarts=-1` and `max_task_retries=-1`): the image in flight is made again on the new actor, with
the same bytes, and replaces any file of it (save_png renames a whole file into place; the temporary
file of a killed actor is removed at the end of the run).

Each actor runs its networks on as many threads as it has CPUs (`--cpus-per-worker`). An image's last
bits can depend on the thread count, so every actor has the same count: the same line gives the same
bytes whichever actor makes it, and `sdcpu batch --threads C` makes them in one process."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.batch.local import BatchReport, Progress, Recorder
from sdcpu.batch.prompts import BatchItem
from sdcpu.batch.records import remove_partials
from sdcpu.batch.worker import make_image
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions

CONNECT_TIMEOUT_S = 10.0  # for the TCP check of an address, before Ray is asked to join it
INSTALL = 'pip install "sdcpu[ray]"'


@dataclass(frozen=True)
class RaySettings:
    address: str = "auto"  # "auto": the running cluster (RAY_ADDRESS, or the last `ray start`), else a new one
    workers: int | None = None  # actors; None: one per node
    cpus_per_worker: int | None = None  # None: the smallest node's CPUs, so that each actor fills a node


def import_ray() -> Any:
    """Ray with Ray Data, or SdcpuError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SdcpuError(f"--ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


def check_reachable(address: str) -> None:
    """Refuse an address (HOST:PORT or ray://HOST:PORT) nothing answers on, within CONNECT_TIMEOUT_S:
    asked to join it, Ray retries for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SdcpuError(f"--ray-address {address!r} is not HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise SdcpuError(
            f"cannot reach the Ray cluster at {address} ({reason}); start one with `ray start --head` "
            "there, or leave --ray-address out to start one here"
        ) from None


def join(model: str | Path | None, options: LoadOptions, address: str) -> Any:
    """Ray, joined to the cluster at `address` (or, "auto", the running one, or one started on this
    machine), once the model folder and options are checked here: an actor that cannot load them would
    end the run with Ray's traces."""
    from sdcpu.runtime.pipelines.base import Pipeline

    ray = import_ray()
    Pipeline.check(model, options)
    connect(ray, address)
    return ray


def connect(ray: Any, address: str) -> None:
    """Join the cluster at `address`, or ("auto") the running one, or start one on this machine."""
    check_reachable(address)
    try:
        ray.init(address=None if address == "auto" else address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SdcpuError(f"cannot join the Ray cluster at {address}: {err}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its line per run, not its warnings
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def actor_shape(ray: Any, settings: RaySettings) -> tuple[int, int]:
    """(actors, CPUs each): the settings', or one actor per node with the smallest node's CPUs."""
    nodes = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    nodes = [cpus for cpus in nodes if cpus > 0] or [1]
    cpus = settings.cpus_per_worker or min(nodes)
    if cpus > max(nodes):
        raise SdcpuError(
            f"--cpus-per-worker {cpus}: no node of the cluster has that many CPUs (the largest has {max(nodes)})"
        )
    return settings.workers or len(nodes), cpus


class ImageMaker:
    """A Ray actor: the pipeline loaded once, then one image per row (worker.make_image)."""

    def __init__(self, model: str | None, options: LoadOptions, out: str):
        from sdcpu.runtime.pipelines.base import Pipeline

        self.pipe, self.out = Pipeline.load(model, options), Path(out)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for text in batch["item"]:
            item = BatchItem(**json.loads(text))
            records.append(json.dumps(make_image(self.pipe, item, self.out) | {"worker": self.worker}))
        return {"record": np.array(records, dtype=object)}


def run_ray(
    ray: Any,
    model: str | None,
    options: LoadOptions,
    out: Path,
    todo: list[BatchItem],
    report: BatchReport,
    progress: Progress,
    settings: RaySettings,
) -> BatchReport:
    """Make every item of `todo` on the cluster `ray` has joined (`join`), into `out` (a folder every
    node sees), each record on disk as it comes back. Returns the report."""
    workers, cpus = actor_shape(ray, settings)
    rows = [{"item": json.dumps(asdict(item))} for item in todo]
    # One block per image, so that images spread evenly and a lost actor loses one. Ray Data's defaults
    # for actor pools restart a dead actor and retry its tasks (max_restarts=-1, max_task_retries=-1).
    # Two tasks in flight per actor: the next image is there when one ends, and few wait behind a slow one.
    pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2)
    mapped = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ImageMaker,
        batch_size=1,
        compute=pool,
        num_cpus=cpus,
        fn_constructor_kwargs={"model": model, "options": replace(options, threads=cpus), "out": str(out)},
    )
    recorder = Recorder(out, report)
    try:
        for done, row in enumerate(mapped.iter_rows(), 1):
            record = json.loads(row["record"])
            recorder.add(record)
            progress(done, len(todo), record.get("seconds", 0.0))
    except ray.exceptions.RayError as err:
        stopped = f"the Ray batch stopped: {err}; what was made is kept: run the same command to go on"
        raise SdcpuError(stopped) from None
    finally:
        recorder.close()
        remove_partials(out)  # those of actors killed while they wrote
    return report
