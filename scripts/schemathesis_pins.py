#!/usr/bin/env python3
"""Checks that schemathesis.toml pins every program id and member id of the
gateway's OpenAPI document: path and query parameters by name, body fields
by their path (`body.rule.programId`). A new route whose ids are not pinned
would only ever meet 403s with random ids, so its real behaviour would go
unfuzzed; this names what to add.

usage: schemathesis_pins.py OPENAPI_JSON SCHEMATHESIS_TOML
"""

import json
import sys
import tomllib

PROGRAM = ("program_id", "programId")
MEMBER = ("member_id", "memberId")


def body_paths(schema, schemas, prefix, seen, out):
    """Every dotted path to a program or member id field in a body schema."""
    ref = schema.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            return
        body_paths(schemas[name], schemas, prefix, seen | {name}, out)
        return
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        body_paths(schema["items"], schemas, prefix + "[*]", seen, out)
        return
    for field, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{field}" if prefix else field
        if field in PROGRAM + MEMBER and sub.get("type") == "string":
            out.add(path)
        else:
            body_paths(sub, schemas, path, seen, out)


def main():
    doc = json.load(open(sys.argv[1]))
    config = tomllib.load(open(sys.argv[2], "rb"))
    pinned = set(config.get("parameters", {}))
    schemas = doc["components"]["schemas"]
    wanted = {}
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            where = f"{verb.upper()} {path}"
            for p in op.get("parameters", []):
                name = p["name"]
                if name.endswith(("program_id", "member_id")) and p["schema"].get("type") == "string":
                    wanted.setdefault(f"{p['in']}.{name}", where)
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            found = set()
            body_paths(body.get("schema", {}), schemas, "", frozenset(), found)
            for f in found:
                wanted.setdefault(f"body.{f}", where)
    # a bare name pins a parameter in every location
    missing = sorted(k for k in wanted if k not in pinned and not (not k.startswith("body.") and k.split(".", 1)[1] in pinned))
    if missing:
        print("scripts/schemathesis.toml does not pin these ids (add them to [parameters]):", file=sys.stderr)
        for k in missing:
            print(f"  {k!r}  (first in {wanted[k]})", file=sys.stderr)
        sys.exit(1)
    print(f"{len(wanted)} program and member id locations pinned")


if __name__ == "__main__":
    main()
