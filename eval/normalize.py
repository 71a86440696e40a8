"""Optional text normalisation applied to predictions AND references before scoring.

All options are off by default: papers report metrics on the raw text (the PTB tokenizer already lower-cases
and drops punctuation for BLEU/METEOR/ROUGE-L/CIDEr). The options exist for the ablations AD papers run, e.g.
AutoAD scores "named" vs "unnamed" ADs by replacing character names with "someone".
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_WHITESPACE = re.compile(r"\s+")  # includes \u2028, \u2029, \x85, which Java would treat as line breaks
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d\u2013\u2014\u2026]")


def collapse_whitespace(text: str) -> str:
    """One space between words, none at the ends.

    Always applied before the Java PTB tokenizer: it reads one sentence a line, so a newline (or a Unicode
    line separator) inside an AD would shift every later sentence onto the wrong reference.
    """
    return _WHITESPACE.sub(" ", text).strip()


def load_names(spec: str | Sequence[str]) -> list[str]:
    """Character names from a file or a comma-separated list.

    Args:
        spec: a list of names; or a path to a text file (one name a line, ``#`` comments) or a JSON file (a list
            of names, or a ``{movie: [names]}`` object whose lists are merged); or ``"Ana,Ben Stone"``.

    Returns:
        The distinct non-empty names, in first-seen order.
    """
    if isinstance(spec, str):
        path = Path(spec)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                data = json.loads(text)
                if isinstance(data, dict):
                    names = [n for v in data.values() for n in (v if isinstance(v, list) else [v])]
                elif isinstance(data, list):
                    names = data
                else:
                    raise ValueError(f"{spec}: expected a JSON list of names or a {{movie: [names]}} object")
            else:
                names = [ln.split("#", 1)[0] for ln in text.splitlines()]
        else:
            names = spec.split(",")
    else:
        names = list(spec)
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"character names must be strings, got {name!r}")
        name = collapse_whitespace(name)
        if name and name not in out:
            out.append(name)
    return out


@dataclass(frozen=True)
class Normalizer:
    """A text transform applied identically to predictions and references.

    Attributes:
        names: character names replaced (whole words, case-sensitive, longest first) by ``replacement``.
        replacement: what a name becomes.
        lowercase: lower-case the text.
        strip_punct: remove ASCII and typographic punctuation.
    """

    names: tuple[str, ...] = ()
    replacement: str = "someone"
    lowercase: bool = False
    strip_punct: bool = False

    @classmethod
    def from_options(
        cls,
        replace_names: str | Sequence[str] | None = None,
        lowercase: bool = False,
        strip_punct: bool = False,
        replacement: str = "someone",
    ) -> Normalizer | None:
        """Build a normalizer from CLI-style options; ``None`` when every option is off."""
        names = tuple(load_names(replace_names)) if replace_names else ()
        if not names and not lowercase and not strip_punct:
            return None
        return cls(names=names, replacement=replacement, lowercase=lowercase, strip_punct=strip_punct)

    def __post_init__(self) -> None:
        # Longest first so "Harry Potter" wins over "Harry"; lookarounds instead of \b so names ending in
        # punctuation ("Mr.") still match as whole words.
        pattern = None
        if self.names:
            alts = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
            pattern = re.compile(rf"(?<!\w)(?:{alts})(?!\w)")
        object.__setattr__(self, "_pattern", pattern)

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(self.replacement, text)
        if self.lowercase:
            text = text.lower()
        if self.strip_punct:
            text = _PUNCT.sub(" ", text)
        return collapse_whitespace(text)

    def describe(self) -> dict:
        """The options as plain data, for the report."""
        return {
            "replace_names": len(self.names),
            "replacement": self.replacement,
            "lowercase": self.lowercase,
            "strip_punct": self.strip_punct,
        }
