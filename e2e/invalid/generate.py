#!/usr/bin/env python3
"""Writes the invalid-manifest corpus: each case is a valid base object with
exactly one mistake. `# expect:` lines are substrings the API server's
rejection must contain; the first names the offending field. The bases are
written too (valid-*.yaml) and must be accepted, so every rejection is known
to come from its one mistake. Run from this directory after changing a case:
    python3 generate.py
"""
import copy, glob, os, yaml

KEY = "/viJ8IPliW/RifhF/Xvg3NQy+tbGR7l2+IRjVDjLCNU="
SIG = "cyUQHs/U4cN9pv5tIWodQvcVf4nezqJKjB2dFnPSXl2IyWoyq50EtcX9mfJZndPrS6bv6SyAFmwu7ytRzE7mCQ=="
SIG2 = "TIwzIuGtaCJOTxCU4NW116kIk6yRthy+vO78rWjDasO8Wd+/Kxf9zYCPGLMos+Ps1tC/ZXGaf6YrZ7UAoTq8CA=="
COSIGN = {"keys": [{"configMapKeyRef": {"name": "signing", "key": "cosign.pub"}}]}

def obj(kind, spec):
    return {"apiVersion": "cellule.ai/v1alpha1", "kind": kind, "metadata": {"name": "valid"}, "spec": spec}

BASES = {
    "pool": obj("Pool", {
        "image": {"reference": "registry.example.com/cellule/pool:1.0", "verification": COSIGN},
        "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}, "endpoint": {"cidr": "10.20.0.0/24", "port": 5432}},
        "tls": {"name": "tls"},
        "tiers": [
            {"name": "light", "model": "m-7b", "backend": "Cpu"},
            {"name": "heavy", "model": "m-30b", "backend": "Npu", "npuServerRef": {"name": "npu"}, "fallbackTier": "light"},
        ],
        "cpuWorkers": [{"name": "w", "tier": "light", "image": {"reference": "registry.example.com/cellule/worker:1.0", "verification": COSIGN}}],
        "federation": {"site": "paris", "adminPublicKeys": [KEY]},
        "workers": {"allowedCidrs": ["10.50.0.0/16"]},
    }),
    "workergrant": obj("WorkerGrant", {
        "poolRef": {"name": "paris"}, "workerId": "pc-1", "owner": "a@example.com", "tiers": ["light"],
        "ttl": "720h", "requestedBy": "alice", "approvedBy": "bob",
    }),
    "npuserver": obj("NpuServer", {
        "poolRef": {"name": "paris"}, "model": "m-30b",
        "image": {"reference": "registry.example.com/cellule/npu@sha256:" + "a" * 64, "verification": COSIGN},
        "replicas": 2, "hotSpares": 1,
    }),
    "peertrust": obj("PeerTrust", {
        "poolRef": {"name": "paris"}, "site": "lyon", "endpoint": {"host": "10.30.0.10", "port": 8443},
        "publicKey": KEY, "trustLevel": 3, "peerPool": {"namespace": "cellule", "name": "lyon"},
        "handshake": {"nonce": "0123456789abcdef", "notBefore": "2026-11-01T00:00:00Z", "notAfter": "2027-10-31T00:00:00Z",
                      "localSignature": SIG, "peerSignature": SIG2,
                      "peerCountersignature": {"poolPublicKey": KEY, "adminPublicKey": KEY, "signature": SIG2}},
    }),
}

def case(name, base, mutate, *expect):
    return name, base, mutate, expect

def setp(path, value):
    def f(o):
        cur = o
        for k in path[:-1]:
            cur = cur[k]
        if value is DELETE:
            del cur[path[-1]]
        else:
            cur[path[-1]] = value
    return f

DELETE = object()
S = lambda *p: ("spec",) + p

