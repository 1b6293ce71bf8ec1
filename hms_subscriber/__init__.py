"""hms_subscriber: follow HMS bus topics through your own consumer group; each envelope applied once, with a receipt.

Depends on redis-py and the standard library only (no Django), so a service team can copy or install it.
"""

from hms_subscriber.subscriber import APPLIED, IGNORED, REJECTED, Envelope, Ignored, Subscriber, detail_fit

__all__ = ["APPLIED", "IGNORED", "REJECTED", "Envelope", "Ignored", "Subscriber", "detail_fit"]
