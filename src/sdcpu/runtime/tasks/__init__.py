"""The task registry: every kind of generation the loop runs, by name (runtime/tasks/base.py says what a
task is). A new task is a module here and an entry in `TASKS`.

A model's manifest names the task it was made for (format/schema.py `TASKS`); a task's `runs_on` says
which of those models can run it (a text-to-image model also runs img2img and inpainting by blending).
"""

from __future__ import annotations

from sdcpu.errors import SdcpuError
from sdcpu.runtime.tasks.base import Conditioning, Start, StartInputs, Task, TaskContext
from sdcpu.runtime.tasks.depth2img import DepthToImage
from sdcpu.runtime.tasks.img2img import ImageToImage
from sdcpu.runtime.tasks.inpaint import Inpaint
from sdcpu.runtime.tasks.txt2img import TextToImage
from sdcpu.runtime.tasks.upscale import Upscale

__all__ = [
    "TASKS",
    "Conditioning",
    "DepthToImage",
    "ImageToImage",
    "Inpaint",
    "Start",
    "StartInputs",
    "Task",
    "TaskContext",
    "TextToImage",
    "Upscale",
    "check_task",
]

TASKS: dict[str, type[Task]] = {task.name: task for task in (TextToImage, ImageToImage, Inpaint, Upscale, DepthToImage)}


def check_task(model_task: str, task: Task) -> None:
    """Raise SdcpuError, naming the command to use, when a model made for `model_task` cannot run `task`."""
    if model_task in type(task).runs_on:
        return
    made_for = TASKS.get(model_task)
    runs = f"run it with {made_for.command}" if made_for is not None else "this sdcpu cannot run it"
    raise SdcpuError(f"this model folder holds a model for {model_task}; {runs}")
