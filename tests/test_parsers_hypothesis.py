"""Property tests of the idx-line, path and id-list parsers: any text either parses to what a
well-formed line says, or raises ValueError (never another exception), and well-formed lines
round-trip."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dmdl.config import parse_overrides, parse_trials  # noqa: E402
from dmdl.data.llcm import parse_llcm_line  # noqa: E402
from dmdl.data.regdb import parse_regdb_line  # noqa: E402
from dmdl.data.sysu import parse_id_list  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None)
# text that looks like idx lines: path characters, digits, separators, some unicode
LINEISH = st.text(alphabet=st.sampled_from(list("VisbleThrmalnx/\\_.0123456789 \t-c:") + ["é", "٣", "\x00"]),
                  max_size=60)


@SETTINGS
@given(st.one_of(LINEISH, st.text(max_size=60)), st.sampled_from(["Visible", "Thermal"]))
def test_regdb_line_parses_or_raises_value_error(line, folder):
    try:
        parts, label, pid = parse_regdb_line(line, folder)
    except ValueError:
        return
    assert parts[0] == folder and int(parts[1]) == pid and parts[2].lower().endswith(f"_{pid}.bmp")
    assert isinstance(label, int)


@SETTINGS
@given(st.integers(0, 9999), st.integers(0, 99999), st.integers(-5, 10**6), st.sampled_from(["Visible", "Thermal"]),
       st.sampled_from(["male", "female"]), st.sampled_from(["front", "back"]), st.booleans())
def test_regdb_line_round_trip(pid, frame, label, folder, gender, view, backslash):
    sep = "\\" if backslash else "/"
    rel = f"{folder}{sep}{pid}{sep}{gender}_{view}_{folder[0].lower()}_{frame:05d}_{pid}.bmp"
    parts, got_label, got_pid = parse_regdb_line(f"{rel} {label}", folder)
    assert (got_pid, got_label) == (pid, label) and parts[1] == str(pid)
    other = "Thermal" if folder == "Visible" else "Visible"
    with pytest.raises(ValueError, match="path is not"):
        parse_regdb_line(f"{rel} {label}", other)
    with pytest.raises(ValueError, match="file-name pid"):
        parse_regdb_line(f"{folder}/{pid}/{gender}_{view}_v_{frame:05d}_{pid + 1}.bmp {label}", folder)


@SETTINGS
@given(st.one_of(LINEISH, st.text(max_size=60)), st.sampled_from(["vis", "nir"]))
def test_llcm_line_parses_or_raises_value_error(line, folder):
    try:
        parts, label, cam = parse_llcm_line(line, folder)
    except ValueError:
        return
    assert parts[0] == folder and f"_c{parts[2].split('_c')[1].split('_')[0]}_" in parts[2] and cam >= 0


@SETTINGS
@given(st.integers(0, 1149), st.integers(1, 9), st.integers(0, 999999), st.integers(0, 10**5), st.integers(0, 712),
       st.sampled_from(["vis", "nir"]))
def test_llcm_line_round_trip(pid, cam, stamp, frame, label, folder):
    line = f"{folder}/{pid:04d}/{pid:04d}_c{cam:02d}_s{stamp:06d}_f{frame}_{folder}.jpg {label}"
    parts, got_label, got_cam = parse_llcm_line(line, folder)
    assert (int(parts[1]), got_cam, got_label) == (pid, cam, label)


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("0123456789, \n\tx-") + ["١"]), max_size=80))
def test_id_list_parses_or_raises_value_error(text):
    try:
        ids = parse_id_list(text, "ids.txt")
    except ValueError as exc:
        assert str(exc).startswith("ids.txt")
        return
    assert ids and all(isinstance(i, int) and i >= 0 for i in ids)


@SETTINGS
@given(st.lists(st.integers(0, 9999), min_size=1, max_size=40), st.integers(1, 4), st.booleans(), st.booleans())
def test_id_list_round_trip(ids, pad, trailing_comma, multiline):
    sep = ",\n" if multiline else ", "
    text = sep.join(f"{i:0{pad}d}" for i in ids) + ("," if trailing_comma else "") + "\n"
    assert parse_id_list(text) == ids


@SETTINGS
@given(st.lists(st.text(max_size=12), max_size=6))
def test_overrides_parse_or_raise_value_error(tokens):
    try:
        out = parse_overrides(tokens)
    except ValueError:
        return
    assert all(isinstance(k, str) and "-" not in k for k in out)


@SETTINGS
@given(st.text(max_size=20))
def test_trials_parse_or_raise_value_error(text):
    try:
        trials = parse_trials(text)
    except ValueError:
        return
    assert trials and all(1 <= t <= 10 for t in trials)
