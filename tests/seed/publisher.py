import json, redis, uuid, time

bus = redis.Redis(host="localhost", port=6379)

event = {
    "id": str(uuid.uuid4()),
    "type": "tax_policy.updated",
    "timestamp": time.time(),
    "payload": {"standard_deduction": 15000}
}

bus.publish("tax-policy", json.dumps(event))
print("📣  Event sent!")
