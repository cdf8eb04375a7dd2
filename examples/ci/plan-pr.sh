#!/usr/bin/env bash
# Validate a fleet repository and write the plan of a change as markdown, for any CI system
# (GitLab, Jenkins, Buildkite, ...) or locally before pushing.
#
# Usage: plan-pr.sh BASE_REF [OUTPUT_FILE] [DIR]
#   BASE_REF     the git revision the change goes into, e.g. origin/main (must be fetched: a
#                shallow clone without the base branch cannot be compared)
#   OUTPUT_FILE  where the markdown goes (default: plan.md); post it as a review comment
#   DIR          the fleet directory inside the repository (default: .)
#
# Environment: FLEETPKI (default: fleetpki on PATH). No passphrase or state directory is
# needed: `plan --base` compares the head with the base, not with the inventory.
#
# Exit code: the plan's (0 ok, 1 problems, policy denials or failure), and 1 if validate
# failed even though the plan did not. The markdown is written in every case, so a failing
# change still gets its comment.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 3 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,17s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
base=$1
output=${2:-plan.md}
directory=${3:-.}
fleetpki=${FLEETPKI:-fleetpki}

if ! git -C "$directory" rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "plan-pr.sh: unknown git revision '$base' (fetch it; in CI, clone with full history)" >&2
fi

echo "==> $fleetpki validate $directory" >&2
validate_status=0
"$fleetpki" validate "$directory" >&2 || validate_status=$?

echo "==> $fleetpki plan $directory --base $base -o markdown > $output" >&2
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
plan_status=0
"$fleetpki" plan "$directory" --base "$base" -o markdown >"$output" 2>"$errors" \
    || plan_status=$?
cat "$errors" >&2

if [ ! -s "$output" ]; then  # failed before rendering a plan: say why in the comment instead
    {
        printf '### fleetpki plan\n\n❌ `fleetpki plan` failed (exit code %s):\n\n```\n' \
            "$plan_status"
        cat "$errors"
        printf '```\n'
    } >"$output"
fi

echo "==> wrote $output (plan exit code $plan_status, validate exit code $validate_status)" >&2
if [ "$plan_status" -eq 0 ] && [ "$validate_status" -ne 0 ]; then
    exit 1
fi
exit "$plan_status"
