"""The root and issuing CA most job-level tests start from, as YAML."""

from __future__ import annotations


def two_cas(name: str, *issuing: str) -> str:
    """A root (path length 1) and an intermediate `issuing` CA named "`name` Root" and
    "`name` Issuing"; `issuing` lines are added to the intermediate's spec (e.g.
    "duration: 2000h"). Ends with a document separator."""
    extra = "".join(f"  {line}\n" for line in issuing)
    return f"""\
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {{name: root}}
spec: {{type: root, subject: {{commonName: {name} Root}}, pathLength: 1}}
---
apiVersion: fleetpki.io/v1alpha1
kind: CertificateAuthority
metadata: {{name: issuing}}
spec:
  type: intermediate
  parentRef: {{name: root}}
  subject: {{commonName: {name} Issuing}}
  pathLength: 0
{extra}---
"""
