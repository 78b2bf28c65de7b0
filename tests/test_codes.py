"""MessageCodes: 40 lowercase hex characters, never repeated, not even by a forked worker."""

import os
import re

from dpmq.message import CodeSource

HEX40 = re.compile(r"^[0-9a-f]{40}$")


def test_codes_are_40_hex_characters_and_distinct():
    source = CodeSource()
    codes = [source() for _ in range(100_000)]
    assert all(HEX40.match(code) for code in codes)
    assert len(set(codes)) == len(codes)


def test_two_sources_do_not_collide():
    first, second = CodeSource(), CodeSource()
    assert not {first() for _ in range(1000)} & {second() for _ in range(1000)}


def test_a_forked_process_with_the_same_source_makes_other_codes():
    """gunicorn may fork workers after the app is built: they share secret and counter."""
    source = CodeSource()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:                      # the child: its first codes, then leave at once
        os.close(read)
        os.write(write, "".join(source() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(child, 0)
    theirs = {data[i:i + 40].decode() for i in range(0, len(data), 40)}
    assert len(theirs) == 100
    assert not theirs & {source() for _ in range(100)}
