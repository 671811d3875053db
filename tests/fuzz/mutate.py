"""Byte-level mutations, with the NHRP checksum optionally repaired so the
mutated packet gets past the checksum check into the deeper parsers."""

from __future__ import annotations

import random

from dmvpn.wire import internet_checksum


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 3:
            buf += rng.randbytes(rng.randrange(1, 24))
        elif op == 4 and buf:
            i = rng.randrange(len(buf))
            buf[i:i] = rng.randbytes(rng.randrange(1, 8))
        elif op == 5 and len(buf) > 1:
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randrange(1, 8)]
        elif op == 6 and len(buf) >= 20:
            # Length fields are where parsers go wrong: pktsz, extoff, the
            # address lengths, CIE and extension lengths.
            i = rng.choice((8, 10, 14, 18, 19, 20, 21, rng.randrange(len(buf))))
            if i + 1 < len(buf):
                buf[i : i + 2] = rng.randrange(0x10000).to_bytes(2, "big")
    if rng.random() < 0.6 and len(buf) >= 14:
        buf[12:14] = b"\x00\x00"
        size = int.from_bytes(buf[10:12], "big")
        if 14 <= size <= len(buf):
            buf[12:14] = internet_checksum(bytes(buf[:size])).to_bytes(2, "big")
    return bytes(buf)
