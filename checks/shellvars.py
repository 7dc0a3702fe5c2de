"""A static reader of shell files that only set variables (``/etc/default/grub`` and its drop-ins).

grub-mkconfig *sources* these files with ``/bin/sh``; this module evaluates what a reader can
evaluate without running anything, and says "not evaluated" for the rest instead of guessing:

  - ``KEY=value``, ``KEY="..."`` (``$KEY``/``${KEY}`` expanded, ``\\`` escapes), ``KEY='...'``,
    several assignments on a line, ``export KEY=...``, ``;`` separators, ``#`` comments and
    backslash-newline continuations; assignment values are not field-split (POSIX 2.9.1);
  - a value holding command substitution (``$(...)``, backquotes), a ``${KEY<op>...}`` form or a
    special parameter is *not evaluated*, as is any assignment inside ``if``/``case``/``for``/
    ``while``/``until`` (it may or may not run);
  - a command runs in its own process and cannot set the sourcing shell's variables, except the
    builtins in :data:`MUTATORS` (``.``, ``eval``, ``unset``, ...) and function definitions:
    after one of those every variable not assigned again is *not evaluated*.

References: POSIX.1-2017 Shell Command Language 2.2 (quoting), 2.6.2 (parameter expansion),
2.9.1 (simple commands, assignments), 2.14 (special built-ins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
OPERATORS = ";&|<>()\n"
#: builtins that can change the sourcing shell's variables (or stop the sourcing)
MUTATORS = frozenset({".", "source", "eval", "read", "unset", "set", "readonly", "declare",
                      "typeset", "local", "shift", "getopts", "mapfile", "readarray", "return",
                      "exit", "exec"})
OPEN = frozenset({"if", "case", "for", "while", "until"})
CLOSE = frozenset({"fi", "esac", "done"})
PREFIX = frozenset({"then", "else", "elif", "do", "!", "{", "}"})


@dataclass(frozen=True)
class Value:
    """A variable's value after sourcing, and the assignment that gave it."""

    text: str | None          #: None: not evaluated
    path: str
    line: int
    why: str = ""             #: why it was not evaluated

    @property
    def evidence(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class ShellVars:
    """Variables of the files sourced so far, in order (later assignments win)."""

    values: dict[str, Value] = field(default_factory=dict)
    #: set once a command that may change any variable was met: (path, line, reason)
    opaque: Value | None = None
    functions: set[str] = field(default_factory=set)

    def get(self, name: str) -> Value | None:
        v = self.values.get(name)
        if v is None and self.opaque is not None:
            return self.opaque
        return v

    def source(self, text: str, path: str) -> None:
        """Evaluate ``text`` (the content of ``path``) as sourced after the files before it."""
        _Reader(self, text, path).run()


class _Unevaluated(Exception):
    pass


class _Reader:
    def __init__(self, env: ShellVars, text: str, path: str) -> None:
        self.env, self.s, self.path = env, text, path
        self.i, self.line, self.depth = 0, 1, 0

    # -- characters --------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def take(self) -> str:
        c = self.peek()
        self.i += 1
        if c == "\n":
            self.line += 1
        return c

    def skip_blanks(self) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t"):
                self.take()
            elif c == "\\" and self.peek(1) == "\n":
                self.take(), self.take()
            elif c == "#":
                while self.peek() not in ("", "\n"):
                    self.take()
            else:
                return

    # -- commands ------------------------------------------------------------------------------
    def run(self) -> None:
        while self.i < len(self.s):
            self.skip_blanks()
            if self.peek() == "(":          # a subshell: its assignments do not persist
                self.balanced("(", ")")
            elif self.peek() in ("", *OPERATORS):
                self.take()
            else:
                self.command()

    def command(self) -> None:
        line, saved = self.line, dict(self.env.values)
        words: list[tuple[str, str | None, str]] = []      # (raw, value | None, why)
        prefix = True        # leading assignments are performed left to right (POSIX 2.9.1)
        while True:
            self.skip_blanks()
            if self.peek() in ("", *OPERATORS):
                break
            words.append(self.word())
            while words and words[0][0] in PREFIX:
                words.pop(0)
            if not words:
                continue
            if prefix and ASSIGN.match(words[-1][0]) and words[0][0] != "export":
                self.assign(words[-1:], line)
            else:
                prefix = False
        if not words:
            return
        first = words[0][0]
        n = next((k for k, w in enumerate(words) if not ASSIGN.match(w[0])), len(words))
        if n < len(words) and n:          # assignments before a command are the command's own
            self.env.values = saved
            first = words[n][0]
        if first in OPEN:
            self.depth += 1
        elif first in CLOSE:
            self.depth = max(0, self.depth - 1)
        elif first == "export":
            self.assign(words[1:], line, exported=True)
        elif self.s.startswith("()", self.i) and NAME.fullmatch(first):
            self.define(first)
        elif first in MUTATORS or first in self.env.functions:
            self.mutate(first, line)

    def define(self, name: str) -> None:
        """Skip a function definition's body; calling the function is then a mutator."""
        self.env.functions.add(name)
        self.take(), self.take()
        while self.peek() in (" ", "\t", "\n"):
            self.take()
        if self.peek() in ("{", "("):
            self.balanced(self.peek(), "}" if self.peek() == "{" else ")")

    def assign(self, words: list[tuple[str, str | None, str]], line: int,
               exported: bool = False) -> None:
        for raw, value, why in words:
            m = ASSIGN.match(raw)
            if not m:
                if exported and raw.startswith("-"):
                    self.mutate(f"export {raw}", line)
                continue
            if value is not None and self.depth:
                value, why = None, "assigned inside a conditional or loop"
            if value is not None:
                value = value[len(m.group(0)):]
            self.env.values[m.group(1)] = Value(value, self.path, line, why)

    def mutate(self, what: str, line: int) -> None:
        why = f"'{what}' may change any variable"
        self.env.opaque = Value(None, self.path, line, why)
        for k, v in self.env.values.items():
            self.env.values[k] = Value(None, self.path, line, why) if v.text is not None else v

    # -- words ------------------------------------------------------------------------------------
    def word(self) -> tuple[str, str | None, str]:
        start, out, why = self.i, [], ""
        while True:
            c = self.peek()
            if c in ("", " ", "\t", *OPERATORS):
                break
            try:
                if c == "\\":
                    self.take()
                    nxt = self.take()
                    out.append("" if nxt == "\n" else nxt)
                elif c == "'":
                    self.take()
                    out.append(self.until("'"))
                elif c == '"':
                    self.take()
                    out.append(self.double_quoted())
                else:
                    out.append(self.dollar() if c in "$`" else self.take())
            except _Unevaluated as e:
                why = why or str(e)
        raw = self.s[start:self.i]
        return raw, (None if why else "".join(out)), why

    def until(self, end: str) -> str:
        j = self.s.find(end, self.i)
        j = len(self.s) if j < 0 else j
        text = self.s[self.i:j]
        while self.i < j + 1 and self.i < len(self.s):
            self.take()
        return text

    def double_quoted(self) -> str:
        out, why = [], ""
        while self.peek() not in ("", '"'):
            c = self.peek()
            try:
                if c == "\\" and self.peek(1) in ('$', '`', '"', '\\', '\n'):
                    self.take()
                    nxt = self.take()
                    out.append("" if nxt == "\n" else nxt)
                elif c in "$`":
                    out.append(self.dollar())
                else:
                    out.append(self.take())
            except _Unevaluated as e:
                why = why or str(e)
        self.take()
        if why:
            raise _Unevaluated(why)
        return "".join(out)

    def dollar(self) -> str:
        if self.take() == "`":
            self.until("`")
            raise _Unevaluated("command substitution")
        c = self.peek()
        if c == "(":
            self.balanced("(", ")")
            raise _Unevaluated("command substitution")
        if c == "{":
            self.take()
            body = self.until("}")
            if NAME.fullmatch(body):
                return self.lookup(body)
            raise _Unevaluated(f"parameter expansion ${{{body}}}")
        m = NAME.match(self.s, self.i)
        if m:
            for _ in m.group(0):
                self.take()
            return self.lookup(m.group(0))
        if c and c in "0123456789?#@*!$-":
            self.take()
            raise _Unevaluated(f"special parameter ${c}")
        return "$"

    def lookup(self, name: str) -> str:
        v = self.env.get(name)
        if v is None:
            return ""
        if v.text is None:
            raise _Unevaluated(f"${name} is not evaluated ({v.evidence}: {v.why})")
        return v.text

    def balanced(self, open_: str, close: str) -> None:
        depth = 0
        while self.peek():
            c = self.take()
            depth += (c == open_) - (c == close)
            if depth == 0:
                return
