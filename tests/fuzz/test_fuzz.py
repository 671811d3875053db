"""Any bytes given to the decoders end in a value or one DecodeError.

At least 100,000 mutated packets (real vectors and generated ones). A decoded
value must re-encode, and decoding that encoding must give the same value.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dmvpn.decode.dissect import LinkType, dissect_frame
from dmvpn.decode.examples import conversation
from dmvpn.wire import (
    DecodeError,
    NhrpPacket,
    decode_ethernet,
    decode_gre,
    decode_ipv4,
    decode_nhrp,
)

from ..strategies import nhrp_packets
from ..vectors import nhrp_payloads
from .mutate import mutate

MUTATIONS = 100_000


def _check_nhrp(data: bytes) -> bool:
    """True when the bytes decoded; raises on anything but DecodeError."""
    try:
        pkt = decode_nhrp(data)
    except DecodeError as exc:
        assert exc.reason and 0 <= exc.offset <= max(len(data), 20)
        return False
    again = pkt.encode()
    assert decode_nhrp(again) == pkt
    return True


def _seeds(vectors: Path) -> list[bytes]:
    seeds = nhrp_payloads(vectors)
    for _, frame in conversation():
        gre = (
            decode_gre(decode_ipv4(decode_ethernet(frame).payload)[1])
            if frame[12:14] == b"\x08\x00"
            else None
        )
        if gre is not None and gre.protocol == 0x2001:
            seeds.append(gre.payload)
    return seeds


def test_fuzz_nhrp_decoder(vectors: Path) -> None:
    seeds = _seeds(vectors)
    assert len(seeds) >= 20
    rng = random.Random(0xD3F7)
    decoded = 0
    start = time.monotonic()
    for i in range(MUTATIONS):
        decoded += _check_nhrp(mutate(rng, seeds[i % len(seeds)]))
    elapsed = time.monotonic() - start
    # The mutations must reach past the first checks often enough to mean
    # something, and not all be accepted either.
    assert 0.05 * MUTATIONS < decoded < 0.95 * MUTATIONS, decoded
    print(f"{MUTATIONS} mutations, {decoded} decoded, {elapsed:.1f} s")


def test_fuzz_frames_through_dissector(vectors: Path) -> None:
    frames = [f for _, f in conversation()]
    rng = random.Random(7)
    for i in range(20_000):
        data = mutate(rng, frames[i % len(frames)])
        rec = dissect_frame(LinkType.ETHERNET, i, 0.0, data)
        if rec is not None and rec.nhrp is not None:
            assert decode_nhrp(rec.nhrp.encode()) == rec.nhrp


def test_fuzz_gre_decoder() -> None:
    rng = random.Random(11)
    seeds = [
        b"\x20\x00\x20\x01\x00\x00\x00\x64",
        b"\xb0\x00\x08\x00" + bytes(12),
        b"\x00\x00\x86\xdd",
    ]
    for i in range(20_000):
        data = mutate(rng, seeds[i % len(seeds)] + rng.randbytes(8))
        try:
            gre = decode_gre(data)
        except DecodeError:
            continue
        assert decode_gre(gre.encode()) == gre


@settings(max_examples=200, deadline=None)
@given(nhrp_packets(), st.integers(0, 2**32))
def test_fuzz_generated_packets(pkt: NhrpPacket, seed: int) -> None:
    rng = random.Random(seed)
    data = pkt.encode()
    for _ in range(50):
        _check_nhrp(mutate(rng, data))


def test_random_bytes() -> None:
    rng = random.Random(3)
    for _ in range(5_000):
        data = rng.randbytes(rng.randrange(0, 120))
        _check_nhrp(data)
        try:
            pkt = decode_nhrp(data, verify_checksum=False)
        except DecodeError:
            continue
        assert decode_nhrp(pkt.encode()) == pkt
