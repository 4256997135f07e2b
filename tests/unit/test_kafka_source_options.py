"""The Kafka source's client options: the course's short timeouts, and the caller's over them."""

from clickstream.process.pipeline import KAFKA_SOURCE_DEFAULTS, source_options

API, REQUEST = "kafka.default.api.timeout.ms", "kafka.request.timeout.ms"


def test_the_defaults_and_a_callers_options_over_them():
    assert source_options() == KAFKA_SOURCE_DEFAULTS
    got = source_options({"failOnDataLoss": "true", API: "20000"})
    assert got["failOnDataLoss"] == "true" and got[API] == "20000"
    assert got[REQUEST] == KAFKA_SOURCE_DEFAULTS[REQUEST]


def test_a_longer_request_timeout_raises_the_api_timeout_kafka_requires_above_it():
    # Kafka refuses a client whose default.api.timeout.ms is below its request.timeout.ms.
    got = source_options({REQUEST: "30000"})
    assert got[REQUEST] == "30000" and got[API] == "30000"
    # Set by the caller, the API timeout is theirs (Kafka's error then says what is wrong).
    assert source_options({REQUEST: "30000", API: "5000"})[API] == "5000"
    # A shorter request timeout leaves the default API timeout.
    assert source_options({REQUEST: "5000"})[API] == KAFKA_SOURCE_DEFAULTS[API]
    assert source_options({REQUEST: "soon"})[API] == KAFKA_SOURCE_DEFAULTS[API]
