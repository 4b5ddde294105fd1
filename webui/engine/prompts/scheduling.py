"""Prompt editing ``[from:to:when]`` and alternation ``[a|b]``: which text applies at which step.

Syntax (A1111's):

- ``[from:to:when]`` uses ``from`` until step ``when``, then ``to``; ``[to:when]`` adds ``to`` after
  ``when``; ``[from::when]`` removes ``from`` after ``when``.
- ``when`` is a step number, or a fraction of the steps when written with a decimal point (new
  scheduling) or when below 1 (old scheduling). With hires steps, integers count on from the base steps
  and fractions from 1.0, so ``[a:b:1.5]`` switches half-way through the hires pass.
- ``[a|b|c]`` cycles through the options on every step.
- Constructs nest; ``(...)`` groups may contain them. A prompt that does not parse (a stray ``|``) is
  used literally for every step.

The parser is a small recursive descent over the text; bracket groups that do not form a construct are
kept as literal characters at the top level.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN_STOP = "\\[]():|"


@dataclass(frozen=True)
class _Seq:
    parts: tuple[_Node, ...]


@dataclass(frozen=True)
class _Scheduled:
    before: _Seq | None
    after: _Seq
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[_Seq, ...]


_Node = str | _Seq | _Scheduled | _Alternate


class _NoParse(Exception):
    """The prompt has no valid reading (it is then used literally)."""


class _Parser:
    """Recursive-descent parser for one prompt."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> _Seq:
        parts: list[_Node] = []
        while self.pos < len(self.text):
            char = self.peek()
            if char in "([":
                start = self.pos
                group = self.group()
                if group is None:
                    self.pos = start + 1
                    parts.append(char)
                else:
                    parts.append(group)
            elif char in "]):":
                parts.append(char)
                self.pos += 1
            elif char == "|":
                raise _NoParse
            else:
                plain = self.plain()
                if plain is None:
                    raise _NoParse
                parts.append(plain)
        return _Seq(tuple(parts))

    def plain(self) -> str | None:
        """Literal run; a backslash escapes the next character (kept as written)."""
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    break
                self.pos += 2
            elif char in _PLAIN_STOP:
                break
            else:
                self.pos += 1
        return self.text[start : self.pos] if self.pos > start else None

    def inner(self) -> _Seq | None:
        """A sequence inside brackets: no stray brackets, colons or bars."""
        parts: list[_Node] = []
        while True:
            char = self.peek()
            if char == "" or char in "]):|":
                return _Seq(tuple(parts))
            if char in "([":
                group = self.group()
                if group is None:
                    return None
                parts.append(group)
            else:
                plain = self.plain()
                if plain is None:
                    return None
                parts.append(plain)

    def group(self) -> _Node | None:
        """Parse the bracket construct at the cursor, or return None (cursor undefined)."""
        opener = self.peek()
        self.pos += 1
        first = self.inner()
        if first is None:
            return None
        if opener == "(":
            return self.round_rest(first)
        return self.square_rest(first)

    def round_rest(self, first: _Seq) -> _Node | None:
        char = self.peek()
        if char == ")":
            self.pos += 1
            return _Seq(("(", first, ")"))
        if char == ":":
            self.pos += 1
            second = self.inner()
            if second is not None and self.peek() == ")":
                self.pos += 1
                return _Seq(("(", first, ":", second, ")"))
        return None

    def square_rest(self, first: _Seq) -> _Node | None:
        char = self.peek()
        if char == "]":
            self.pos += 1
            return _Seq(("[", first, "]"))
        if char == "|":
            options = [first]
            while self.peek() == "|":
                self.pos += 1
                option = self.inner()
                if option is None:
                    return None
                options.append(option)
            if self.peek() != "]":
                return None
            self.pos += 1
            return _Alternate(tuple(options))
        if char != ":":
            return None
        self.pos += 1
        after_colon = self.pos
        when = self.number_and_close()
        if when is not None:
            return _Scheduled(None, first, when)
        self.pos = after_colon
        second = self.inner()
        if second is None or self.peek() != ":":
            return None
        self.pos += 1
        when = self.number_and_close()
        return None if when is None else _Scheduled(first, second, when)

    def number_and_close(self) -> str | None:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group(1)


def _walk(node: _Node) -> Iterator[_Node]:
    yield node
    if isinstance(node, _Seq):
        for part in node.parts:
            yield from _walk(part)
    elif isinstance(node, _Scheduled):
        if node.before is not None:
            yield from _walk(node.before)
        yield from _walk(node.after)
    elif isinstance(node, _Alternate):
        for option in node.options:
            yield from _walk(option)


@dataclass(frozen=True)
class _StepRule:
    """How a ``when`` value becomes a step number."""

    steps: int
    int_offset: int
    float_offset: float
    old: bool

    def resolve(self, when: str) -> int:
        value = float(when)
        if self.old:
            value = value * self.steps if value < 1 else value
        elif "." in when:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        return min(self.steps, int(value))


def _render(node: _Node, step: int, rule: _StepRule) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, _Seq):
        return "".join(_render(part, step, rule) for part in node.parts)
    if isinstance(node, _Scheduled):
        if step <= rule.resolve(node.when):
            return "" if node.before is None else _render(node.before, step, rule)
        return _render(node.after, step, rule)
    return _render(node.options[(step - 1) % len(node.options)], step, rule)


def _schedule_one(prompt: str, rule: _StepRule) -> list[list[int | str]]:
    try:
        tree = _Parser(prompt).parse()
    except _NoParse:
        return [[rule.steps, prompt]]
    boundaries = {rule.steps}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            at = rule.resolve(node.when)
            if at >= 1:
                boundaries.add(at)
        elif isinstance(node, _Alternate):
            boundaries.update(range(1, rule.steps + 1))
    return [[step, _render(tree, step, rule)] for step in sorted(boundaries)]


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list[int | str]]]:
    """For each prompt, the list of ``[end_at_step, text]`` pairs covering all steps.

    ``text`` applies up to and including ``end_at_step``; the last entry ends at the number of steps
    (``hires_steps`` when given for a hires pass, else ``base_steps``). Example::

        >>> get_learned_conditioning_prompt_schedules(["a [b:3]"], 10)
        [[[3, 'a '], [10, 'a b']]]
    """
    if hires_steps is None or use_old_scheduling:
        rule = _StepRule(base_steps, 0, 0.0, use_old_scheduling)
    else:
        rule = _StepRule(hires_steps, base_steps, 1.0, False)
    cache: dict[str, list[list[int | str]]] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _schedule_one(prompt, rule)
    return [[list(entry) for entry in cache[prompt]] for prompt in prompts]


def prompt_at_step(prompt: str, step: int, steps: int, use_old_scheduling: bool = False) -> str:
    """The text of ``prompt`` in effect at ``step`` (1-based) of ``steps``."""
    schedule = get_learned_conditioning_prompt_schedules([prompt], steps, None, use_old_scheduling)[0]
    for end_at, text in schedule:
        if step <= int(end_at):
            return str(text)
    return str(schedule[-1][1])
