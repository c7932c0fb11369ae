#!/usr/bin/env bash
# Run checkov on terraform/ from its own virtualenv.
#
# checkov pins bc-python-hcl2, which installs a module also named `hcl2` and clashes with the
# python-hcl2 that the tests/test_terraform_*.py suite uses, so it lives in .venv-checkov (gitignored by
# the .venv-* pattern), created on first use. Every failed check must be fixed or skipped in
# the Terraform code with `#checkov:skip=CKV_...:reason`; this script exits non-zero otherwise.
#
#   bash infra/checkov.sh            # compact report, non-zero exit on any failed check
#   bash infra/checkov.sh -o json    # extra arguments are passed to checkov
#   bash infra/checkov.sh --install-only   # just make sure the virtualenv exists (./dev test)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECKOV_VENV:-$ROOT/.venv-checkov}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/checkov" ]]; then
  echo "creating $VENV with checkov==$CHECKOV_VERSION" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
[[ "${1:-}" == "--install-only" ]] && exit 0

# --framework terraform: only the HCL (no secrets/dockerfile scanners on the rest of the repo).
# --download-external-modules false: there are none, and nothing is fetched at scan time.
exec "$VENV/bin/checkov" \
  --directory "$ROOT/terraform" \
  --framework terraform \
  --quiet --compact \
  --download-external-modules false \
  --skip-download \
  "$@"
