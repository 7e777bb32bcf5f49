"""Drives the real pyC8 1.1.1 client against a running gdnlite, the way the Macrometa target
and source connectors use it. pyC8 always builds https://api-<host>:443; this script replaces
only that URL builder (C8Client.set_port / set_url) so it reaches http://127.0.0.1:<port>.

Usage: python pyc8-smoke.py <port> <api-key> <email> <password>
"""

import sys

from c8 import C8Client

port, apikey, email, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def keep_port(self):
    pass


def local_url(self):
    self._url = "http://{}:{}".format(self._host, self._port)


C8Client.set_port = keep_port
C8Client.set_url = local_url


def check(what, condition):
    if not condition:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


client = C8Client(protocol="http", host="127.0.0.1", port=port, geofabric="_system", apikey=apikey)
name = "pyc8_smoke"

# The target's startup: has_collection (list), create_collection, get_collection.
if client.has_collection(name):
    client.delete_collection(name)
check("has_collection is false for a new name", not client.has_collection(name))
client.create_collection(name, sync=False)
check("has_collection after create", client.has_collection(name))
coll = client.get_collection(name)

# The target's upsert: insert_many, then update_many for the items that failed, delete_many.
docs = [{"_key": str(i), "v": i, "price": 1.5, "ts": "2024-01-01T00:00:00+00:00"} for i in range(100)]
result = coll.insert_many(docs, return_new=False, silent=False)
check("insert_many: 100 aligned results with _id", len(result) == 100 and all("_id" in r for r in result))
again = coll.insert_many(docs[:10] + [{"_key": "new"}], return_new=False, silent=False)
failed = [d for d, r in zip(docs[:10], again) if not isinstance(r, dict)]
check("duplicates come back as per-document errors", len(failed) == 10 and isinstance(again[10], dict))
check("the error is 1210", all(getattr(r, "error_code", None) == 1210 for r in again[:10]))
for d in failed:
    d["v"] = -d["v"]
updated = coll.update_many(failed, keep_none=True, merge=True, return_new=False, return_old=False, check_rev=False, silent=False)
check("update_many: results with _id and _old_rev", all(isinstance(r, dict) and "_old_rev" in r for r in updated))
missing = coll.update_many([{"_key": "nope", "v": 1}], check_rev=False)
check("update_many of a missing key is a 1202 item", getattr(missing[0], "error_code", None) == 1202)
deleted = coll.delete_many(["0", "1", "missing"], return_old=False, check_rev=False, silent=False)
check("delete_many: two deleted, one 1202", isinstance(deleted[0], dict) and getattr(deleted[2], "error_code", None) == 1202)
check("count is 99", coll.count() == 99)
check("get returns the patched document", coll.get("5")["v"] == -5)

# The source: discovery sample, then a streamed full scan over several pages.
sample = client.execute_query("FOR d IN @@collection LIMIT 0, @count RETURN d", bind_vars={"@collection": name, "count": 50})
check("discovery sample of 50", len(list(sample.batch())) == 50)
cursor = client._fabric.c8ql.execute("FOR d IN @@collection RETURN d", bind_vars={"@collection": name}, batch_size=7, ttl=30, stream=True)
keys = [d["_key"] for d in cursor]
check("cursor scan over pages returns every document in key order", len(keys) == 99 and keys == sorted(keys))

# Login with email and password, then use the JWT.
jwt_client = C8Client(protocol="http", host="127.0.0.1", port=port, geofabric="_system", email=email, password=password)
check("email/password client sees the collection", jwt_client.has_collection(name))

client.delete_collection(name)
check("collection dropped", not client.has_collection(name))
print("pyC8 smoke: all checks passed")
