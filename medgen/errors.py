"""The project's exception: one line naming the file and the problem."""

from __future__ import annotations

import os


class MedgenError(Exception):
    """A user-facing error about one input or output.

    The command line prints it as ``medgen: error: <file>: <problem>`` and exits with status 2.

    Args:
        path: the file or directory concerned (``None`` when the problem is not about a file).
        problem: a short, single-line description of what is wrong.

    >>> str(MedgenError("ct/case_000.nii.gz", "not 3D: shape (512, 512)"))
    'ct/case_000.nii.gz: not 3D: shape (512, 512)'
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


def short(exc: BaseException | str, limit: int = 160) -> str:
    """An exception's message on one line, at most ``limit`` characters, for the ``(...)`` of a ``MedgenError``.

    >>> short(ValueError("bad\\n   header   field"))
    'bad header field'
    """
    text = " ".join(str(exc).split())[:limit]
    return text or type(exc).__name__


def each_case(pairs, single: bool, work) -> tuple[list, int]:
    """Run ``work(src, dst)`` on every input/output pair of a command. A single input raises its error; in a
    folder run each bad case gets its one line, ``medgen: error: <file>: <problem>`` on stderr, and the other
    cases go on (what ``medgen translate``, ``segment`` and ``pipeline`` do alike). Returns the results of the
    good cases and the number of failed ones; the command then exits 2 when any failed.

    >>> def work(src, dst):
    ...     if src == "bad.nii.gz":
    ...         raise MedgenError(src, "not a volume")
    ...     return dst
    >>> each_case([("a.nii.gz", "out/a"), ("bad.nii.gz", "out/bad")], False, work)  # doctest: +NORMALIZE_WHITESPACE
    (['out/a'], 1)
    """
    import sys

    done, failed = [], 0
    for src, dst in pairs:
        try:
            done.append(work(src, dst))
        except MedgenError as exc:
            if single:
                raise
            failed += 1
            print(f"medgen: error: {exc}", file=sys.stderr, flush=True)
    return done, failed
