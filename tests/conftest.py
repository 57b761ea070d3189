"""Settings shared by every test tier.

Hypothesis' default 200 ms deadline and its too-slow health check are timing
assertions: on a loaded CI machine one slow example fails a correct test
("Unreliable test timings"). Speed is measured in ``bench/``, never asserted
in tests, so the profile every run loads switches both off. Examples stay
random (a new run may find a new bug); a failure prints its reproduction blob.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "zsvc",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("zsvc")
