"""One column-mapping syntax and one bad-UTF-8 default in every CLI (``distinctad-shards``, ``distinctad-eval``)."""

from __future__ import annotations

import json

import pytest

from distinctad.data import annotations
from distinctad.data.annotations import MissingColumnError, parse_columns, read_annotations
from distinctad.data.cli import build_parser as shards_parser
from distinctad.data.cli import main as shards_main
from distinctad.eval.cli import build_parser as eval_parser
from distinctad.eval.cli import main as eval_main

from .conftest import MADEVAL_CSV

MAPPING = {"movie": "film", "sentence": "text", "start": "t0", "end": "t1"}
SPACED = ["movie=film", "sentence=text", "start=t0", "end=t1"]
COMMAS = ["movie=film,sentence=text,start=t0,end=t1"]
MIXED = ["movie=film,sentence=text", "start=t0", "end=t1"]  # what a user mixing both forms types


@pytest.fixture
def film_csv(tmp_path):
    """A CSV whose columns all need mapping: two movies, three ADs."""
    p = tmp_path / "films.csv"
    p.write_text("film,text,t0,t1\nf1,A door opens.,1.0,2.0\nf1,She waves.,3.0,4.0\nf2,Night falls.,0.5,1.5\n")
    return p


def option(parser, flag: str, sub: str | None = None):
    """The argparse action of ``flag`` (in subcommand ``sub``)."""
    if sub is not None:
        parser = next(a for a in parser._actions if a.dest == "command").choices[sub]
    return next(a for a in parser._actions if flag in a.option_strings)


# ---------------------------------------------------------------- the one parser


@pytest.mark.parametrize("items", [SPACED, COMMAS, MIXED, "movie=film, sentence=text,start=t0,,end=t1"])
def test_parse_columns_accepts_spaces_commas_and_both(items):
    assert parse_columns(items) == MAPPING


def test_parse_columns_errors_name_the_flag():
    assert parse_columns(None) is None
    with pytest.raises(ValueError, match=r"^--gt-columns expects FIELD=COLUMN pairs.*got 'movie'$"):
        parse_columns(["movie"], "--gt-columns")
    with pytest.raises(ValueError, match=r"^--columns: unknown field 'title'.*fields: movie, sentence, start"):
        parse_columns(["title=film"])
    with pytest.raises(ValueError, match=r"field 'movie' mapped twice \('a' and 'b'\)"):
        parse_columns(["movie=a,movie=b"])
    assert parse_columns(["start=t=0"]) == {"start": "t=0"}  # split at the first '='


# ---------------------------------------------------------------- both CLIs, both syntaxes


@pytest.mark.parametrize("items", [SPACED, COMMAS, MIXED], ids=["spaces", "commas", "mixed"])
def test_shards_cli_columns(film_csv, tmp_path, items):
    out = tmp_path / "win"
    shards_main(["build", "--annotations", str(film_csv), "--columns", *items, "--out", str(out), "--no-progress"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["movies"] == ["f1", "f2"] and manifest["totals"]["ads"] == 3


@pytest.mark.parametrize("items", [SPACED, COMMAS, MIXED], ids=["spaces", "commas", "mixed"])
def test_eval_cli_columns(film_csv, tmp_path, capsys, items):
    pred = tmp_path / "pred.jsonl"
    ads = read_annotations(film_csv, columns=MAPPING).ads
    pred.write_text(
        "".join(json.dumps({"movie": a.movie, "ad_index": a.ad_index, "text": a.sentence}) + "\n" for a in ads)
    )
    eval_main(["--pred", str(pred), "--gt", str(film_csv), "--gt-columns", *items, "--metrics", "none", "--no-recall"])
    assert "| f1 |" in capsys.readouterr().out


def test_missing_column_names_the_flag_to_set(film_csv, tmp_path):
    name = str(film_csv)
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"movie": "f1", "ad_index": 0, "text": "A door opens."}\n')
    has = "(columns: film, text, t0, t1)"
    with pytest.raises(SystemExit) as e:
        shards_main(["build", "--annotations", name, "--columns", "movie=film,start=t0,end=t1", "--out", str(tmp_path)])
    assert str(e.value) == f"error: missing column 'sentence' in {name} {has}; map it with --columns sentence=<name>"
    with pytest.raises(SystemExit) as e:
        eval_main(["--pred", str(pred), "--gt", name, "--gt-columns", "movie=film", "start=t0", "end=t1"])
    assert str(e.value) == f"error: missing column 'sentence' in {name} {has}; map it with --gt-columns sentence=<name>"
    # a mapped name that is not in the file is named with the field it was meant for
    with pytest.raises(MissingColumnError) as e:
        read_annotations(film_csv, columns={"movie": "title", "sentence": "text"})
    assert e.value.missing == {"movie": "title", "start": "start", "end": "end"}
    assert str(e.value).startswith("missing columns 'title' (for movie), 'start', 'end' in ")
    assert str(e.value).endswith("; pass columns={'movie': '<name>', 'start': '<name>', 'end': '<name>'}")
    assert e.value.message("data.columns").endswith("map them with data.columns movie=<name> start=<name> end=<name>")


def test_malformed_mapping_is_a_one_line_error(film_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        shards_main(["build", "--annotations", str(film_csv), "--columns", "movie", "--out", str(tmp_path)])
    assert str(e.value) == "error: --columns expects FIELD=COLUMN pairs, space- or comma-separated, got 'movie'"
    with pytest.raises(SystemExit) as e:
        eval_main(["--pred", "p.jsonl", "--gt", str(film_csv), "--gt-columns", "movie"])
    assert e.value.code == 2 and "--gt-columns expects FIELD=COLUMN pairs" in capsys.readouterr().err


# ---------------------------------------------------------------- one bad-UTF-8 default, one list of formats


def test_every_cli_takes_choices_and_defaults_from_the_constants():
    shards, evaluation = shards_parser(), eval_parser()
    for flag, sub, parser in [("--bad-utf8", "build", shards), ("--bad-utf8", None, evaluation)]:
        action = option(parser, flag, sub)
        assert tuple(action.choices) == annotations.BAD_UTF8_POLICIES
        assert action.default == annotations.DEFAULT_BAD_UTF8 == "repair"
        assert action.help == annotations.BAD_UTF8_HELP
    assert tuple(option(shards, "--format", "build").choices) == annotations.FORMATS
    assert tuple(option(evaluation, "--gt-format").choices) == (*annotations.FORMATS, "shards")
    for flag, sub, parser in [("--columns", "build", shards), ("--gt-columns", None, evaluation)]:
        action = option(parser, flag, sub)
        assert action.nargs == "+" and action.help == annotations.COLUMNS_HELP
    for flag, sub, parser in [("--timestamp-field", "build", shards), ("--timestamp-field", None, evaluation)]:
        assert tuple(option(parser, flag, sub).choices) == annotations.TIMESTAMP_FIELDS


def test_default_policy_reads_all_of_madeval():
    anns = read_annotations(MADEVAL_CSV)  # annotations.DEFAULT_BAD_UTF8
    assert len(anns) == 6520 and [i.action for i in anns.issues] == ["repaired"] * 4
