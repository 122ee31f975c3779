"""Automatic1111's prompt syntax: emphasis weights, prompt editing and alternation.

`parse_attention` follows A1111 modules/prompt_parser.py parse_prompt_attention: `(x)` x1.1,
`[x]` /1.1, `(x:w)`, escapes, BREAK. `prompt_schedule` follows its
get_learned_conditioning_prompt_schedules (`[from:to:when]`, `[a|b]`) on a hand-written parser
that accepts what A1111's lark grammar accepts: inside brackets only well-formed syntax, at the
top level any of `[ ] ( ) :` may also stand alone as text; anything else (a stray `|`, a
trailing backslash) leaves the whole prompt literal. Where the grammar lets a bracket be both
(`[a:3]]`), lark's pick follows Python's per-run string hashing, so A1111 itself differs from one
launch to the next; we always take the construct. `schedule_index` / `cond_at_step` are A1111's
reconstruct_cond_batch rule for which entry a denoiser call uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdcpu.engine.errors import UserError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = ("BREAK", -1.0)
_CLOSES = {")": ("(", ROUND_MULTIPLIER), "]": ("[", SQUARE_MULTIPLIER)}

_ATTENTION_TOKEN = re.compile(r"""
    (?P<escape>\\[()\[\]\\]) | (?P<backslash>\\) | (?P<open>[(\[]) |
    (?P<weighted>:\s*(?P<weight>[+-]?[.\d]+)\s*\)) | (?P<close>[)\]]) |
    (?P<text>[^\\()\[\]:]+) | (?P<colon>:)
""", re.X)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.(?:[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)")
_WHITESPACE = re.compile(r"\s+")
_STRAY = set("[]():")


def _text_pieces(text: str) -> list[list]:
    """Plain text as [text, 1.0] pieces, with A1111's ("BREAK", -1) between BREAK-separated parts."""
    pieces = []
    for i, part in enumerate(_BREAK_SPLIT.split(text)):
        if i:
            pieces.append(list(BREAK))
        pieces.append([part, 1.0])
    return pieces


def _scale_from(pieces: list[list], start: int, multiplier: float) -> None:
    for piece in pieces[start:]:
        piece[1] *= multiplier


def _merge_equal_weights(pieces: list[list]) -> list[tuple[str, float]]:
    merged: list[list] = []
    for text, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) fragments of a prompt, adjacent equal weights merged (A1111 parse_prompt_attention)."""
    pieces: list[list] = []
    opened = {"(": [], "[": []}
    for match in _ATTENTION_TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group(0)
        if kind == "escape":
            pieces.append([token[1], 1.0])
        elif kind == "backslash":
            pieces.append(["", 1.0])
        elif kind == "open":
            opened[token].append(len(pieces))
        elif kind == "weighted" and opened["("]:
            _scale_from(pieces, opened["("].pop(), _weight_value(match.group("weight")))
        elif kind == "close" and opened[_CLOSES[token][0]]:
            opener, multiplier = _CLOSES[token]
            _scale_from(pieces, opened[opener].pop(), multiplier)
        else:
            pieces.extend(_text_pieces(token))
    for start in opened["("]:
        _scale_from(pieces, start, ROUND_MULTIPLIER)
    for start in opened["["]:
        _scale_from(pieces, start, SQUARE_MULTIPLIER)
    return _merge_equal_weights(pieces or [["", 1.0]])


def _weight_value(text: str) -> float:
    """The number of `(x:w)`; A1111 fails the generation on one float() cannot read, so do we."""
    try:
        return float(text)
    except ValueError:
        raise UserError(f"bad emphasis weight {text!r} in prompt: expected a number as in (word:1.2)") from None


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`: `before` up to step `when`, `after` from then on."""

    before: tuple
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternation:
    """`[a|b|c]`: option (step - 1) % count at each step."""

    options: tuple


class _Malformed(Exception):
    """The prompt is not in A1111's grammar at all: it is used as written."""


