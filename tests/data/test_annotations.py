"""Annotation readers: the real MAD-Eval CSV (with its invalid bytes), MAD JSON, column mapping."""

from __future__ import annotations

import json

import pytest

from distinctad.data.annotations import AD, MissingColumnError, read_annotations, write_mad_json

from .conftest import MADEVAL_CSV

BAD_LINES = [5725, 5742, 5847, 5923]  # the four rows of 3034_IDES_OF_MARCH holding a 0x80 byte
PER_MOVIE = {
    "1005_Signs": 778,
    "1026_Legion": 749,
    "1027_Les_Miserables": 540,
    "1051_Harry_Potter_and_the_goblet_of_fire": 898,
    "3009_BATTLE_LOS_ANGELES": 660,
    "3015_CHARLIE_ST_CLOUD": 566,
    "3031_HANSEL_GRETEL_WITCH_HUNTERS": 568,
    "3032_HOW_DO_YOU_KNOW": 751,
    "3034_IDES_OF_MARCH": 437,
    "3074_THE_ROOMMATE": 573,
}


def test_madeval_repair_reads_all_and_marks_the_bad_bytes():
    anns = read_annotations(MADEVAL_CSV, bad_utf8="repair")
    assert len(anns.ads) == 6520
    assert {m: len(v) for m, v in anns.by_movie().items()} == PER_MOVIE
    # the bad bytes are found exactly where they are, each one logged as repaired
    assert [i.line for i in anns.issues] == BAD_LINES
    assert {i.action for i in anns.issues} == {"repaired"}
    repaired = [ad for ad in anns.ads if "\ufffd" in ad.sentence]
    assert sorted(ad.source_line for ad in repaired) == BAD_LINES
    assert {ad.movie for ad in repaired} == {"3034_IDES_OF_MARCH"}
    by_line = {ad.source_line: ad for ad in anns.ads}
    assert by_line[5725].sentence == 'Stephen gets a text from Molly "noon tomorrow. ?\ufffd?.'
    # every other sentence decodes cleanly: no replacement character anywhere else
    assert sum("\ufffd" in ad.sentence for ad in anns.ads) == 4


def test_madeval_drop_removes_exactly_the_bad_rows():
    anns = read_annotations(MADEVAL_CSV, bad_utf8="drop")
    assert len(anns.ads) == 6516
    assert len(anns.by_movie()["3034_IDES_OF_MARCH"]) == 437 - 4
    assert [(i.line, i.action) for i in anns.issues] == [(n, "dropped") for n in BAD_LINES]
    assert not {ad.source_line for ad in anns.ads} & set(BAD_LINES)


def test_madeval_error_is_one_line_naming_file_and_line():
    with pytest.raises(ValueError) as e:
        read_annotations(MADEVAL_CSV, bad_utf8="error")
    msg = str(e.value)
    assert "\n" not in msg and f"{MADEVAL_CSV}:5725" in msg and "0x80" in msg


def test_ad_index_is_stable_sort_by_start_end():
    anns = read_annotations(MADEVAL_CSV, bad_utf8="repair")
    for movie, ads in anns.by_movie().items():
        assert [a.ad_index for a in ads] == list(range(len(ads)))
        times = [(a.start, a.end) for a in ads]
        assert times == sorted(times), movie
    first = anns.by_movie()["1005_Signs"][0]
    assert (first.start, first.end, first.movie_duration, first.source_line) == (126.568, 130.799, 6391.2, 2)


def test_csv_column_mapping_and_unsorted_rows(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("film,text,t0,t1\nm.1,second,5.0,6.0\nm.1,first,1.0,2.0\nm.1,tie-b,5.0,6.0\nz,only,0,1\n")
    anns = read_annotations(p, columns={"movie": "film", "sentence": "text", "start": "t0", "end": "t1"})
    assert [(a.movie, a.ad_index, a.sentence) for a in anns.ads] == [
        ("m.1", 0, "first"),
        ("m.1", 1, "second"),
        ("m.1", 2, "tie-b"),
        ("z", 0, "only"),
    ]
    with pytest.raises(MissingColumnError, match="missing column"):
        read_annotations(p)


def test_mad_json_fields_and_bad_bytes(tmp_path):
    ads = [AD("3001", 0, 10.0, 12.5, "He opens the door.", 5400.0), AD("3001", 1, 2.0, 3.0, "Dawn.", 5400.0)]
    p = tmp_path / "mad.json"
    write_mad_json(ads, p)
    data = json.loads(p.read_text())
    data["1"]["ext_timestamps"] = [1.0, 4.0]
    raw = json.dumps(data, indent=1).encode().replace(b"Dawn.", b"Da\xffwn.")
    p.write_bytes(raw)
    got = read_annotations(p, bad_utf8="repair")
    assert [(a.ad_index, a.start, a.sentence) for a in got.ads] == [
        (0, 2.0, "Da\ufffdwn."),
        (1, 10.0, "He opens the door."),
    ]
    assert got.ads[0].movie_duration == 5400.0 and got.issues[0].line is not None
    ext = read_annotations(p, bad_utf8="drop", timestamp_field="ext_timestamps")
    assert [(a.start, a.end) for a in ext.ads] == [(10.0, 12.5)]
    with pytest.raises(ValueError, match="mad.json"):
        read_annotations(p, bad_utf8="error")
