"""Kafka's default partitioner for keyed records, in pure Python: where a key must land.

Every `pm` producer uses librdkafka's `partitioner=murmur2_random` (pm/kafka.py), which is
Java's `BuiltInPartitioner.partitionForKey`: `toPositive(murmur2(key)) % partitions`. The PM
inputs and the journal are co-partitioned by correlation ID, so the runtime uses this to check
that a record sits where its key says (a record anywhere else would split its process).
"""

from __future__ import annotations

import functools

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Java's `org.apache.kafka.common.utils.Utils.murmur2`: a signed 32-bit int, bit for bit.

    Arithmetic is done on unsigned 32-bit values (Java's int overflow is mod 2**32; `>>>` is a
    logical shift, i.e. a plain shift of the unsigned value); only the result is made signed.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length % 4
    # Java's switch falls through from case 3 to case 1; the multiply happens once, in case 1.
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java's producer (and librdkafka's murmur2_random) picks for a non-null key."""
    if partitions <= 0:
        raise ValueError(f"partitions must be positive, got {partitions}")
    if len(key) <= MEMO_KEY_BYTES:  # a process's inputs share its key: hash it once (~10 us each)
        return _remembered(bytes(key), partitions)
    return _partition(key, partitions)


MEMO_KEY_BYTES = 64  # correlation IDs; a longer key is hashed every time (the memo stays small)


def _partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions  # Java's Utils.toPositive: drop the sign bit


_remembered = functools.lru_cache(maxsize=16_384)(_partition)
