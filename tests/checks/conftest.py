"""The catalog's examples run on the known-good baselines of checks.examples: the disk baseline
is registered by checks.disk, the guest baseline by the test suite's fake guest (imported here)."""

from tests.checks import fakeguest  # noqa: F401  (registers the "guest" baseline)
