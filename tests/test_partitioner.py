"""pm.partitioner against Kafka's own murmur2 vectors and against where a real producer puts keys."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from pm.config import Config
from pm.kafka import make_admin, make_consumer, make_producer
from pm.partitioner import murmur2, partition_for

# Apache Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2 (signed ints).
JAVA_UTILS_TEST = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

# librdkafka, src/rdmurmur2.c, unittest_murmur2 ("java_murmur2_results", unsigned bit patterns);
# the suffixes of its unaligned strings exercise every tail length.
_SHORT, _LONG = b"1234", b"PreAmbleWillBeRemoved,ThePrePartThatIs"
LIBRDKAFKA = {
    b"kafka": 0xD067CF64,
    b"giberish123456789": 0x8F552B0C,
    _SHORT: 0x9FC97B14,
    _SHORT[1:]: 0xE7C009CA,
    _SHORT[2:]: 0x873930DA,
    _SHORT[3:]: 0x5A4B5CA1,
    _LONG: 0x78424F1C,
    _LONG[1:]: 0x4A62B377,
    _LONG[2:]: 0xE0E4E09E,
    _LONG[3:]: 0x62B8B43F,
    b"": 0x106E08D9,
}

# kafka-python, test/test_partitioner.py, test_murmur2_java_compatibility: the partition of 1000
# that Java's DefaultPartitioner picks (so toPositive and the modulo are covered too).
KAFKA_PYTHON_1000 = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}


@pytest.mark.parametrize(("data", "expected"), JAVA_UTILS_TEST.items())
def test_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@pytest.mark.parametrize(("data", "expected"), LIBRDKAFKA.items())
def test_murmur2_matches_librdkafka_unit_test(data: bytes, expected: int) -> None:
    assert murmur2(data) & 0xFFFFFFFF == expected
    assert -(2**31) <= murmur2(data) < 2**31  # Java's signed int


@pytest.mark.parametrize(("key", "expected"), KAFKA_PYTHON_1000.items())
def test_partition_for_matches_javas_default_partitioner(key: bytes, expected: int) -> None:
    assert partition_for(key, 1000) == expected


def test_partition_for_drops_the_sign_bit_instead_of_negating() -> None:
    # Java's toPositive is `h & 0x7fffffff`, not abs(h): the two differ for every negative hash.
    assert murmur2(b"21") < 0
    assert partition_for(b"21", 2**31 - 1) == (-973932308 & 0x7FFFFFFF) % (2**31 - 1)
    assert partition_for(b"21", 2**31 - 1) != abs(-973932308) % (2**31 - 1)


def test_partition_for_refuses_no_partitions() -> None:
    with pytest.raises(ValueError):
        partition_for(b"key", 0)


def _create_topic(config: Config, name: str, partitions: int) -> str:
    physical = config.topic(name)
    admin = make_admin(config, "test-admin")
    futures = admin.create_topics([NewTopic(physical, num_partitions=partitions, replication_factor=1)])
    futures[physical].result(timeout=15)
    return physical


def test_a_murmur2_random_producer_places_every_key_where_partition_for_says(config: Config) -> None:
    partitions = 8
    topic = _create_topic(config, "partitioner-check", partitions)
    rng = random.Random(20261123)
    # Random bytes of every tail length, not just text: keys from upstream can be anything.
    # (Empty keys are left out: whether librdkafka hashes or randomises them is not ours to test.)
    keys = [rng.randbytes(rng.randint(1, 64)) for _ in range(200)]
    keys += [f"<m{i}@mail.example>".encode() for i in range(40)]
    producer = make_producer(config, "test")  # the project's producer settings (murmur2_random)
    placed: dict[int, int] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        placed[int(msg.value() or b"-1")] = int(msg.partition() or 0)

    for i, key in enumerate(keys):
        producer.produce(topic, key=key, value=str(i).encode(), on_delivery=delivered)
    assert producer.flush(15) == 0
    assert placed == {i: partition_for(key, partitions) for i, key in enumerate(keys)}
    assert len(set(placed.values())) == partitions  # the keys did spread: the check means something

    # And the broker agrees: read back what each partition holds.
    consumer = make_consumer(config, "test-reader", "partitioner-reader", **{"enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        stored: dict[bytes, int] = {}
        pending = set(range(partitions))
        while pending:
            message = consumer.poll(10)
            assert message is not None, f"no EOF on partitions {pending}"
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                pending.discard(int(message.partition() or 0))
                continue
            stored[message.key() or b""] = int(message.partition() or 0)
    finally:
        consumer.close()
    assert stored == {key: partition_for(key, partitions) for key in keys}


def test_partition_for_is_the_same_whether_remembered_or_not() -> None:
    # Short keys (correlation IDs) go through a bounded memo; longer ones are hashed every time.
    keys = [b"", b"a", b"0f3c2a9e-1b2c-5d3e-8f40-123456789abc", b"x" * 64, b"x" * 65, b"y" * 5000]
    for key in keys:
        for partitions in (1, 6, 7):
            expected = (murmur2(key) & 0x7FFFFFFF) % partitions
            assert partition_for(key, partitions) == expected
            assert partition_for(key, partitions) == expected  # again, from the memo for short keys
            assert partition_for(bytearray(key), partitions) == expected