CASES = [
    case("pool-image-reference-malformed", "pool", setp(S("image", "reference"), "Registry.Example.com/Pool Image"), "spec.image.reference", "image reference must look like"),
    case("pool-image-digest-too-short", "pool", setp(S("image", "reference"), "registry.example.com/pool@sha256:abc"), "spec.image.reference", "image reference must look like"),
    case("pool-image-no-verification-key", "pool", setp(S("image", "verification", "keys"), []), "spec.image.verification.keys", "at least 1"),
    case("pool-image-registry-implied", "pool", setp(S("image", "reference"), "library/nginx:1"), "spec.image.reference", "must name its registry host"),
    case("pool-image-refresh-too-short", "pool", setp(S("image", "refreshInterval"), "1s"), "spec.image.refreshInterval", "refreshInterval must be a duration between 10s and 24h"),
    case("npuserver-image-refresh-not-a-duration", "npuserver", setp(S("image", "refreshInterval"), "often"), "spec.image.refreshInterval", "refreshInterval must be a duration between 10s and 24h"),
    case("pool-cosign-key-two-sources", "pool", setp(S("image", "verification", "keys"), [{"configMapKeyRef": {"name": "a", "key": "k"}, "secretKeyRef": {"name": "b", "key": "k"}}]), "spec.image.verification.keys[0]", "exactly one of secretKeyRef and configMapKeyRef"),
    case("pool-replicas-zero", "pool", setp(S("replicas"), 0), "spec.replicas", "greater than or equal to 1"),
    case("pool-database-selector-and-cidr", "pool", setp(S("database", "endpoint", "podSelector"), {"matchLabels": {"app": "pg"}}), "spec.database.endpoint", "exactly one of podSelector and cidr"),
    case("pool-database-cidr-default-route", "pool", setp(S("database", "endpoint", "cidr"), "0.0.0.0/0"), "spec.database.endpoint.cidr", "not 0.0.0.0/0"),
    case("pool-database-cidr-malformed", "pool", setp(S("database", "endpoint", "cidr"), "10.20.0.0/33"), "spec.database.endpoint.cidr", "must be a CIDR"),
    case("pool-database-port-out-of-range", "pool", setp(S("database", "endpoint", "port"), 70000), "spec.database.endpoint.port", "less than or equal to 65535"),
    case("pool-no-tiers", "pool", lambda o: (o["spec"].__setitem__("tiers", []), o["spec"].pop("cpuWorkers")), "spec.tiers", "at least 1"),
    case("pool-tier-name-invalid", "pool", setp(S("tiers", 0, "name"), "Light_Tier"), "spec.tiers[0].name", "should match"),
    case("pool-tier-name-duplicate", "pool", setp(S("tiers", 1, "name"), "light"), "spec.tiers[1]", "Duplicate value"),
    case("pool-tier-backend-unknown", "pool", setp(S("tiers", 0, "backend"), "Gpu"), "spec.tiers[0].backend", "Unsupported value"),
    case("pool-npu-tier-without-server", "pool", setp(S("tiers", 1, "npuServerRef"), DELETE), "spec.tiers[1].npuServerRef", "npuServerRef is required when backend is Npu"),
    case("pool-fallback-to-itself", "pool", setp(S("tiers", 1, "fallbackTier"), "heavy"), "spec.tiers", "not itself"),
    case("pool-fallback-missing", "pool", setp(S("tiers", 1, "fallbackTier"), "medium"), "spec.tiers", "must name a tier of this pool served by CPU workers"),
    case("pool-cpu-workers-on-npu-tier", "pool", setp(S("cpuWorkers", 0, "tier"), "heavy"), "spec.cpuWorkers", "must name a tier of this pool with backend: Cpu"),
    case("pool-spot-check-over-100", "pool", setp(S("verification"), {"spotCheckPercent": 101}), "spec.verification.spotCheckPercent", "less than or equal to 100"),
    case("pool-cheat-threshold-zero", "pool", setp(S("verification"), {"cheatThresholdPercent": 0}), "spec.verification.cheatThresholdPercent", "greater than or equal to 1"),
    case("pool-required-mode-one-worker", "pool", setp(S("verification"), {"mode": "Required", "workersPerRequest": 1}), "spec.verification.workersPerRequest", "mode Required needs workersPerRequest of 2 or more"),
    case("pool-privacy-mode-lowercase", "pool", setp(S("privacy"), {"mode": "paranoid"}), "spec.privacy.mode", "Unsupported value"),
    case("pool-rate-limit-zero", "pool", setp(S("rateLimit"), {"requestsPerMinutePerSigner": 0}), "spec.rateLimit.requestsPerMinutePerSigner", "greater than or equal to 1"),
    case("pool-anti-replay-not-a-duration", "pool", setp(S("federation", "antiReplayWindow"), "one minute"), "spec.federation.antiReplayWindow", "antiReplayWindow must be a duration"),
    case("pool-anti-replay-too-long", "pool", setp(S("federation", "antiReplayWindow"), "1h"), "spec.federation.antiReplayWindow", "between 1s and 10m"),
    case("pool-heartbeat-too-short", "pool", setp(S("workers", "heartbeatInterval"), "1m"), "spec.workers.heartbeatInterval", "between 5m and 30m"),
    case("pool-heartbeat-too-long", "pool", setp(S("workers", "heartbeatInterval"), "45m"), "spec.workers.heartbeatInterval", "between 5m and 30m"),
    case("pool-worker-cidr-everything", "pool", setp(S("workers", "allowedCidrs"), ["0.0.0.0/0"]), "spec.workers.allowedCidrs", "not 0.0.0.0/0"),
    case("pool-worker-cidr-malformed", "pool", setp(S("workers", "allowedCidrs"), ["10.50.0.0"]), "spec.workers.allowedCidrs", "must be a CIDR"),
    case("pool-default-ttl-over-max", "pool", setp(S("tokens"), {"defaultTtl": "2000h", "maxTtl": "1000h"}), "spec.tokens.defaultTtl", "defaultTtl must not exceed maxTtl"),
    case("pool-compromised-key-not-a-kid", "pool", setp(S("tokens"), {"compromisedKeys": ["not a key id"]}), "spec.tokens.compromisedKeys[0]", "should match"),
    case("pool-pre-publication-too-long", "pool", setp(S("tokens"), {"signingKeyPrePublication": "48h"}), "spec.tokens.signingKeyPrePublication", "between 0s and 24h"),
    case("pool-renew-before-too-long", "pool", setp(S("tokens"), {"defaultTtl": "24h", "renewBefore": "48h"}), "spec.tokens.renewBefore", "renewBefore must be shorter than defaultTtl"),
    case("pool-admin-key-wrong-length", "pool", setp(S("federation", "adminPublicKeys"), ["c2hvcnQga2V5"]), "spec.federation.adminPublicKeys", "44"),
    case("pool-admin-key-not-32-bytes", "pool", setp(S("federation", "adminPublicKeys"), ["/viJ8IPliW/RifhF/Xvg3NQy+tbGR7l2+IRjVDjLCNX="]), "spec.federation.adminPublicKeys", "base64 of exactly 32 bytes"),
    case("pool-extra-egress-everywhere", "pool", setp(S("extraEgress"), [{"name": "internet", "cidr": "0.0.0.0/0", "port": 443}]), "spec.extraEgress[0].cidr", "not 0.0.0.0/0"),
    case("pool-failover-not-a-duration", "pool", setp(S("failover"), {"failOverAfter": "soon"}), "spec.failover.failOverAfter", "failOverAfter must be a duration"),
    case("pool-name-double-hyphen", "pool", setp(("metadata", "name"), "paris--light"), "metadata.name", "no '--'"),
    case("pool-name-too-long", "pool", setp(("metadata", "name"), "p" * 41), "metadata.name", "at most 40 characters"),
    case("pool-name-with-dot", "pool", setp(("metadata", "name"), "pool.paris"), "metadata.name", "no '.'"),
    case("pool-tier-named-like-a-worker-set", "pool", setp(S("cpuWorkers", 0, "name"), "light"), "spec.tiers[].name", "no cpuWorkers[].name may equal a tier name"),
    case("pool-tier-service-name-too-long", "pool", lambda o: (o["metadata"].__setitem__("name", "p" * 40), o["spec"]["tiers"][1].__setitem__("name", "h" * 22)), "spec.tiers[].name", "at most 61 characters"),
    case("pool-worker-set-name-too-long", "pool", setp(S("cpuWorkers", 0, "name"), "w" * 22), "spec.cpuWorkers[0].name", "Too long"),
    case("pool-worker-cidr-host-bits", "pool", setp(S("workers", "allowedCidrs"), ["10.50.0.1/16"]), "spec.workers.allowedCidrs", "no host bits"),
    case("pool-database-cidr-host-bits", "pool", setp(S("database", "endpoint", "cidr"), "10.20.0.5/24"), "spec.database.endpoint.cidr", "no host bits"),
    case("pool-fallback-on-cpu-tier", "pool", lambda o: (o["spec"]["tiers"].append({"name": "tiny", "model": "m-1b", "backend": "Cpu"}), o["spec"]["tiers"][0].__setitem__("fallbackTier", "tiny")), "spec.tiers[0].fallbackTier", "only for a tier with backend Npu"),
    case("pool-dns-no-destination", "pool", setp(S("dns"), {"podLabels": {}, "namespaceLabels": {}}), "spec.dns.podLabels", "give podLabels, namespaceLabels or cidrs"),
    case("pool-dns-port-zero", "pool", setp(S("dns"), {"ports": [0]}), "spec.dns.ports[0]", "greater than or equal to 1"),
    case("pool-dns-cidr-everything", "pool", setp(S("dns"), {"cidrs": ["0.0.0.0/0"]}), "spec.dns.cidrs", "not 0.0.0.0/0"),
    case("npuserver-name-too-long", "npuserver", setp(("metadata", "name"), "n" * 60), "metadata.name", "at most 59 characters"),
    case("npuserver-quantity-invalid", "npuserver", setp(S("resources"), {"requests": {"cpu": "two"}}), "spec.resources", "must be quantities"),
    case("workergrant-name-too-long", "workergrant", setp(("metadata", "name"), "g" * 248), "metadata.name", "at most 247 characters"),
    case("workergrant-ttl-and-expiry", "workergrant", setp(S("expiresAt"), "2027-01-01T00:00:00Z"), "spec", "exactly one of ttl"),
    case("workergrant-no-ttl-no-expiry", "workergrant", setp(S("ttl"), DELETE), "spec", "exactly one of ttl"),
    case("workergrant-ttl-too-short", "workergrant", setp(S("ttl"), "10m"), "spec.ttl", "between 1h and 8760h"),
    case("workergrant-ttl-too-long", "workergrant", setp(S("ttl"), "9000h"), "spec.ttl", "between 1h and 8760h"),
    case("workergrant-expiry-not-a-time", "workergrant", lambda o: (o["spec"].pop("ttl"), o["spec"].__setitem__("expiresAt", "next friday")), "spec.expiresAt", "date-time"),
    case("workergrant-self-approval", "workergrant", setp(S("approvedBy"), "alice"), "spec.approvedBy", "four-eyes"),
    case("workergrant-no-tiers", "workergrant", setp(S("tiers"), []), "spec.tiers", "at least 1"),
    case("workergrant-worker-id-invalid", "workergrant", setp(S("workerId"), "PC 42!"), "spec.workerId", "should match"),
    case("workergrant-rotation-negative", "workergrant", setp(S("rotation"), -1), "spec.rotation", "greater than or equal to 0"),
    case("workergrant-no-requester", "workergrant", setp(S("requestedBy"), DELETE), "spec.requestedBy", "Required value"),
    case("npuserver-too-many-hot-spares", "npuserver", setp(S("hotSpares"), 9), "spec.hotSpares", "less than or equal to 8"),
    case("npuserver-min-healthy-above-total", "npuserver", setp(S("minHealthyReplicas"), 4), "spec.minHealthyReplicas", "cannot exceed replicas + hotSpares"),
    case("npuserver-accelerator-without-domain", "npuserver", setp(S("accelerator"), {"resourceName": "npu"}), "spec.accelerator.resourceName", "should match"),
    case("npuserver-accelerator-count-zero", "npuserver", setp(S("accelerator"), {"count": 0}), "spec.accelerator.count", "greater than or equal to 1"),
    case("npuserver-image-tag-invalid", "npuserver", setp(S("image", "reference"), "registry.example.com/npu:-bad"), "spec.image.reference", "image reference must look like"),
    case("peertrust-level-4", "peertrust", setp(S("trustLevel"), 4), "spec.trustLevel", "less than or equal to 3"),
    case("peertrust-level-3-without-handshake", "peertrust", setp(S("handshake"), DELETE), "spec.handshake", "trustLevel 3 requires a handshake"),
    case("peertrust-key-31-bytes", "peertrust", setp(S("publicKey"), "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="), "spec.publicKey", "base64 of exactly 32 bytes"),
    case("peertrust-key-not-base64", "peertrust", setp(S("publicKey"), "this-is-not-base64-but-is-44-characters-lon"), "spec.publicKey", "base64 of exactly 32 bytes"),
    case("peertrust-dns-host-without-cidr", "peertrust", setp(S("endpoint", "host"), "pool.lyon.example.com"), "spec.endpoint.cidr", "host is a DNS name"),
    case("peertrust-endpoint-empty", "peertrust", setp(S("endpoint"), {"port": 8443}), "spec.endpoint", "give host, cidr, or both"),
    case("peertrust-handshake-window-reversed", "peertrust", setp(S("handshake", "notAfter"), "2026-10-01T00:00:00Z"), "spec.handshake.notAfter", "notAfter must be later than notBefore"),
    case("peertrust-handshake-window-too-long", "peertrust", setp(S("handshake", "notAfter"), "2028-06-01T00:00:00Z"), "spec.handshake.notAfter", "at most 396 days"),
    case("peertrust-handshake-signature-short", "peertrust", setp(S("handshake", "localSignature"), SIG[:86] + "A="), "spec.handshake.localSignature", "base64 of exactly 64 bytes"),
    case("peertrust-handshake-same-signature", "peertrust", setp(S("handshake", "peerSignature"), SIG), "spec.handshake.peerSignature", "two different administrators"),
    case("peertrust-handshake-without-peer-pool", "peertrust", setp(S("peerPool"), DELETE), "spec.peerPool", "names the peer pool"),
    case("peertrust-countersignature-short", "peertrust", setp(S("handshake", "peerCountersignature", "signature"), SIG[:86] + "A="), "spec.handshake.peerCountersignature.signature", "base64 of exactly 64 bytes"),
    case("peertrust-handshake-nonce-short", "peertrust", setp(S("handshake", "nonce"), "abc"), "spec.handshake.nonce", "at least 16"),
]

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for old in glob.glob(os.path.join(here, "*.yaml")):
        os.remove(old)
    for kind, base in BASES.items():
        with open(os.path.join(here, f"valid-{kind}.yaml"), "w") as f:
            f.write(f"# The valid {base['kind']} every {kind}-* case changes in one place.\n")
            yaml.safe_dump(base, f, sort_keys=False)
    for name, base, mutate, expect in CASES:
        o = copy.deepcopy(BASES[base])
        o["metadata"]["name"] = name
        mutate(o)
        with open(os.path.join(here, f"{name}.yaml"), "w") as f:
            for e in expect:
                f.write(f"# expect: {e}\n")
            yaml.safe_dump(o, f, sort_keys=False)
    print(f"{len(CASES)} invalid cases, {len(BASES)} valid bases")

main()
