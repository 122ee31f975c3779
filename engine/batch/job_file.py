"""A batch's JOBS file: one prompt a line, or JSON Lines with any `generate` field, expanded over --seeds.

A line that starts with `{` is a JSON job, any other non-blank line a prompt (`#` starts a comment line).
A malformed line is reported with its number and left out; the others run. Every value is checked for its
type here; what the model makes of it (a size it cannot take, say) is the worker's to say, per job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.infotext_values import parse_size

MAX_SEEDS = 1_000_000
TEXT = (str,)
WHOLE = (int,)
NUMBER = (int, float)
JOB_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": TEXT, "negative_prompt": TEXT, "steps": WHOLE, "guidance": NUMBER, "seed": WHOLE, "width": WHOLE,
    "height": WHOLE, "scheduler": TEXT, "schedule_type": TEXT, "strength": NUMBER, "init_image": TEXT,
    "mask": TEXT, "mask_blur": WHOLE, "resize": TEXT, "prompt_syntax": TEXT, "clip_skip": WHOLE, "noise": TEXT,
    "subseed": WHOLE, "subseed_strength": NUMBER, "seed_resize_from": TEXT, "ensd": WHOLE, "emphasis": TEXT,
    "guidance_interval": TEXT,
}
"""`generate`'s per-image options by their Python names (the CLI's flags with _ for -)."""
ALIASES = {"sampler": "scheduler", "cfg_scale": "guidance", "negative": "negative_prompt"}
PATH_FIELDS = ("init_image", "mask")


@dataclass(frozen=True)
class JobLine:
    """One job as the file gives it: its line number and fields (paths made absolute)."""

    line: int
    fields: dict


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds 1-100, 1,5,9 or a mix (1-3,7); None when left out."""
    if text is None:
        return None
    seeds: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise UserError(f"--seeds must be like 1-100 or 1,5,9 (got {text!r})") from None
        if first < 0 or last < first:
            raise UserError(f"--seeds: {part.strip()!r} is not a range of seeds from 0 up")
        seeds.extend(range(first, last + 1))
        if len(seeds) > MAX_SEEDS:
            raise UserError(f"--seeds gives more than {MAX_SEEDS} seeds")
    return seeds


def read_job_file(path: Path) -> tuple[list[JobLine], list[LineError]]:
    """The jobs of a JOBS file and the lines that are not jobs; one UserError for a missing or unreadable file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such jobs file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the jobs file {path}: {exc}") from None
    jobs, errors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            fields = _json_job(line) if line.startswith("{") else {"prompt": raw.rstrip("\r\n")}
            jobs.append(JobLine(number, absolute_paths(fields, path.parent)))
        except ValueError as exc:
            errors.append(LineError(number, str(exc)))
    if not jobs and not errors:
        raise UserError(f"the jobs file {path} holds no jobs (one prompt a line, or one JSON object a line)")
    return jobs, errors


def _json_job(line: str) -> dict:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("a JSON job must be an object, e.g. {\"prompt\": \"a cat\", \"seed\": 7}")
    return check_fields({ALIASES.get(key, key): value for key, value in data.items()})


def check_fields(fields: dict, require_prompt: bool = True) -> dict:
    """Each field known and of its type (a ValueError naming the first that is not); `prompt` required."""
    for key, value in fields.items():
        if key not in JOB_FIELDS:
            raise ValueError(f"unknown field {key!r}; a job takes {', '.join(JOB_FIELDS)}")
        expected = JOB_FIELDS[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, expected)):
            kind = {TEXT: "text", WHOLE: "a whole number", NUMBER: "a number"}[expected]
            raise ValueError(f"{key} must be {kind} (got {json.dumps(value)})")
    if require_prompt and not isinstance(fields.get("prompt"), str):
        raise ValueError("a job needs a \"prompt\"")
    if fields.get("seed_resize_from") is not None:
        parse_size(fields["seed_resize_from"])
    return {key: value for key, value in fields.items() if value is not None}


def absolute_paths(fields: dict, base: Path) -> dict:
    """init_image / mask paths relative to the JOBS file's folder."""
    return fields | {key: str((base / fields[key]).resolve()) for key in PATH_FIELDS if key in fields}
