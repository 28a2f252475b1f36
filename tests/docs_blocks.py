"""The fenced code blocks of README.md and docs/*.md, and what the docs tests do with each.

tests/unit/test_docs.py (quick tier) checks every block without running anything long:
python blocks compile and use only public `app.*` names; yaml blocks are configs that
validate (a fragment is merged into configs/quickstart.yaml's tree first); every command of
a bash block is checked: a `raytab ...` / `python -m app ...` line parses with the CLI's own
parser (`app.cli.build_parser`), its `--config` file (when it is one of the repo's) loads
with its `--set` overrides, every repo path it names exists, a `scripts/*.sh` it runs is
executable, and a `pip install 'raytab[EXTRA]'` names a declared extra. text blocks are
listings and outputs: not checked.

tests/e2e/test_docs_run.py (slow tier) runs them: page by page, README.md first, in one
temporary folder holding copies of configs/ and data/, each page's python blocks as one
program, then each runnable command of its bash blocks.

Blocks and commands that are only parsed, never run:
- a block right after a `<!-- not run: REASON -->` line (cluster set-up, installs, long
  benchmarks, a service on every interface): the reason is in the page, beside the block;
- in any block, the commands of NOT_RUN_COMMANDS, for the reasons given there;
- every command that is not `raytab` / `python -m app` (scripts, ray, pip, ...): only its
  paths are checked; except in a block after a `<!-- run against the service above -->`
  line, which runs as a whole (curl) while the page's `serve` runs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

LANGS = {"python": "python", "bash": "bash", "sh": "bash", "console": "bash", "shell": "bash",
         "yaml": "yaml", "text": "text"}
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")

# `raytab COMMAND` lines that are parsed and checked but never run, wherever they are.
NOT_RUN_COMMANDS = {
    "submit": "needs a Ray cluster's job API (tests/e2e/test_job_submit.py runs it)",
}
# Run, but not as written (tests/e2e/test_docs_run.py): `serve` listens on a free port, not
# 8000, until the page's blocks that use it (after an ON_SERVICE line) have run, then gets
# Ctrl-C; `tune` gets these overrides, which shrink the sweep to seconds.
TUNE_SHRUNK = ["--set", "tune.num_samples=2", "--set", "train.epochs=2", "--set", "tune.max_concurrent_trials=2"]
ON_SERVICE = re.compile(r"^<!--\s*run against the service above\s*-->\s*$")
SERVICE_ADDRESS = "127.0.0.1:8000"  # in those blocks: the free port's address instead

# First path components that name files of the repo: a path starting with one must exist.
REPO_ROOTS = ("app/", "configs/", "data/penguins", "docs/", "scripts/", "tests/", "cluster.yaml",
              "constraints.txt", "pyproject.toml")

SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>&1"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str  # as written after the fence
    text: str
    not_run: str | None = None  # the reason of a `<!-- not run: ... -->` line right before it
    on_service: bool = False  # after an ON_SERVICE line: run as a whole against the page's `serve`

    @property
    def kind(self) -> str | None:
        return LANGS.get(self.lang)

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Command:
    block: Block
    line: int  # 1-based line in the page
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        return f"{self.block.page.relative_to(REPO)}:{self.line}: {shlex.join(self.argv)}"

    @property
    def app_args(self) -> list[str] | None:
        """The arguments of a `raytab` / `python -m app` command, else None."""
        argv = self.argv
        if argv and argv[0] == "raytab":
            return argv[1:]
        if len(argv) >= 3 and re.fullmatch(r"(\.venv/bin/)?python3?", argv[0]) and argv[1:3] == ["-m", "app"]:
            return argv[3:]
        return None

    def not_run_reason(self) -> str | None:
        if self.block.not_run:
            return self.block.not_run
        args = self.app_args
        if args is None:
            return "not a raytab command: only its paths are checked"
        if args and args[0] in NOT_RUN_COMMANDS:
            return NOT_RUN_COMMANDS[args[0]]
        return None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, in order. A fence is a line starting with ``` (blocks
    are never indented in these pages: tests/unit/test_docs.py checks that)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{page.relative_to(REPO)}:{start + 1}: a code block that is never closed")
            j = start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = NOT_RUN.match(lines[j]) if j >= 0 else None
            found.append(Block(page, start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None,
                               j >= 0 and bool(ON_SERVICE.match(lines[j]))))
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def commands(block: Block) -> list[Command]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at
    `&&`, `;` and `|`; leading `NAME=value` words are the command's environment; a
    redirection and its target are dropped."""
    found: list[Command] = []
    logical: list[tuple[int, str]] = []
    pending, first = "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            first = block.line + 1 + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        try:
            shlex.split(pending + line, comments=True)
        except ValueError:  # a quoted string that goes on on the next line
            pending += line + "\n"
            continue
        logical.append((first, pending + line))
        pending = ""
    if pending:
        raise ValueError(f"{block.where()}: a command that never ends")
    for line_no, line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in SEPARATORS:
                if current:
                    env = {}
                    while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                        name, _, value = current.pop(0).partition("=")
                        env[name] = value
                    argv = _without_redirections(current)
                    if argv:
                        found.append(Command(block, line_no, argv, env))
                    current = []
            else:
                current.append(word)
    return found


def _without_redirections(words: list[str]) -> list[str]:
    """`words` less each redirection operator and the word after it."""
    cleaned, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in REDIRECTS:
            skip = True
        else:
            cleaned.append(word)
    return cleaned


def repo_paths(argv: list[str]) -> list[str]:
    """The words (or `--flag=` values) of a command that name files of the repo."""
    paths = []
    for word in argv:
        value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        value = value.removeprefix("./")
        if value.startswith(REPO_ROOTS) and not any(c in value for c in "*?$<>["):
            paths.append(value)
    return paths


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
