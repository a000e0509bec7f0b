"""Progress bars only on a terminal: a run whose output goes to a file gets no bar redraws."""

import io
import sys

from dmdl.progress import progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_no_bar_when_stderr_is_a_file(monkeypatch):
    stream = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(range(3), total=3, desc="steps")
    bar.set_postfix(loss="1.0")
    assert list(bar) == [0, 1, 2] and stream.getvalue() == ""


def test_a_bar_on_a_terminal(monkeypatch):
    stream = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress(range(3), total=3, desc="steps")) == [0, 1, 2]
    assert "steps:" in stream.getvalue() and "0/3" in stream.getvalue()  # drawn (and cleared: leave=False)
