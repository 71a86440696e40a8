"""Running the Java scorers (PTB tokenizer, METEOR, SPICE) so that nothing waits forever.

pycocoevalcap's own wrappers can hang (``Meteor.__del__`` waits on a lock that a failed ``compute_score`` still
holds) and throw Java's message away (stderr is never read). Here every Java call:

- runs in its own process group with stderr captured to a temporary file;
- has a deadline (``timeout`` seconds for a one-shot run, or per request/answer of an interactive session); past
  it the process group is killed;
- ends any failure (non-zero exit, death by a signal, an early end of its output, a broken pipe, a missing
  ``java``) in one :class:`~distinctad.eval.errors.EvalEnvironmentError` line that carries Java's own message
  (e.g. ``java.lang.OutOfMemoryError: Java heap space``) and the exit status.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from typing import IO

from distinctad.eval.errors import EvalEnvironmentError

JAVA_HINT = "install a Java runtime, e.g. `apt-get install default-jre-headless`"
DEFAULT_TIMEOUT_S = 300.0  # per one-shot run or per request/answer; real calls take seconds (JVM start ~10 s)
_STDERR_TAIL = 64 * 1024  # bytes of Java's stderr read back for the message
_working_java: set[str] = set()


def find_java() -> str:
    """The ``java`` executable on PATH, or a one-line error saying how to install it."""
    java = shutil.which("java")
    if java is None:
        raise EvalEnvironmentError(
            f"Java is needed by the PTB tokenizer, METEOR and SPICE (pycocoevalcap) but `java` is not on PATH; "
            f"{JAVA_HINT}"
        )
    return java


def check_java(timeout: float = 60.0) -> None:
    """Fail early, with the fix, when Java is missing or does not start (``java -version``)."""
    java = find_java()
    if java in _working_java:
        return
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EvalEnvironmentError(f"`{java} -version` gave no answer within {timeout:g} s; {JAVA_HINT}") from None
    except OSError as e:
        raise EvalEnvironmentError(f"`{java} -version` could not start ({e.strerror}); {JAVA_HINT}") from None
    if proc.returncode != 0:
        msg = java_message(proc.stderr) or "nothing on stderr"
        raise EvalEnvironmentError(f"`{java} -version` failed: {msg} ({exit_status(proc.returncode)}); {JAVA_HINT}")
    _working_java.add(java)  # one JVM start per process is enough to know it runs


def java_message(stderr: bytes | str) -> str:
    """The line of Java's stderr that says what went wrong.

    The last line naming an exception or error (``Exception in thread "main" java.lang.OutOfMemoryError: Java
    heap space``), skipping stack frames (``at ...``, ``... 3 more``); else the last non-empty line; ``""`` when
    stderr is empty. Cut to 300 characters.
    """
    text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("at ", "... "))]
    if not lines:
        return ""
    named = [ln for ln in lines if "Exception" in ln or "Error" in ln or ln.startswith("Caused by")]
    line = named[-1] if named else lines[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def exit_status(returncode: int | None) -> str:
    """``"exit status 1"``, ``"killed by signal 9 (SIGKILL)"`` or ``"still running"``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"killed by signal {-returncode} ({name})"
    return f"exit status {returncode}"


def _popen(name: str, args: list[str], cwd: str, stdin: int, stderr: IO[bytes]) -> subprocess.Popen:
    java = find_java()
    try:
        return subprocess.Popen(
            [java, *args],
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=os.name == "posix",  # its own process group: a kill reaches every child
        )
    except OSError as e:
        raise EvalEnvironmentError(f"{name}: could not start `{java}` ({e.strerror}); {JAVA_HINT}") from None


