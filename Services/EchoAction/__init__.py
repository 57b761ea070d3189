"""The seed's EchoAction task service."""
