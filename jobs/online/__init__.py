"""The online side: Redis keys and connections, and the recall function the service calls.
redis-py only: no Spark, no TensorFlow."""
