"""The two kinds of failure the harness reports as one clear line instead of a traceback."""


class EvalInputError(ValueError):
    """Bad predictions or ground truth; the message is one line that names the file and line where known."""


class EvalEnvironmentError(RuntimeError):
    """Something the metrics need (Java, a model, a package) is missing; the message says what and how to fix."""
