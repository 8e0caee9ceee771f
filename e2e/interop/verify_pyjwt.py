"""Verifies a worker token with PyJWT (and `cryptography`), an independent
JOSE implementation, against the pool's published JWKS. Reads the token on
stdin; prints the claims as JSON, or `refused: <reason>` and exits 1.

    interop-python verify_pyjwt.py --jwks jwks.json --audience ns/pool < token
"""
import argparse
import json
import sys

import jwt

parser = argparse.ArgumentParser()
parser.add_argument("--jwks", required=True)
parser.add_argument("--audience", required=True)
args = parser.parse_args()

token = sys.stdin.read().strip()
with open(args.jwks) as f:
    jwks = jwt.PyJWKSet.from_dict(json.load(f))
try:
    kid = jwt.get_unverified_header(token).get("kid")
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=["EdDSA"],
        audience=args.audience,
        issuer=args.audience,
        leeway=30,
        options={"require": ["exp", "nbf", "iat", "aud", "iss", "sub", "jti"]},
    )
except StopIteration:
    print("refused: unknown kid", file=sys.stderr)
    sys.exit(1)
except jwt.PyJWTError as e:
    print(f"refused: {type(e).__name__}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(claims))