class _NoStructure(Exception):
    """No bracket construct starts here."""


class _ScheduleParser:
    """Recursive descent over A1111's prompt-editing grammar; nodes are str, _Edit or _Alternation."""

    def __init__(self, text: str):
        self.text = text
        self._constructs: dict[int, tuple[list, int] | None] = {}

    def top_level(self) -> list:
        """The whole prompt, preferring a bracket construct to a stray bracket wherever both parse."""
        n = len(self.text)
        parses: list = [None] * n + [([], n)]
        for pos in range(n - 1, -1, -1):  # from the end, so inner constructs are known before outer ones
            parses[pos] = self._top_level_at(pos, parses)
        if parses[0] is None:
            raise _Malformed
        nodes, pos = [], 0
        while pos < n:
            step_nodes, pos = parses[pos]
            nodes.extend(step_nodes)
        return nodes

    def _top_level_at(self, pos: int, parses: list) -> tuple[list, int] | None:
        """(nodes, next position) of the preferred parse of text[pos:] at the top level, or None."""
        char = self.text[pos]
        if char in "([":
            try:
                nodes, end = self._construct(pos)
                if parses[end] is not None:
                    return nodes, end
            except _NoStructure:
                pass
        if char == "|":
            return None
        end = pos + 1 if char in _STRAY else self._plain_end(pos)
        return ([self.text[pos:end]], end) if end is not None and parses[end] is not None else None

    def _plain_end(self, pos: int) -> int | None:
        """End of the plain character or escape (`\\` + any char but a newline) at pos, None if bad."""
        if self.text[pos] != "\\":
            return pos + 1
        return pos + 2 if pos + 1 < len(self.text) and self.text[pos + 1] != "\n" else None

    def _prompt(self, pos: int) -> tuple[list, int]:
        """Nodes up to the next `] ) : |` outside any construct."""
        nodes = []
        while pos < len(self.text) and self.text[pos] not in "]):|":
            if self.text[pos] in "([":
                inner, pos = self._construct(pos)
                nodes.extend(inner)
                continue
            end = self._plain_end(pos)
            if end is None:
                raise _NoStructure
            nodes.append(self.text[pos:end])
            pos = end
        return nodes, pos

    def _at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _expect(self, pos: int, char: str) -> int:
        if self._at(pos) != char:
            raise _NoStructure
        return pos + 1

    def _construct(self, pos: int) -> tuple[list, int]:
        """(nodes, end) of the `( )` or `[ ]` construct at pos, each position parsed once."""
        if pos not in self._constructs:
            try:
                self._constructs[pos] = self._parse_construct(pos)
            except _NoStructure:
                self._constructs[pos] = None
        if self._constructs[pos] is None:
            raise _NoStructure
        return self._constructs[pos]

    def _parse_construct(self, pos: int) -> tuple[list, int]:
        if self.text[pos] == "(":
            return self._emphasis(pos)
        first, pos = self._prompt(pos + 1)
        separator = self._at(pos)
        if separator == "]":
            return ["[", *first, "]"], pos + 1
        if separator == "|":
            return self._alternation(first, pos)
        if separator == ":":
            return self._edit(first, pos + 1)
        raise _NoStructure

    def _emphasis(self, pos: int) -> tuple[list, int]:
        """`(x)` or `(x:y)`, kept as written: the weights are parse_attention's business."""
        first, pos = self._prompt(pos + 1)
        if self._at(pos) != ":":
            return ["(", *first, ")"], self._expect(pos, ")")
        second, pos = self._prompt(pos + 1)
        return ["(", *first, ":", *second, ")"], self._expect(pos, ")")

    def _alternation(self, first: list, pos: int) -> tuple[list, int]:
        options = [tuple(first)]
        while self._at(pos) == "|":
            option, pos = self._prompt(pos + 1)
            options.append(tuple(option))
        return [_Alternation(tuple(options))], self._expect(pos, "]")

    def _edit(self, first: list, pos: int) -> tuple[list, int]:
        """After `[first:`: either `when]` (first is the `to` part) or `to:when]`."""
        when = self._when(pos)
        if when is not None:
            return [_Edit((), tuple(first), when[0])], when[1]
        second, pos = self._prompt(pos)
        when = self._when(self._expect(pos, ":"))
        if when is None:
            raise _NoStructure
        return [_Edit(tuple(first), tuple(second), when[0])], when[1]

    def _when(self, pos: int) -> tuple[str, int] | None:
        """(number text, end) of `[space]number[space]]` at pos, or None."""
        number = _NUMBER.match(self.text, self._skip_space(pos))
        if number is None:
            return None
        end = self._skip_space(number.end())
        return (number.group(0), end + 1) if self._at(end) == "]" else None

    def _skip_space(self, pos: int) -> int:
        space = _WHITESPACE.match(self.text, pos)
        return space.end() if space else pos


