import os

from hypothesis import HealthCheck, settings

# Fresh random inputs on every run (no derandomize); failures print the reproducing seed and example.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("FIPO_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("default")
