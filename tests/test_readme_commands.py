"""The `fedtl` commands, options and tests the README and the docs show exist today:
a renamed or removed option or test fails here, not in a reader's terminal."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from common.cli.main import build_parser

from .conftest import PROJECT

# The documents whose code blocks are shell (docs/architecture.md's are diagrams).
COMMAND_DOCUMENTS = ("README.md", "docs/private-accuracy.md")
OPTION_DOCUMENTS = ("README.md", *sorted(p.relative_to(PROJECT).as_posix()
                                         for p in (PROJECT / "docs").glob("*.md")))
# Options of the other tools the docs show (uv, pip, flwr, ray, mlflow, tensorboard, the
# benchmark script): everything else written as --option must be fedtl's.
OTHER_TOOLS = {"--backend-store-uri", "--disable-runtime-dependency-installation", "--extra",
               "--force", "--frozen", "--head", "--isolation", "--logdir", "--project",
               "--quiet", "--run-config", "--with"}
# "fedtl" at a command's start, after "uv run", a pipe, "&&" or "(" (a subshell).
_COMMAND = re.compile(r"(?:^|[\s(&|])(?:uv run |\.venv/bin/)?fedtl (\S.*)")
# Where a command line ends and the shell takes over again.
_SHELL_TAIL = re.compile(r" \| | && | > | 2>| &(?=[\s)]|$)|\)|;")


def shell_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced code blocks with no language or a shell one."""
    blocks: list[str] = []
    body: list[str] | None = None
    language = ""
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            if body is None:
                body, language = [], line.strip()[3:]
            else:
                if language in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def fedtl_commands(markdown: str) -> list[list[str]]:
    """Each `fedtl` invocation's arguments, continuation lines joined; lines with placeholders
    (``...``, ``<folder>``) are skipped: they are not meant to run as written."""
    commands = []
    for block in shell_blocks(markdown):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            match = _COMMAND.search(line)
            if line.startswith("#") or match is None:
                continue
            command = _SHELL_TAIL.split(match.group(1))[0]
            if "..." in command or "<" in command:
                continue
            commands.append(shlex.split(command, comments=True))
    return commands


def test_commands_are_found_with_continuations_and_placeholders_left_out() -> None:
    markdown = ("```bash\nuv run fedtl simulate --rounds 3 \\\n    --clients 2  # a comment\n"
                "fedtl evaluate --data <folder>\n(fedtl client --data d &)\n```\n"
                "```python\nfedtl simulate --not-shell\n```\n")
    assert fedtl_commands(markdown) == [["simulate", "--rounds", "3", "--clients", "2"],
                                        ["client", "--data", "d"]]


@pytest.mark.parametrize("document", COMMAND_DOCUMENTS)
def test_every_fedtl_command_in_the_docs_parses(document: str) -> None:
    parser = build_parser()
    commands = fedtl_commands((PROJECT / document).read_text())
    assert commands, f"no fedtl command found in {document}"
    failed = []
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit as exit_:
            if exit_.code != 0:  # --help exits 0
                failed.append(" ".join(args))
    assert not failed, f"{document} shows commands fedtl no longer accepts: {failed}"


def fedtl_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and its subcommands, however deep."""
    found = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= fedtl_options(sub)
    return found


def options_shown(markdown: str) -> set[str]:
    """The ``--options`` written in code: inline spans and shell blocks."""
    spans = re.findall(r"`([^`\n]+)`", markdown) + shell_blocks(markdown)
    return {o for span in spans for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}


def test_options_are_found_in_inline_code_and_blocks_but_not_in_prose() -> None:
    markdown = "use `--rounds 3` or\n```bash\nfedtl x --clients 2\n```\nnot --prose"
    assert options_shown(markdown) == {"--rounds", "--clients"}


def benchmark_options() -> set[str]:
    """The options the scripts under benchmarks/ declare (their parsers live in main())."""
    return {o for script in (PROJECT / "benchmarks").glob("*.py")
            for o in re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text())}


@pytest.mark.parametrize("document", OPTION_DOCUMENTS)
def test_every_option_the_docs_name_is_fedtls_or_another_named_tools(document: str) -> None:
    known = fedtl_options(build_parser()) | OTHER_TOOLS | benchmark_options()
    unknown = options_shown((PROJECT / document).read_text()) - known
    assert not unknown, f"{document} names options fedtl does not have: {sorted(unknown)}"


def named_tests(markdown: str) -> set[str]:
    """The tests named in inline code: a test file's stem or a test function."""
    return {name for span in re.findall(r"`([^`\n]+)`", markdown)
            for name in re.findall(r"(?<![\w-])test_[a-z0-9_]+", span)}


def existing_tests() -> set[str]:
    """Every test file's stem and test function under tests/."""
    names: set[str] = set()
    for path in (PROJECT / "tests").glob("test_*.py"):
        names.add(path.stem)
        names.update(re.findall(r"^\s*def (test_\w+)", path.read_text(), re.MULTILINE))
    return names


def test_tests_are_found_in_inline_code_as_files_and_functions() -> None:
    markdown = ("see `tests/test_policy.py`, e2e `test_a_site_refuses` and "
                "`test_b.py::test_c`; not test_in_prose")
    assert named_tests(markdown) == {"test_policy", "test_a_site_refuses", "test_b", "test_c"}


@pytest.mark.parametrize("document", OPTION_DOCUMENTS)
def test_every_test_the_docs_name_exists(document: str) -> None:
    # A reader sent to a test that was renamed finds nothing to read.
    missing = named_tests((PROJECT / document).read_text()) - existing_tests()
    assert not missing, f"{document} names tests that do not exist: {sorted(missing)}"
