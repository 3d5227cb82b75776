"""Error types every layer raises; a bottom module with no imports, so any module can use them."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A failure the user can fix (missing input, unmet target): reported in one line, exit status 1."""


class ConfigError(Exception):
    """Invalid params: one line per problem, each naming the key path (exit status 2)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
