"""clickstream: the library behind the real-time streaming analytics course.

Notebooks teach each idea step by step; this package is the production form of the same pieces,
laid out by the stage of the pipeline they serve:

- `clickstream.events`: the event contract (schema, validation, reason codes);
- `clickstream.source`: the traffic simulator and the producer;
- `clickstream.ingest`: Kafka clients, topics and security settings;
- `clickstream.process`: the Spark session and the streaming job built from the operators the
  notebooks write;
- `clickstream.serve`: the serving stores (SQLite, Redis, PostgreSQL) and their rollups;
- `clickstream.dashboard`: the live Streamlit dashboard.

Around them: `clickstream.course` (notebook helpers and exercise checks), `clickstream.local`
(a broker, clusters, jars and Java on a laptop) and `clickstream.bench` (the benchmarks).
"""

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError

__version__ = "0.1.0"
__all__ = ["ClickstreamError", "Settings", "get_settings", "__version__"]
