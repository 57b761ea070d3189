"""Resource monitoring of tasks: what is measured (sampler), how it adds up (aggregate),
and what a context may ask for (options).

The daemon samples (:mod:`zsvc.daemon.monitor`); ``zsvc monitor`` shows
(:mod:`zsvc.cli.monitor`); the seed's Monitor task relays
(``zsvc/builtin/Monitor``). Every sample has one shape, documented in
``docs/monitor.md``.
"""
