"""Release actions: sign what is new or changed, withdraw, revoke a signing profile. Pure."""

from __future__ import annotations

from controller.api.desired import Desired
from controller.plan.model import RELEASE_KIND, SIGNING_PROFILE_KIND, Action, Observed
from controller.signing.manifest import manifest_digest


def plan_releases(desired: Desired, observed: Observed) -> tuple[list[Action], set[str],
                                                                 list[str]]:
    """(actions, CAs whose CRL must list new revocations, warnings), in apply order: revoked
    profiles, withdrawn releases, then signatures. An unchanged release is never signed again;
    a changed one gets a new signature and its previous one is revoked (superseded)."""
    revoking: list[Action] = []
    withdrawing: list[Action] = []
    signing: list[Action] = []
    warnings: list[str] = []
    crl_cas: set[str] = set()
    revoked_profiles: set[str] = set()
    for name in sorted(desired.signing_profiles):
        profile = desired.signing_profile(name)
        if profile.spec.revoked is None:
            continue
        revoked_profiles.add(name)
        serials = observed.signers.get(name, ())
        if serials:
            revoking.append(Action("revoke-signer", SIGNING_PROFILE_KIND, name,
                                   f"signing profile revoked ({len(serials)} certificate(s))",
                                   revocation_reason=profile.spec.revoked.reason))
            crl_cas.add(profile.spec.issuerRef.name)
    for name in sorted(desired.releases):
        decl = desired.releases[name]
        spec = decl.release.spec
        profile_name = spec.signingProfileRef.name
        profile = desired.signing_profile(profile_name)
        seen = observed.releases.get(name)
        if spec.revoked is not None:
            if seen is not None and profile_name not in revoked_profiles:
                withdrawing.append(Action("withdraw-release", RELEASE_KIND, name,
                                          "release withdrawn", serial=seen[0],
                                          revocation_reason=spec.revoked.reason))
                crl_cas.add(profile.spec.issuerRef.name)
            continue
        if profile_name in revoked_profiles:
            warnings.append(f"Release/{name}: SigningProfile/{profile_name} is revoked: "
                            "the release is not signed")
            continue
        tsa = profile.spec.timestampAuthorityRef
        if tsa is not None and desired.signing_profile(tsa.name).spec.revoked is not None:
            warnings.append(f"Release/{name}: the timestamp authority SigningProfile/"
                            f"{tsa.name} is revoked: the release is not signed")
            continue
        digest = manifest_digest(decl)
        if seen is None:
            signing.append(Action("sign-release", RELEASE_KIND, name, "not yet signed"))
        elif seen[1] != digest:
            signing.append(Action("sign-release", RELEASE_KIND, name,
                                  "release changed (new signature; the previous one is "
                                  "revoked as superseded)", serial=seen[0]))
            crl_cas.add(profile.spec.issuerRef.name)
    return revoking + withdrawing + signing, crl_cas, warnings
