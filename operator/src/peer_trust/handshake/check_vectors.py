# An independent check of the committed vectors (Python `cryptography`).
import json, base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
v = json.load(open(sys.argv[1]))
def priv(s): return Ed25519PrivateKey.from_private_bytes(base64.b64decode(s))
def pub(k): return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
keys = {n: priv(v[n + "Seed"]) for n in ["parisAdmin", "lyonAdmin", "parisPool", "lyonPool"]}
for n, k in keys.items():
    assert base64.b64encode(pub(k)).decode() == v[n + "Key"], n
def fp(k): return "sha256:" + hashlib.sha256(pub(k)).hexdigest()
parties = sorted([("lyon", "cellule/lyon", keys["lyonPool"], "pool.lyon.intra.example.com", "10.30.0.0/24", 8443),
                  ("paris", "cellule/paris", keys["parisPool"], "pool.paris.intra.example.com", "10.20.0.0/24", 8443)], key=lambda p: (p[0], p[1]))
text = "cellule.ai/peer-trust-handshake/v2\nlevel=3\n"
for tag, p in zip("ab", parties):
    text += f"{tag}.site={p[0]}\n{tag}.pool={p[1]}\n{tag}.pool-key={fp(p[2])}\n{tag}.host={p[3]}\n{tag}.cidr={p[4]}\n{tag}.port={p[5]}\n"
text += "not-before=2026-11-01T00:00:00Z\nnot-after=2027-10-31T00:00:00Z\nnonce=a6605d304af5cf8bac6e8ce132f8cd99\n"
assert text == v["canonical"], "canonical"
assert hashlib.sha256(text.encode()).hexdigest() == v["digest"]
sig = lambda k, m: base64.b64encode(k.sign(m.encode())).decode()
assert sig(keys["parisAdmin"], text) == v["parisAdminSignature"]
assert sig(keys["lyonAdmin"], text) == v["lyonAdminSignature"]
for site in ["paris", "lyon"]:
    m = "cellule.ai/peer-trust-countersignature/v1\nadmin-key=" + v[site + "AdminKey"] + "\n" + text
    assert sig(keys[site + "Pool"], m) == v[site + "Countersignature"], site
print("vectors verified independently")
