"""ObsID parsing: the strict pattern, its parts, and what must never pass (it ends up in paths)."""
import pytest

from rxte_hpc.core.obsid import InvalidObsID, ObsID, check_cycle, is_pointing


@pytest.mark.parametrize(
    "text, proposal, flag",
    [("90171-01-01-00", "90171", ""), ("60005-01-01-00G", "60005", "G"), ("10040-01-01-000", "10040", "0"),
     ("20033-01-01-00A", "20033", "A")],
)
def test_valid_forms(text, proposal, flag):
    oid = ObsID.parse(text)
    assert str(oid) == text
    assert oid.proposal == proposal and oid.prnb == int(proposal)
    assert oid.flag == flag
    assert oid.short == text[:14]
    assert oid.nodash == text.replace("-", "")


def test_blanks_around_are_stripped_but_inside_rejected():
    assert ObsID.parse("  90171-01-01-00\n").text == "90171-01-01-00"
    with pytest.raises(InvalidObsID):
        ObsID.parse("90171-01-01 -00")


@pytest.mark.parametrize(
    "bad",
    ["../etc/passwd", "90171-01-01-00/..", "90171-01-01-0", "9017-01-01-00", "901710-01-01-00", "90171-1-01-00",
     "90171-01-01-00AB", "90171-01-01-00a", "90171_01_01_00", "90171-01-01-00 ", " 90171-01-01-00 x", "", "abcde-fg-hi-jk",
     "90171-01-01-00;rm", "９0171-01-01-00"],
)
def test_rejects(bad):
    with pytest.raises(InvalidObsID, match="not an RXTE ObsID"):
        ObsID(bad)


def test_rejects_non_strings():
    for value in (None, 9017101, 1.5):
        with pytest.raises(InvalidObsID):
            ObsID.parse(value)


def test_archive_dir_and_names():
    oid = ObsID.parse("90171-01-01-00")
    assert str(oid.archive_dir(9)) == "AO9/P90171/90171-01-01-00"
    assert oid.filter_file_name() == "x90171010100.xfl.gz"
    assert oid.stdprod_lc_name("a") == "xp90171010100_n2a.lc.gz"
    with pytest.raises(ValueError):
        oid.stdprod_lc_name("z")


@pytest.mark.parametrize("bad", [-1, 21, "3; ls", 2.5, "x", None])
def test_cycle_rejected(bad):
    with pytest.raises(InvalidObsID):
        check_cycle(bad)


def test_cycle_accepted():
    assert check_cycle(0) == 0 and check_cycle("16") == 16


def test_pointing_flags():
    assert is_pointing(ObsID("90171-01-01-00"))
    assert is_pointing(ObsID("90171-01-01-00G"))
    assert not is_pointing(ObsID("90171-01-01-00Z"))


def test_ordering_and_hash():
    a, b = ObsID("10000-01-01-00"), ObsID("20000-01-01-00")
    assert sorted([b, a]) == [a, b]
    assert len({a, ObsID("10000-01-01-00")}) == 1


def test_errors_quote_the_text_not_a_numpy_repr():
    import numpy as np

    from rxte_hpc.core.obsid import InvalidObsID, ObsID

    with pytest.raises(InvalidObsID) as caught:
        ObsID.parse(np.str_("../../x"))
    assert str(caught.value).endswith("'../../x'") and "np.str_" not in str(caught.value)
