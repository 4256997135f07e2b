"""clickstream: the library behind the real-time streaming analytics course.

Notebooks teach each idea step by step; this package is the production form of the same
pieces: a local Kafka broker, the event contract, a seeded traffic simulator, a Spark session
with the matching Kafka connector, the streaming job, the serving store and the dashboard.
"""

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError

__version__ = "0.1.0"
__all__ = ["ClickstreamError", "Settings", "get_settings", "__version__"]
