"""Names that stand for a file or folder in a folder sdcpu was given (a LoRA in --lora-dir, a ControlNet in
--controlnet-dir), as prompts and HTTP clients send them: one rule for what such a name may be."""

from __future__ import annotations

MAX_NAME_BYTES = 255  # the longest file name of ext4, XFS, Btrfs, APFS and NTFS


def is_plain_name(name: str, suffix: str = "") -> bool:
    """Whether `name` (+ `suffix`) names an entry of a folder and nothing else: not empty, not `.` or
    `..`, no separator or NUL, and short enough to be a file name (a longer one makes the filesystem
    raise ENAMETOOLONG rather than say it is not there)."""
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and len((name + suffix).encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
    )
