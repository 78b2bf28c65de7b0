"""MessageCodes: 40 lowercase hex characters, unique, and sorting in the order they were made."""

import string

from dpmq.message import new_code, new_codes


def test_a_batch_of_codes_is_unique_well_formed_and_in_order():
    codes = new_codes(500)
    assert len(set(codes)) == 500
    assert all(len(code) == 40 and set(code) <= set(string.hexdigits.lower()) for code in codes)
    assert codes == sorted(codes)
    stamps = [int(code[:16], 16) for code in codes]     # the time, plus the place in the batch
    assert stamps == list(range(stamps[0], stamps[0] + 500))


def test_a_later_code_sorts_after_an_earlier_batch():
    earlier = new_codes(3)
    assert new_code() > earlier[-1]