def _walk(nodes):
    """Every node, nested ones included."""
    for node in nodes:
        yield node
        if isinstance(node, _Edit):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternation):
            for option in node.options:
                yield from _walk(option)


def _edit_step(when: str, steps: int, hires_offset: int | None, old_scheduling: bool) -> int:
    """A1111's step for `when`: with a "." a fraction of the steps, else a step count; truncated."""
    value = float(when)
    if old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in when:
        value = (value - (1.0 if hires_offset is not None else 0.0)) * steps
    else:
        value -= hires_offset or 0
    return int(max(min(value, steps), -1.0))


def _text_at(nodes, step: int, edit_steps: dict) -> str:
    """The prompt as it reads at `step` (edit_steps: each _Edit's last step of `before`)."""
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            parts.append(_text_at(node.before if step <= edit_steps[id(node)] else node.after, step, edit_steps))
        else:
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, edit_steps))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    old_scheduling: bool = False) -> list[tuple[int, str]]:
    """[(last step, prompt text)] for one prompt (A1111 get_learned_conditioning_prompt_schedules).

    `hires_steps` schedules A1111's hires pass (whole numbers past `steps`, fractions past 1.0);
    `old_scheduling` is its "use old prompt editing timelines" option (`when` < 1 is a fraction).
    """
    hires_offset = None if hires_steps is None or old_scheduling else steps
    total = steps if hires_offset is None else hires_steps
    try:
        return _schedule(_ScheduleParser(prompt).top_level(), total, hires_offset, old_scheduling)
    except (_Malformed, RecursionError):  # not A1111 syntax, or nested deeper than Python's stack
        return [(total, prompt)]


def _schedule(nodes: list, total: int, hires_offset: int | None, old_scheduling: bool) -> list[tuple[int, str]]:
    """The text at every step where some edit switches, or at every step with an alternation."""
    edit_steps, ends = {}, {total}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            edit_steps[id(node)] = _edit_step(node.when, total, hires_offset, old_scheduling)
            if edit_steps[id(node)] >= 1:
                ends.add(edit_steps[id(node)])
        elif isinstance(node, _Alternation):
            ends.update(range(1, total + 1))
    return [(end, _text_at(nodes, end, edit_steps)) for end in sorted(ends)]


def schedule_index(schedule: list[tuple[int, object]], step: int) -> int:
    """Index of the first entry whose last step is >= step, else 0 (A1111 reconstruct_cond_batch).

    `step` is A1111's denoiser call counter: 0 on the first call, so "a [b:3]" uses "a " for
    calls 0..3. Schedules are built for A1111's total_steps (twice the steps for 2nd-order samplers).
    """
    return next((i for i, (end, _) in enumerate(schedule) if step <= end), 0)


def cond_at_step(schedule: list[tuple[int, object]], step: int):
    """The value (text or conditioning) of the entry A1111 uses at denoiser call `step`."""
    return schedule[schedule_index(schedule, step)][1]
