#!/usr/bin/env bash
# The real validators of the operator files in deploy/ (`make deploy-check` runs this, then
# the cross-file checks of `cargo test --release --test deploy`):
#
#   promtool check config   deploy/prometheus.yml, deploy/compose/prometheus.yml (with the
#                           rule files they load)
#   promtool check rules    deploy/alerts.yml
#   promtool test rules     deploy/alerts.test.yml (the alerts' unit tests)
#   kubernetes-validate     every deploy/k8s/*.yaml, strict (unknown fields fail), against
#                           each Kubernetes version of DEPLOY_CHECK_K8S (default 1.29.0, the
#                           oldest checked, and 1.37.0, the newest the package ships)
#   hadolint                deploy/Dockerfile, failing on any finding (it has none; an exception
#                           would go, with its reason, in a .hadolint.yaml at the root)
#   check-jsonschema        deploy/docker-compose.yml against the Compose Specification
#
# Missing validators are installed by this script: promtool from the Debian package
# `prometheus` (apt-get, as root, as CI runs), the others from PyPI, pinned in
# scripts/deploy-check-requirements.txt, into .venv-deploy/ (DEPLOY_CHECK_VENV). Once
# installed, every validator runs offline. One line per validator; exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${DEPLOY_CHECK_VENV:-.venv-deploy}
REQUIREMENTS=scripts/deploy-check-requirements.txt
K8S_VERSIONS=${DEPLOY_CHECK_K8S:-1.29.0 1.37.0}

die() { echo "deploy-check: $*" >&2; exit 1; }

# ---- installation
if ! command -v promtool >/dev/null 2>&1; then
  echo "deploy-check: installing promtool (Debian package prometheus)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
    >/dev/null || die "could not install the Debian package prometheus (promtool)"
fi
# The venv is (re)made when the pinned list changes; a copy of the list inside it says
# what it holds.
if ! cmp -s "$REQUIREMENTS" "$VENV/.requirements" 2>/dev/null; then
  echo "deploy-check: installing the validators from $REQUIREMENTS into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >/dev/null \
      || die "python3 -m venv failed and python3-venv could not be installed"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS" \
    || die "pip install -r $REQUIREMENTS failed"
  cp "$REQUIREMENTS" "$VENV/.requirements"
fi

# ---- the checks
failed=()
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# check NAME COMMAND...: runs it, prints one line, and its output when it fails.
check() {
  local name=$1
  shift
  local start=$SECONDS
  if "$@" >"$TMP/out" 2>&1; then
    printf 'deploy-check: ok      %-60s (%ds)\n' "$name" $((SECONDS - start))
  else
    printf 'deploy-check: FAILED  %-60s (%ds)\n' "$name" $((SECONDS - start))
    sed 's/^/    /' "$TMP/out"
    failed+=("$name")
  fi
}

echo "deploy-check: $(promtool --version 2>&1 | head -n1)"
echo "deploy-check: $("$VENV/bin/kubernetes-validate" --version 2>&1 | sed 's/^/kubernetes-validate /'), $("$VENV/bin/hadolint" --version 2>&1), $("$VENV/bin/check-jsonschema" --version 2>&1)"

check "promtool check config deploy/prometheus.yml" \
  promtool check config deploy/prometheus.yml
# The compose Prometheus reads its config and rules where docker-compose.yml mounts them,
# side by side in /etc/prometheus/ (tests/deploy/prometheus.rs checks those mounts): the
# same layout here.
mkdir -p "$TMP/compose"
cp deploy/compose/prometheus.yml "$TMP/compose/prometheus.yml"
cp deploy/alerts.yml "$TMP/compose/alerts.yml"
check "promtool check config deploy/compose/prometheus.yml" \
  promtool check config "$TMP/compose/prometheus.yml"
check "promtool check rules deploy/alerts.yml" \
  promtool check rules deploy/alerts.yml
check "promtool test rules deploy/alerts.test.yml" \
  promtool test rules deploy/alerts.test.yml
for v in $K8S_VERSIONS; do
  check "kubernetes-validate --strict -k $v deploy/k8s/*.yaml" \
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/k8s/*.yaml
done
check "hadolint deploy/Dockerfile" \
  "$VENV/bin/hadolint" --no-color deploy/Dockerfile
check "check-jsonschema (compose-spec) deploy/docker-compose.yml" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy-check: ${#failed[@]} validator(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "deploy-check: every validator passed"
