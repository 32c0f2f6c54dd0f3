"""The project's exception: one line naming the file and the problem."""

from __future__ import annotations

import errno
import os
import re
import sys


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


class WriteError(MedgenError):
    """An output could not be written (a full disk, a quota, a read-only file system): what was half-made is undone."""


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


def is_write_error(exc: BaseException) -> bool:
    """Whether ``exc`` says that an output could not be written (:data:`WRITE_ERRNOS`, or a :class:`WriteError`)."""
    return isinstance(exc, WriteError) or (isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS)


def short(exc: BaseException | str, limit: int = 160) -> str:
    """An exception's message on one line, at most ``limit`` characters, for the ``(...)`` of a ``MedgenError``.

    >>> short(ValueError("bad\\n   header   field"))
    'bad header field'
    """
    text = " ".join(_itk_reason(str(exc)).split())[:limit]
    return text or type(exc).__name__


def _itk_reason(message: str) -> str:
    """SimpleITK's exception text without its boilerplate (the C++ source location, ``ITK ERROR: Class(0x..):``
    prefixes, NRRD's chain of "trouble" lines): the reason a user can act on.

    >>> _itk_reason("Exception thrown in SimpleITK ImageFileReader_Execute: /src/itkMetaImageIO.cxx:490:\\n"
    ...             "ITK ERROR: MetaImageIO(0x5619): File cannot be read: a.mhd for reading.\\nReason: No such file")
    'File cannot be read: a.mhd for reading.; Reason: No such file'
    """
    if not message.startswith("Exception thrown in SimpleITK"):
        return message
    lines = [re.sub(r"^(sitk::ERROR:|ITK ERROR:|itk::ERROR:)\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line.strip())
             for line in message.splitlines()[1:]]
    lines = [re.sub(r"^\[\w+\]\s*\w+:\s*", "", line) for line in lines if line and "trouble" not in line]
    return "; ".join(lines) or message


def each_case(pairs, single: bool, work) -> tuple[list, int]:
    """Run ``work(src, dst)`` on every input/output pair of a command. A single input raises its error; in a
    folder run each bad case gets its one line, ``medgen: error: <file>: <problem>`` on stderr, and the other
    cases go on (what ``medgen translate``, ``segment`` and ``pipeline`` do alike). Returns the results of the
    good cases and the number of failed ones; the command then exits 2 when any failed. A write error (a full disk)
    stops the run: every later case would fail alike.

    >>> def work(src, dst):
    ...     if src == "bad.nii.gz":
    ...         raise MedgenError(src, "not a volume")
    ...     return dst
    >>> each_case([("a.nii.gz", "out/a"), ("bad.nii.gz", "out/bad")], False, work)  # doctest: +NORMALIZE_WHITESPACE
    (['out/a'], 1)
    """
    done, failed = [], 0
    for src, dst in pairs:
        try:
            done.append(work(src, dst))
        except MedgenError as exc:
            if single or isinstance(exc, WriteError):
                raise
            failed += 1
            print(f"medgen: error: {exc}", file=sys.stderr, flush=True)
    return done, failed
