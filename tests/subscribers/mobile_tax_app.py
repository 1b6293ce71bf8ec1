"""mobile-tax-app on hms_subscriber: the seed's refund_service, with each envelope applied once and a receipt.

The tests set HMS_* variables: where Redis and the API are (HMS_RECEIPTS_OVER_API: receipts go there),
the consumer's name, the claim idle time,
HMS_HOLD, a deduction this instance takes and never finishes (to be killed holding it), and
HMS_SUBSCRIBER, the registered service it runs as (another of the demo's four: e-file, ...).
"""

import logging
import os
import sys
import time

from hms_subscriber import Subscriber

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")

sub = Subscriber(
    os.environ.get("HMS_SUBSCRIBER", "mobile-tax-app"),
    topics=["tax-policy"],
    redis_url=os.environ["HMS_REDIS_URL"],
    consumer=os.environ.get("HMS_CONSUMER"),
    api_url=os.environ.get("HMS_API_URL"),
    api_token=os.environ.get("HMS_API_TOKEN"),
    receipts_over_api=bool(os.environ.get("HMS_RECEIPTS_OVER_API")),
    claim_idle_seconds=float(os.environ.get("HMS_CLAIM_IDLE", "60")),
)


@sub.handler("tax_policy.updated")
def recalc(event):
    deduction = event["payload"]["standard_deduction"]
    if str(deduction) == os.environ.get("HMS_HOLD"):
        print(f"Holding {deduction}", flush=True)
        time.sleep(3600)  # the test kills this process with SIGKILL while it holds the entry
    print(f"New deduction = {deduction}", flush=True)
    return f"showing {deduction} in the app"


sub.run()
