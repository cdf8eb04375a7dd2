"""Minimal DER encoding (X.690) for the parts fleetpki writes itself: certificate and CRL
templates. Everything else is encoded by `cryptography`."""

from datetime import UTC, datetime


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def der_integer(value: int) -> bytes:
    return der_tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # positive, minimal


def der_time(moment: datetime) -> bytes:
    """UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5), whole seconds."""
    t = moment.astimezone(UTC)
    clock = b"%02d%02d%02d%02dZ" % (t.day, t.hour, t.minute, t.second)
    if t.year < 2050:
        return b"\x17\x0d%02d%02d" % (t.year % 100, t.month) + clock
    return b"\x18\x0f%04d%02d" % (t.year, t.month) + clock


def _header(data: bytes, at: int) -> tuple[int, int]:
    """(content start, content length) of the element that starts at `at`."""
    size = data[at + 1]
    if size < 0x80:
        return at + 2, size
    count = size & 0x7F
    return at + 2 + count, int.from_bytes(data[at + 2:at + 2 + count], "big")


def der_content(element: bytes) -> bytes:
    """The content of one encoded element (without its tag and length)."""
    start, size = _header(element, 0)
    return element[start:start + size]


def der_elements(data: bytes) -> list[bytes]:
    """The encoded elements (tag, length and content each) inside the SEQUENCE `data`."""
    at, size = _header(data, 0)
    end, elements = at + size, []
    while at < end:
        start, length = _header(data, at)
        elements.append(data[at:start + length])
        at = start + length
    return elements


def public_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's bits (without the unused-bits octet) of a DER
    SubjectPublicKeyInfo: what key identifiers (RFC 5280 4.2.1.2) and OCSP's issuerKeyHash
    (RFC 6960 4.1.1) hash."""
    return der_content(der_elements(spki)[1])[1:]