def _kill(proc: subprocess.Popen) -> None:
    """Kill the process group (or the process) and reap it; never waits more than a few seconds."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _stderr_tail(f: IO[bytes]) -> bytes:
    try:
        f.flush()
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _STDERR_TAIL))
        return f.read()
    except (OSError, ValueError):
        return b""


def _failure(name: str, what: str, proc: subprocess.Popen, stderr: IO[bytes], hint: str) -> EvalEnvironmentError:
    msg = java_message(_stderr_tail(stderr)) or "nothing on stderr"
    line = f"{name}'s Java process {what}: {msg} ({exit_status(proc.returncode)})"
    if "OutOfMemoryError" in msg:
        line += "; the JVM ran out of memory: very long ADs need more, lower --max-tokens"
    return EvalEnvironmentError(line + (f"; {hint}" if hint else ""))


def run_java(name: str, args: list[str], *, cwd: str, timeout: float, hint: str = "") -> bytes:
    """Run ``java ARGS`` to completion and return its stdout.

    Args:
        name: what runs, for messages (e.g. ``"the PTB tokenizer"``).
        args: arguments after ``java``.
        cwd: working directory (where the jar lies).
        timeout: seconds before the process group is killed.
        hint: appended to the failure line (what to try).

    Raises:
        EvalEnvironmentError: one line with Java's message when it fails, is killed or runs past ``timeout``.
    """
    with tempfile.TemporaryFile() as err:
        proc = _popen(name, args, cwd, subprocess.DEVNULL, err)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            _close(proc.stdout)
            what = f"gave no result within {timeout:g} s (--java-timeout) and was stopped"
            raise _failure(name, what, proc, err, hint) from None
        except BaseException:
            _kill(proc)
            raise
        if proc.returncode != 0:
            raise _failure(name, "failed", proc, err, hint)
        return out


def _close(f: IO | None) -> None:
    try:
        if f is not None:
            f.close()
    except OSError:
        pass


class JavaSession:
    """A Java process spoken to line by line (METEOR's ``-stdio`` mode), with a deadline on every exchange.

    Use as a context manager: leaving it closes the process (stdin closed, then killed if still running after a
    few seconds); nothing in it takes a lock or waits without a bound.
    """

    def __init__(self, name: str, args: list[str], *, cwd: str, timeout: float, hint: str = "") -> None:
        self.name, self.timeout, self.hint = name, timeout, hint
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = _popen(name, args, cwd, subprocess.PIPE, self._err)
        except BaseException:
            self._err.close()
            raise
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        self._buf, self._pos = bytearray(), 0  # output read but not yet returned starts at _pos

    def __enter__(self) -> JavaSession:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:  # an error or Ctrl-C mid-conversation: no reason to let it finish
            _kill(self.proc)
        self.close()

    def _fail(self, what: str) -> EvalEnvironmentError:
        """Let a dying process finish (a few seconds at most, so its stderr is complete), kill it, describe it."""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _kill(self.proc)
        return _failure(self.name, what, self.proc, self._err, self.hint)

    def _wait(self, fd: int, event: int, deadline: float, doing: str) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(self.proc)
                what = f"did not {doing} within {self.timeout:g} s (--java-timeout) and was stopped"
                raise _failure(self.name, what, self.proc, self._err, self.hint)
            if poller.poll(max(1, int(left * 1000))):
                return

    def send(self, line: str) -> None:
        """Write ``line`` and a newline (it must not contain one)."""
        data = memoryview((line + "\n").encode("utf-8"))
        deadline = time.monotonic() + self.timeout
        while data:
            self._wait(self._in, select.POLLOUT, deadline, "read its input")
            try:
                n = os.write(self._in, data[: 1 << 16])
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise self._fail("stopped reading its input (broken pipe)") from None
            data = data[n:]

    def readline(self) -> str:
        """One line of output without its newline; a failure line when the output ends or the deadline passes."""
        deadline = time.monotonic() + self.timeout
        while (end := self._buf.find(b"\n", self._pos)) < 0:
            self._wait(self._out, select.POLLIN, deadline, "answer")
            try:
                chunk = os.read(self._out, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise self._fail("ended its output early")
            del self._buf[: self._pos]
            self._pos = 0
            self._buf += chunk
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 1
        return line.decode("utf-8", errors="replace").rstrip("\r")

    def close(self) -> None:
        """Close stdin so the process ends by itself; kill it after a few seconds if it has not."""
        if self.proc.poll() is None:
            _close(self.proc.stdin)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill(self.proc)
        _close(self.proc.stdin)
        _close(self.proc.stdout)
        self._err.close()
