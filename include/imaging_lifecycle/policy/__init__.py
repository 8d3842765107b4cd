"""The hospital's data policy: sensitivity tiers, how each tier is handled, how objects are classified.

Load it with :func:`load_policy`; ``load_policy()`` is the packaged default,
modelled on the five health-data levels of GB/T 39725-2020.
"""

from imaging_lifecycle.policy.durations import format_duration, parse_duration
from imaging_lifecycle.policy.loader import PolicyError, load_policy, parse_policy
from imaging_lifecycle.policy.schema import (
    CACHE_HARD_MAX,
    OBJECT_ACTIONS,
    REQUEST_ACTIONS,
    Access,
    BurnedIn,
    BurnedInRule,
    Classification,
    DeidOptions,
    Handling,
    Mask,
    Match,
    Policy,
    Region,
    RetentionDefaults,
    Rule,
    SafePrivateTag,
    Tier,
)

__all__ = [
    "CACHE_HARD_MAX",
    "OBJECT_ACTIONS",
    "REQUEST_ACTIONS",
    "Access",
    "BurnedIn",
    "BurnedInRule",
    "Classification",
    "DeidOptions",
    "Handling",
    "Mask",
    "Match",
    "Policy",
    "PolicyError",
    "Region",
    "RetentionDefaults",
    "Rule",
    "SafePrivateTag",
    "Tier",
    "format_duration",
    "load_policy",
    "parse_duration",
    "parse_policy",
]
