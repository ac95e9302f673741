#!/usr/bin/env python3
"""One gRPC message of Envoy's rate-limit API, by hand, with nothing but the standard library.

  rls-request.py encode --domain bench --descriptor user_id=alice [--hits-addend N] > body.bin
      writes a length-prefixed RateLimitRequest (the body h2load posts to ShouldRateLimit);
      several --descriptor flags make several descriptors, `k1=v1,k2=v2` one with two entries.
  rls-request.py decode < response.bin
      reads a length-prefixed RateLimitResponse and prints its overall code
      (OK, OVER_LIMIT or UNKNOWN); exits 1 if the bytes are not one.

Field numbers are envoy.service.ratelimit.v3.RateLimitRequest's (domain 1, descriptors 2,
hits_addend 3), RateLimitDescriptor's (entries 1) and its Entry's (key 1, value 2);
RateLimitResponse's overall_code is field 1.
"""

import argparse
import struct
import sys

CODES = {0: "UNKNOWN", 1: "OK", 2: "OVER_LIMIT"}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def descriptor(text: str) -> bytes:
    entries = b""
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"descriptor entry `{pair}` is not key=value")
        entry = field_bytes(1, key.encode()) + field_bytes(2, value.encode())
        entries += field_bytes(1, entry)
    return entries


def encode(args: argparse.Namespace) -> None:
    message = field_bytes(1, args.domain.encode())
    for text in args.descriptor:
        message += field_bytes(2, descriptor(text))
    if args.hits_addend:
        message += varint(3 << 3 | 0) + varint(args.hits_addend)
    sys.stdout.buffer.write(struct.pack(">BI", 0, len(message)) + message)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def decode() -> None:
    data = sys.stdin.buffer.read()
    if len(data) < 5:
        raise SystemExit(f"not a gRPC message: {len(data)} bytes")
    flag, length = struct.unpack(">BI", data[:5])
    message = data[5:]
    if flag != 0 or length != len(message):
        raise SystemExit(f"not one uncompressed gRPC message (flag {flag}, length {length}, {len(message)} bytes)")
    code, at = 0, 0
    try:
        while at < len(message):
            key, at = read_varint(message, at)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, at = read_varint(message, at)
                if number == 1:
                    code = value
            elif wire == 2:
                size, at = read_varint(message, at)
                at += size
            elif wire == 1:
                at += 8
            elif wire == 5:
                at += 4
            else:
                raise ValueError(f"wire type {wire}")
    except ValueError as err:
        raise SystemExit(f"not a RateLimitResponse: {err}")
    print(CODES.get(code, f"code {code}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    enc = verbs.add_parser("encode", help="write a framed RateLimitRequest to stdout")
    enc.add_argument("--domain", required=True)
    enc.add_argument("--descriptor", action="append", required=True, help="k=v[,k=v…]; repeat for more")
    enc.add_argument("--hits-addend", type=int, default=0)
    verbs.add_parser("decode", help="print the overall code of a framed RateLimitResponse on stdin")
    args = parser.parse_args()
    if args.verb == "encode":
        encode(args)
    else:
        decode()


if __name__ == "__main__":
    main()
