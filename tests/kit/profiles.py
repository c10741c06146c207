"""The Hypothesis profiles of every test suite (``tests/`` and ``bench/tests/``).

Fuzz tests must not depend on wall-clock speed: no deadlines. CI runs a
bounded number of examples so the whole suite stays well under 20 minutes;
``HYPOTHESIS_PROFILE=thorough`` runs many more.
"""

import os

from hypothesis import HealthCheck, settings


def load_profile() -> None:
    """Register the profiles and load the one ``$HYPOTHESIS_PROFILE`` names (``default`` when unset)."""
    settings.register_profile(
        "default",
        deadline=None,
        max_examples=300,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("thorough", deadline=None, max_examples=5000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
