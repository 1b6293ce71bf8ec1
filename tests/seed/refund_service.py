import redis, json

def recalc(payload):
    print(f"New deduction = {payload['standard_deduction']}")
    # … update in-memory value, warm caches, etc.

bus = redis.Redis(host="localhost", port=6379).pubsub()
bus.subscribe("tax-policy")

for msg in bus.listen():
    if msg["type"] != "message": continue
    evt = json.loads(msg["data"])
    if evt["type"] == "tax_policy.updated":
        recalc(evt["payload"])
