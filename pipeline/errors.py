"""Error types every layer raises; a bottom module with no imports, so any module can use them.

At the edge (a stage, the `synthfaces` command) each becomes one `error: ...` line and an exit status:
2 for bad input the user can correct (params, a file they named), 1 for a run that failed.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A failure the user can fix (missing input, unmet target): reported in one line, exit status 1."""


class InputError(PipelineError):
    """Bad input the user gave: a file that is not what it should be (weights, reference embeddings, a
    manifest), an argument out of range. One line, exit status 2."""


class ConfigError(Exception):
    """Invalid params: one line per problem, each naming the key path (exit status 2)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
